//! Text checks for the e2e haiku check: the minute word exactly once, and the three-line shape.

/// Whether `text` contains `word` exactly once, both as a substring and as a whole word
/// (case-insensitive; U+2010/U+2011 hyphens count as `-`). Letters, `-` and apostrophes
/// (`'` and U+2019) are word characters, so `twenty-one` does not contain the whole word `one`.
/// Returns the pass flag and a detail like `substring=1 whole_word=1`.
pub fn check_word(text: &str, word: &str) -> (bool, String) {
    let hay = normalize(text);
    let needle = normalize(word);
    if needle.is_empty() {
        return (false, "empty word".to_string());
    }
    let starts = match_starts(&hay, &needle);
    let whole = starts
        .iter()
        .filter(|&&at| is_whole_word(&hay, at, needle.len()))
        .count();
    let pass = starts.len() == 1 && whole == 1;
    (
        pass,
        format!("substring={} whole_word={whole}", starts.len()),
    )
}

/// Whether the trimmed `text` has exactly three lines, each non-empty after trimming.
/// Returns the pass flag and a detail like `lines=3 empty=0`.
pub fn check_shape(text: &str) -> (bool, String) {
    let lines: Vec<&str> = text.trim().split('\n').collect();
    let empty = lines.iter().filter(|l| l.trim().is_empty()).count();
    let pass = lines.len() == 3 && empty == 0;
    (pass, format!("lines={} empty={empty}", lines.len()))
}

fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '\u{2010}' | '\u{2011}') {
                '-'
            } else {
                c
            }
        })
        .collect::<String>()
        .to_lowercase()
}

/// Byte offsets of every (possibly overlapping) occurrence of `needle` in `hay`.
fn match_starts(hay: &str, needle: &str) -> Vec<usize> {
    hay.char_indices()
        .map(|(at, _)| at)
        .filter(|&at| hay[at..].starts_with(needle))
        .collect()
}

fn is_whole_word(hay: &str, at: usize, len: usize) -> bool {
    let before = hay[..at].chars().next_back();
    let after = hay[at + len..].chars().next();
    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
}

fn is_word_char(c: char) -> bool {
    c.is_alphabetic() || matches!(c, '-' | '\'' | '\u{2019}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str, w: &str) -> (bool, String) {
        check_word(text, w)
    }

    #[test]
    fn word_exactly_once_passes() {
        let text = "Morning light softly\nNineteen, the clock hums on\nbirds greet the new day";
        assert_eq!(
            word(text, "nineteen"),
            (true, "substring=1 whole_word=1".to_string())
        );
        assert!(word("at forty-two. yes", "forty-two").0);
        assert!(word("(one)", "one").0);
        assert!(word("one", "one").0);
    }

    #[test]
    fn word_twice_or_missing_fails() {
        assert_eq!(
            word("one and one", "one"),
            (false, "substring=2 whole_word=2".to_string())
        );
        assert_eq!(
            word("no such thing", "one"),
            (false, "substring=0 whole_word=0".to_string())
        );
    }

    #[test]
    fn word_inside_another_word_fails() {
        assert_eq!(
            word("someone waits", "one"),
            (false, "substring=1 whole_word=0".to_string())
        );
        assert_eq!(
            word("nineteenth hour", "nineteen"),
            (false, "substring=1 whole_word=0".to_string())
        );
        assert_eq!(
            word("one someone", "one"),
            (false, "substring=2 whole_word=1".to_string())
        );
    }

    #[test]
    fn hyphen_and_apostrophe_are_not_boundaries() {
        assert_eq!(
            word("at twenty-one", "one"),
            (false, "substring=1 whole_word=0".to_string())
        );
        assert_eq!(
            word("at twenty-one", "twenty"),
            (false, "substring=1 whole_word=0".to_string())
        );
        assert_eq!(
            word("one's turn", "one"),
            (false, "substring=1 whole_word=0".to_string())
        );
        assert_eq!(
            word("one\u{2019}s turn", "one"),
            (false, "substring=1 whole_word=0".to_string())
        );
        assert!(word("at twenty-one", "twenty-one").0);
    }

    #[test]
    fn unicode_hyphens_are_normalized() {
        assert!(word("at forty\u{2010}two", "forty-two").0);
        assert!(word("at Forty\u{2011}Two!", "forty-two").0);
        assert!(word("at forty-two", "forty\u{2011}two").0);
        assert!(!word("at forty\u{2014}two", "forty-two").0);
    }

    #[test]
    fn digits_and_newlines_are_boundaries() {
        assert!(word("line\nzero\nend", "zero").0);
        assert!(word("zero1", "zero").0);
        assert!(word("ZERO", "zero").0);
    }

    #[test]
    fn empty_word_fails() {
        assert_eq!(word("anything", ""), (false, "empty word".to_string()));
    }

    #[test]
    fn overlapping_occurrences_are_counted() {
        assert_eq!(word("aaa", "aa").1, "substring=2 whole_word=0");
    }

    #[test]
    fn shape_three_lines_passes() {
        assert_eq!(
            check_shape("a b\nc d\ne f"),
            (true, "lines=3 empty=0".to_string())
        );
        assert!(check_shape("\n  a\nb\nc  \n\n").0);
        assert!(check_shape("a\r\nb\r\nc\r\n").0);
    }

    #[test]
    fn shape_wrong_line_count_fails() {
        assert_eq!(check_shape(""), (false, "lines=1 empty=1".to_string()));
        assert_eq!(check_shape("a\nb"), (false, "lines=2 empty=0".to_string()));
        assert_eq!(
            check_shape("a\nb\nc\nd"),
            (false, "lines=4 empty=0".to_string())
        );
    }

    #[test]
    fn shape_blank_inner_line_fails() {
        assert_eq!(
            check_shape("a\n\nb\nc"),
            (false, "lines=4 empty=1".to_string())
        );
        assert_eq!(
            check_shape("a\n   \nc"),
            (false, "lines=3 empty=1".to_string())
        );
        assert_eq!(
            check_shape("a\n\t\r\nc"),
            (false, "lines=3 empty=1".to_string())
        );
    }
}
