//! Minute words for the e2e haiku check: spelling 0..=59 in English and the haiku prompt.

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

const TENS: [&str; 4] = ["twenty", "thirty", "forty", "fifty"];

/// Spell a minute (0..=59) in lowercase English: `zero` … `nineteen`, `twenty`,
/// `twenty-one` … `fifty-nine`. Returns `None` for 60 and above.
pub fn minute_word(m: u32) -> Option<String> {
    let m = usize::try_from(m).ok()?;
    if m < ONES.len() {
        return Some(ONES[m].to_string());
    }
    let tens = TENS.get(m / 10 - 2)?;
    match m % 10 {
        0 => Some((*tens).to_string()),
        unit => Some(format!("{tens}-{}", ONES[unit])),
    }
}

/// The user prompt asking for a haiku that contains `word` exactly once.
pub fn prompt_for(word: &str) -> String {
    format!(
        "Write a haiku about the time of day. It must contain the word \"{word}\" exactly once. \
         Reply with only the three lines of the haiku."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_all_minutes() {
        let cases = [
            (0, "zero"),
            (1, "one"),
            (9, "nine"),
            (10, "ten"),
            (13, "thirteen"),
            (19, "nineteen"),
            (20, "twenty"),
            (21, "twenty-one"),
            (30, "thirty"),
            (42, "forty-two"),
            (47, "forty-seven"),
            (50, "fifty"),
            (59, "fifty-nine"),
        ];
        for (m, w) in cases {
            assert_eq!(minute_word(m).as_deref(), Some(w), "minute {m}");
        }
    }

    #[test]
    fn rejects_out_of_range() {
        assert_eq!(minute_word(60), None);
        assert_eq!(minute_word(99), None);
        assert_eq!(minute_word(u32::MAX), None);
    }

    #[test]
    fn all_words_are_distinct_lowercase() {
        let words: Vec<String> = (0..60).filter_map(minute_word).collect();
        assert_eq!(words.len(), 60);
        let mut sorted = words.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 60);
        for w in &words {
            assert!(w.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{w}");
        }
    }

    #[test]
    fn prompt_is_exact() {
        assert_eq!(
            prompt_for("forty-two"),
            "Write a haiku about the time of day. It must contain the word \"forty-two\" \
             exactly once. Reply with only the three lines of the haiku."
        );
    }
}
