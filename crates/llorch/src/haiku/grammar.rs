//! GBNF grammar for the e2e haiku check: three lines, the minute word exactly once at the start of line 2.
//!
//! Free words (every word except the minute word W) are 1–14 characters of ASCII letters and
//! apostrophes, starting with a letter. When W itself consists only of such characters
//! (e.g. `nineteen`), a free word could contain W, so free words are generated from a KMP-style
//! automaton that never completes W in any letter case. When W has other characters (e.g. the
//! hyphen in `forty-two`), no free word can contain it and the plain `fword` rule is used.
//! Words are separated by spaces, punctuation or newlines, so W can never form across words.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Maximum number of characters in a free word.
const MAX_WORD_CHARS: usize = 14;
/// Symbols of the free-word alphabet: `a`..=`z` (either case) are 0..26, the apostrophe is 26.
const ALPHABET: usize = 27;
const APOSTROPHE: usize = 26;

/// Rules shared by every haiku grammar, after the `withw` rule.
const COMMON_RULES: &str = "\
free  ::= fword punct ( \" \" fword punct ){1,6}
punct ::= [,.;!]?
nl    ::= \"\\n\"
";

/// The free-word rule when W cannot occur inside a free word.
const PLAIN_FWORD: &str = "fword ::= [a-zA-Z] [a-zA-Z']{0,13}\n";

/// The GBNF grammar (llama.cpp syntax) for a haiku that contains `word` exactly once:
/// lowercase or Capitalized at the start of line 2, never inside any other word.
pub fn haiku_grammar(word: &str) -> String {
    let w = word.to_lowercase();
    let mut out = String::from("root  ::= free nl withw nl free\n");
    out.push_str(&withw_rule(&w));
    out.push_str(COMMON_RULES);
    match FreeWordDfa::new(&w) {
        Some(dfa) => out.push_str(&dfa_rules(&dfa)),
        None => out.push_str(PLAIN_FWORD),
    }
    out
}

/// Whether `candidate` is a free word the grammar for target word `target` allows:
/// 1–14 ASCII letters or apostrophes, a letter first, not containing `target` in any case.
/// Uses the same automaton that [`haiku_grammar`] renders.
pub fn accepts_free_word(target: &str, candidate: &str) -> bool {
    let Some(syms) = symbols(candidate) else {
        return false;
    };
    if syms.is_empty() || syms.len() > MAX_WORD_CHARS || syms[0] == APOSTROPHE {
        return false;
    }
    match FreeWordDfa::new(&target.to_lowercase()) {
        Some(dfa) => dfa.run(&syms).is_some(),
        None => true,
    }
}

fn withw_rule(w: &str) -> String {
    let lower = literal(w);
    let cap = literal(&capitalize(w));
    let alts = if lower == cap {
        lower
    } else {
        format!("{lower} | {cap}")
    };
    format!("withw ::= ( {alts} ) punct ( \" \" fword punct ){{1,6}}\n")
}

fn capitalize(w: &str) -> String {
    let mut chars = w.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A GBNF string literal.
fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Alphabet index of a character (letters case-insensitively), `None` outside the alphabet.
fn symbol(c: char) -> Option<usize> {
    match c.to_ascii_lowercase() {
        l @ 'a'..='z' => Some(l as usize - 'a' as usize),
        '\'' => Some(APOSTROPHE),
        _ => None,
    }
}

fn symbols(s: &str) -> Option<Vec<usize>> {
    s.chars().map(symbol).collect()
}

/// KMP automaton over the free-word alphabet. State `s` = length of the longest prefix of W
/// that is a suffix of the text so far; state `W.len()` (W completed) is dead.
struct FreeWordDfa {
    delta: Vec<[usize; ALPHABET]>,
}

impl FreeWordDfa {
    /// `None` when W is empty or has a character outside the alphabet (it cannot occur in a free word).
    fn new(w: &str) -> Option<Self> {
        let syms = symbols(w)?;
        let first = *syms.first()?;
        let mut delta = vec![[0usize; ALPHABET]; syms.len()];
        delta[0][first] = 1;
        let mut fallback = 0;
        for (s, &sym) in syms.iter().enumerate().skip(1) {
            delta[s] = delta[fallback];
            delta[s][sym] = s + 1;
            fallback = delta[fallback][sym];
        }
        Some(Self { delta })
    }

    /// The next state, `None` when `sym` would complete W.
    fn step(&self, state: usize, sym: usize) -> Option<usize> {
        let next = self.delta[state][sym];
        (next < self.delta.len()).then_some(next)
    }

    /// The final state after `syms`, `None` if W occurs.
    fn run(&self, syms: &[usize]) -> Option<usize> {
        syms.iter().try_fold(0, |state, &sym| self.step(state, sym))
    }

    /// Live transitions out of `state`, grouped by target state (ascending).
    fn classes(&self, state: usize, letters_only: bool) -> BTreeMap<usize, Vec<usize>> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let last = if letters_only { APOSTROPHE } else { ALPHABET };
        for sym in 0..last {
            if let Some(next) = self.step(state, sym) {
                groups.entry(next).or_default().push(sym);
            }
        }
        groups
    }
}

/// `fword` plus every reachable `fw-<state>-<left>` rule, where `left` = characters still allowed.
fn dfa_rules(dfa: &FreeWordDfa) -> String {
    let (alts, mut queue) = alternatives(dfa, 0, MAX_WORD_CHARS, true);
    let mut out = format!("fword ::= {}\n", alts.join(" | "));
    let mut seen: BTreeSet<(usize, usize)> = queue.iter().copied().collect();
    while let Some((state, left)) = queue.pop_front() {
        let (alts, refs) = alternatives(dfa, state, left, false);
        out.push_str(&format!(
            "{} ::= \"\" | {}\n",
            rule_name(state, left),
            alts.join(" | ")
        ));
        queue.extend(refs.into_iter().filter(|r| seen.insert(*r)));
    }
    out
}

/// The non-empty alternatives of a rule that may still emit `left` characters from `state`,
/// and the rules they reference.
fn alternatives(
    dfa: &FreeWordDfa,
    state: usize,
    left: usize,
    letters_only: bool,
) -> (Vec<String>, VecDeque<(usize, usize)>) {
    let mut alts = Vec::new();
    let mut refs = VecDeque::new();
    for (next, syms) in dfa.classes(state, letters_only) {
        let class = char_class(&syms);
        if left > 1 {
            alts.push(format!("{class} {}", rule_name(next, left - 1)));
            refs.push_back((next, left - 1));
        } else {
            alts.push(class);
        }
    }
    (alts, refs)
}

fn rule_name(state: usize, left: usize) -> String {
    format!("fw-{state}-{left}")
}

/// A GBNF character class with both cases of each letter, e.g. `[a-mo-zA-MO-Z']`.
fn char_class(syms: &[usize]) -> String {
    let letters: Vec<u8> = syms
        .iter()
        .filter_map(|&s| u8::try_from(s).ok().filter(|&b| b < 26))
        .collect();
    let mut out = String::from("[");
    push_ranges(&mut out, &letters, b'a');
    push_ranges(&mut out, &letters, b'A');
    if syms.contains(&APOSTROPHE) {
        out.push('\'');
    }
    out.push(']');
    out
}

/// Appends sorted letter offsets as ranges (`a-c`, `de`, `f`) based at `base`.
fn push_ranges(out: &mut String, letters: &[u8], base: u8) {
    let mut i = 0;
    while i < letters.len() {
        let mut j = i;
        while j + 1 < letters.len() && letters[j + 1] == letters[j] + 1 {
            j += 1;
        }
        out.push(char::from(base + letters[i]));
        if j > i + 1 {
            out.push('-');
        }
        if j > i {
            out.push(char::from(base + letters[j]));
        }
        i = j + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::words::minute_word;
    use super::*;
    use std::collections::HashMap;

    fn all_words() -> Vec<String> {
        (0..60).filter_map(minute_word).collect()
    }

    /// Independent oracle: the free-word shape, and no case-insensitive occurrence of the target.
    fn oracle(target: &str, cand: &str) -> bool {
        let shape = (1..=MAX_WORD_CHARS).contains(&cand.chars().count())
            && cand.starts_with(|c: char| c.is_ascii_alphabetic())
            && cand.chars().all(|c| c.is_ascii_alphabetic() || c == '\'');
        shape && !cand.to_lowercase().contains(&target.to_lowercase())
    }

    /// One alternative of an `fword`/`fw-*` rule: a character class (None = empty) and a next rule.
    type Alt = (Option<String>, Option<String>);

    /// Test-only reader for the rendered free-word rules.
    fn parse_fw_rules(grammar: &str) -> HashMap<String, Vec<Alt>> {
        let mut rules = HashMap::new();
        for line in grammar.lines() {
            let Some((name, body)) = line.split_once("::=") else {
                continue;
            };
            let name = name.trim();
            if name == "fword" || name.starts_with("fw-") {
                rules.insert(name.to_string(), body.split(" | ").map(parse_alt).collect());
            }
        }
        rules
    }

    fn parse_alt(alt: &str) -> Alt {
        let alt = alt.trim();
        if alt == "\"\"" {
            return (None, None);
        }
        let body = alt.strip_prefix('[').expect("class start");
        let (class, rest) = body.split_once(']').expect("class end");
        let next = Some(rest.trim())
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        (Some(class.to_string()), next)
    }

    fn class_matches(class: &str, c: char) -> bool {
        let chars: Vec<char> = class.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if i + 2 < chars.len() && chars[i + 1] == '-' {
                if (chars[i]..=chars[i + 2]).contains(&c) {
                    return true;
                }
                i += 3;
            } else {
                if chars[i] == c {
                    return true;
                }
                i += 1;
            }
        }
        false
    }

    /// Whether rule `name` derives exactly `rest`.
    fn derives(rules: &HashMap<String, Vec<Alt>>, name: &str, rest: &[char]) -> bool {
        rules[name]
            .iter()
            .any(|(class, next)| match (class, rest.split_first()) {
                (None, _) => rest.is_empty(),
                (Some(_), None) => false,
                (Some(cls), Some((&c, tail))) => {
                    class_matches(cls, c)
                        && match next {
                            Some(n) => derives(rules, n, tail),
                            None => tail.is_empty(),
                        }
                }
            })
    }

    /// Deterministic pseudo-random candidates biased towards pieces of the target.
    fn candidates(target: &str) -> Vec<String> {
        let pool: Vec<char> = format!("{}xqe'Zy", target.replace('-', ""))
            .chars()
            .collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ target.len() as u64;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let mut out = Vec::new();
        for _ in 0..3000 {
            let len = 1 + next(17);
            let mut s: String = (0..len).map(|_| pool[next(pool.len())]).collect();
            if next(3) == 0 {
                let at = next(s.len() + 1);
                s = format!("{}{}{}", &s[..at], capitalize(target), &s[at..]);
            }
            if next(2) == 0 {
                s = s.to_uppercase();
            }
            out.push(s);
        }
        out
    }

    fn fixed_candidates(w: &str) -> Vec<String> {
        let cut = &w[..w.len() - 1];
        vec![
            w.to_string(),
            capitalize(w),
            w.to_uppercase(),
            format!("x{w}x"),
            format!("{cut}{w}"),
            format!("{w}s"),
            cut.to_string(),
            format!("{cut}x"),
            "quiet".into(),
            "don't".into(),
            "'tis".into(),
            "abcdefghijklmn".into(),
            "abcdefghijklmno".into(),
            String::new(),
            "a-b".into(),
            "a b".into(),
            "caf\u{e9}".into(),
        ]
    }

    #[test]
    fn automaton_agrees_with_oracle_for_all_minute_words() {
        for w in all_words() {
            for cand in fixed_candidates(&w).into_iter().chain(candidates(&w)) {
                assert_eq!(
                    accepts_free_word(&w, &cand),
                    oracle(&w, &cand),
                    "{w}: {cand:?}"
                );
            }
        }
    }

    #[test]
    fn rendered_rules_agree_with_automaton() {
        for w in all_words().iter().filter(|w| !w.contains('-')) {
            let rules = parse_fw_rules(&haiku_grammar(w));
            for cand in fixed_candidates(w).into_iter().chain(candidates(w)) {
                let chars: Vec<char> = cand.chars().collect();
                let by_grammar = derives(&rules, "fword", &chars);
                assert_eq!(by_grammar, accepts_free_word(w, &cand), "{w}: {cand:?}");
            }
        }
    }

    #[test]
    fn nineteen_examples() {
        let w = "nineteen";
        for bad in [
            "nineteen",
            "Nineteen",
            "NINETEEN",
            "nInEtEeN",
            "xnineteenx",
            "ninenineteen",
        ] {
            assert!(!accepts_free_word(w, bad), "{bad}");
        }
        for good in [
            "quiet",
            "nine",
            "teen",
            "ninetee",
            "don't",
            "ninetEEx",
            "abcdefghijklmn",
        ] {
            assert!(accepts_free_word(w, good), "{good}");
        }
        for bad in ["abcdefghijklmno", "'tis", "", "a-b", "two words"] {
            assert!(!accepts_free_word(w, bad), "{bad:?}");
        }
    }

    #[test]
    fn short_words_are_blocked_inside_others() {
        assert!(!accepts_free_word("one", "someone"));
        assert!(!accepts_free_word("one", "DONE"));
        assert!(accepts_free_word("one", "on"));
        assert!(!accepts_free_word("six", "sixty"));
        assert!(!accepts_free_word("zero", "zeros"));
        assert!(accepts_free_word("forty-two", "fortytwo"));
    }

    #[test]
    fn skeleton_for_hyphenated_word() {
        let g = haiku_grammar("forty-two");
        let expected = "\
root  ::= free nl withw nl free
withw ::= ( \"forty-two\" | \"Forty-two\" ) punct ( \" \" fword punct ){1,6}
free  ::= fword punct ( \" \" fword punct ){1,6}
punct ::= [,.;!]?
nl    ::= \"\\n\"
fword ::= [a-zA-Z] [a-zA-Z']{0,13}
";
        assert_eq!(g, expected);
    }

    #[test]
    fn nineteen_grammar_shape_and_size() {
        let g = haiku_grammar("Nineteen");
        assert!(g.contains("withw ::= ( \"nineteen\" | \"Nineteen\" ) punct"));
        assert!(g.contains("fword ::= [a-mo-zA-MO-Z] fw-0-13 | [nN] fw-1-13\n"));
        let rules = g.lines().count();
        assert!((80..=130).contains(&rules), "{rules} rules");
        assert!(g.len() < 16_000, "{} bytes", g.len());
    }

    /// Names referenced in a rule body (outside literals, classes and repetition counts).
    fn references(body: &str) -> Vec<String> {
        let mut refs = Vec::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            let close = match c {
                '"' => Some('"'),
                '[' => Some(']'),
                '{' => Some('}'),
                _ => None,
            };
            if let Some(close) = close {
                chars.by_ref().find(|&x| x == close);
            } else if c.is_ascii_lowercase() {
                let mut name = c.to_string();
                while let Some(&n) = chars
                    .peek()
                    .filter(|n| n.is_ascii_alphanumeric() || **n == '-')
                {
                    name.push(n);
                    chars.next();
                }
                refs.push(name);
            }
        }
        refs
    }

    #[test]
    fn grammars_are_well_formed() {
        for w in all_words() {
            let g = haiku_grammar(&w);
            assert!(!g.contains("\\'"), "{w}: invalid escape");
            let mut defined = BTreeSet::new();
            let mut used = BTreeSet::from(["root".to_string()]);
            for line in g.lines() {
                let (name, body) = line.split_once("::=").expect("rule line");
                let name = name.trim();
                assert!(name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
                assert!(
                    defined.insert(name.to_string()),
                    "{w}: {name} defined twice"
                );
                used.extend(references(body));
            }
            assert_eq!(defined, used, "{w}: defined vs referenced rules");
            // The same check orchestratord runs at admission, which mirrors llama.cpp's parser.
            if let Err(e) = api::gbnf::check(&g) {
                panic!("{w}: the haiku grammar is not valid GBNF: {e}");
            }
        }
    }

    #[test]
    fn char_class_ranges() {
        assert_eq!(char_class(&[0, 1, 2, 4, 5, 7]), "[a-cefhA-CEFH]");
        assert_eq!(char_class(&[13]), "[nN]");
        assert_eq!(char_class(&[25, APOSTROPHE]), "[zZ']");
    }

    #[test]
    fn literal_escapes() {
        assert_eq!(literal("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(capitalize("one"), "One");
        assert_eq!(capitalize(""), "");
    }
}
