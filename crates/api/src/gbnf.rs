//! A syntax check for GBNF grammars as llama.cpp's `llama-server` parses them (the `grammar` task
//! field, API.md §4.1), so a broken grammar is refused at admission instead of failing in the
//! engine. It accepts exactly what the engine's parser accepts, plus two of the engine's later
//! checks: every referenced rule is defined, a `root` rule exists, and no rule is left-recursive.
//!
//! Syntax: rules `name ::= alternatives`, one per line (a newline ends a rule except inside
//! parentheses and after `|`); names of ASCII letters, digits and `-`; literals `"..."` and
//! character classes `[...]` (ranges `a-z`, negation `^`) with the escapes `\x`, `\u`, `\U`, `\t`,
//! `\r`, `\n`, `\\`, `\"`, `\[`, `\]`, `\-`; `.` (any character); groups `( )`; repetition `*`,
//! `+`, `?`, `{m}`, `{m,}`, `{m,n}`; tokens `<[id]>`, `<text>` and their negation `!<...>`;
//! comments from `#` to the end of the line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Most repetitions a `{m,n}` may ask for (llama.cpp's `MAX_REPETITION_THRESHOLD`).
pub const MAX_REPETITIONS: u64 = 2000;

/// Where and why a grammar is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}, column {column} (byte {byte}): {reason}", rule_prefix(.rule))]
pub struct GbnfError {
    /// The rule being defined (syntax errors), referring (undefined rules) or recursing.
    pub rule: Option<String>,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// 0-based byte offset.
    pub byte: usize,
    pub reason: Reason,
}

fn rule_prefix(rule: &Option<String>) -> String {
    rule.as_ref()
        .map(|r| format!("rule `{r}`, "))
        .unwrap_or_default()
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Expected(&'static str),
    UnterminatedLiteral,
    UnterminatedClass,
    UnknownEscape,
    NothingToRepeat(char),
    TooManyRepetitions(u64),
    UndefinedRule(String),
    NoRoot,
    LeftRecursion,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Expected(what) => write!(f, "expected {what}"),
            Reason::UnterminatedLiteral => write!(f, "unterminated string literal"),
            Reason::UnterminatedClass => write!(f, "unterminated character class"),
            Reason::UnknownEscape => write!(f, "unknown escape sequence"),
            Reason::NothingToRepeat(op) => write!(f, "`{op}` has nothing before it to repeat"),
            Reason::TooManyRepetitions(n) => {
                write!(f, "{n} repetitions exceed the limit of {MAX_REPETITIONS}")
            }
            Reason::UndefinedRule(name) => write!(f, "rule `{name}` is referenced but not defined"),
            Reason::NoRoot => write!(f, "the grammar has no `root` rule"),
            Reason::LeftRecursion => {
                write!(f, "the rule is left-recursive, which llama.cpp refuses")
            }
        }
    }
}

/// Checks `src`; `Ok` means llama.cpp's parser accepts it.
pub fn check(src: &str) -> Result<(), GbnfError> {
    let mut p = Parser {
        src,
        pos: 0,
        rule: None,
        rules: BTreeMap::new(),
        refs: vec![],
        symbols: 0,
        names: BTreeSet::new(),
    };
    p.grammar()?;
    let Parser { rules, refs, .. } = p;
    if let Some(r) = refs.iter().find(|r| !rules.contains_key(r.name)) {
        return Err(error_at(
            src,
            r.at,
            Some(r.from),
            Reason::UndefinedRule(r.name.to_string()),
        ));
    }
    if !rules.contains_key("root") {
        return Err(error_at(src, 0, None, Reason::NoRoot));
    }
    if let Some((name, at)) = left_recursive(&rules) {
        return Err(error_at(src, at, Some(name), Reason::LeftRecursion));
    }
    Ok(())
}

fn error_at(src: &str, byte: usize, rule: Option<&str>, reason: Reason) -> GbnfError {
    let before = &src[..byte];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    GbnfError {
        rule: rule.map(str::to_string),
        line,
        column,
        byte,
        reason,
    }
}

/// One element of a sequence, as far as the later checks need it.
#[derive(Debug)]
enum Item<'a> {
    /// Literals, classes, `.` and tokens; `nullable` only for the empty literal `""`.
    Terminal {
        nullable: bool,
    },
    Ref(&'a str),
    Group(Vec<Vec<Item<'a>>>),
    Repeat {
        item: Box<Item<'a>>,
        min: u64,
    },
}

struct Rule<'a> {
    alts: Vec<Vec<Item<'a>>>,
    at: usize,
}

struct Reference<'a> {
    name: &'a str,
    from: &'a str,
    at: usize,
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    rule: Option<&'a str>,
    rules: BTreeMap<&'a str, Rule<'a>>,
    refs: Vec<Reference<'a>>,
    /// Symbols llama.cpp has allocated so far: every distinct name plus the rules it synthesizes
    /// for groups and repetitions. Its repetition limit counts them.
    symbols: u64,
    names: BTreeSet<&'a str>,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + ahead).copied()
    }

    fn fail<T>(&self, reason: Reason) -> Result<T, GbnfError> {
        self.fail_at(self.pos, reason)
    }

    fn fail_at<T>(&self, at: usize, reason: Reason) -> Result<T, GbnfError> {
        Err(error_at(self.src, at, self.rule, reason))
    }

    /// Skips blanks and comments, and newlines when `newline_ok`.
    fn space(&mut self, newline_ok: bool) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newline_ok => self.pos += 1,
                b'#' => {
                    while self.peek().is_some_and(|b| b != b'\r' && b != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<&'a str, GbnfError> {
        let start = self.pos;
        while self.peek().is_some_and(is_word) {
            self.pos += 1;
        }
        if start == self.pos {
            return self.fail(Reason::Expected("a rule name"));
        }
        let name = &self.src[start..self.pos];
        if self.names.insert(name) {
            self.symbols += 1;
        }
        Ok(name)
    }

    fn int(&mut self) -> Result<u64, GbnfError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        if start == self.pos {
            return self.fail(Reason::Expected("an integer"));
        }
        // More digits than fit in a u64 are certainly too many repetitions.
        Ok(self.src[start..self.pos].parse().unwrap_or(u64::MAX))
    }

    fn grammar(&mut self) -> Result<(), GbnfError> {
        self.space(true);
        while self.peek().is_some() {
            self.rule_def()?;
        }
        Ok(())
    }

    fn rule_def(&mut self) -> Result<(), GbnfError> {
        let at = self.pos;
        self.rule = None;
        let name = self.name()?;
        self.rule = Some(name);
        self.space(false);
        if !self.src[self.pos..].starts_with("::=") {
            return self.fail(Reason::Expected("`::=`"));
        }
        self.pos += 3;
        self.space(true);
        let alts = self.alternates(false)?;
        match self.peek() {
            Some(b'\r') => self.pos += if self.peek_at(1) == Some(b'\n') { 2 } else { 1 },
            Some(b'\n') => self.pos += 1,
            None => {}
            Some(_) => return self.fail(Reason::Expected("a newline or the end of the grammar")),
        }
        self.space(true);
        // As in llama.cpp, a later definition of the same name replaces the earlier one.
        self.rules.insert(name, Rule { alts, at });
        Ok(())
    }

    fn alternates(&mut self, nested: bool) -> Result<Vec<Vec<Item<'a>>>, GbnfError> {
        let mut alts = vec![self.sequence(nested)?];
        while self.peek() == Some(b'|') {
            self.pos += 1;
            self.space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(alts)
    }

    fn sequence(&mut self, nested: bool) -> Result<Vec<Item<'a>>, GbnfError> {
        let mut items: Vec<Item<'a>> = vec![];
        // Rules llama.cpp would copy when the last item is repeated (its `n_prev_rules`).
        let mut copies: u64 = 1;
        while let Some(b) = self.peek() {
            let item = match b {
                b'"' => self.literal()?,
                b'[' => self.class()?,
                b'<' | b'!' => self.token()?,
                b'(' => {
                    self.pos += 1;
                    self.space(true);
                    let before = self.symbols;
                    self.symbols += 1;
                    let alts = self.alternates(true)?;
                    if self.peek() != Some(b')') {
                        return self.fail(Reason::Expected("`)` to close the group"));
                    }
                    self.pos += 1;
                    self.space(nested);
                    items.push(Item::Group(alts));
                    copies = (self.symbols - before).max(1);
                    continue;
                }
                b'.' => {
                    self.pos += 1;
                    Item::Terminal { nullable: false }
                }
                b'*' | b'+' | b'?' | b'{' => {
                    let at = self.pos;
                    let Some(last) = items.pop() else {
                        return self.fail(Reason::NothingToRepeat(char::from(b)));
                    };
                    self.pos += 1;
                    let (min, max) = match b {
                        b'*' => (0, None),
                        b'+' => (1, None),
                        b'?' => (0, Some(1)),
                        _ => self.braces(nested)?,
                    };
                    copies = self.repeat(copies, min, max, at)?;
                    self.space(nested);
                    items.push(Item::Repeat {
                        item: Box::new(last),
                        min,
                    });
                    continue;
                }
                b if is_word(b) => {
                    let at = self.pos;
                    let name = self.name()?;
                    self.refs.push(Reference {
                        name,
                        from: self.rule.unwrap_or(""),
                        at,
                    });
                    Item::Ref(name)
                }
                _ => break,
            };
            items.push(item);
            copies = 1;
            self.space(nested);
        }
        Ok(items)
    }

    /// llama.cpp's limit on the rules a repetition expands to (nested repetitions multiply);
    /// returns the new count of rules a further repetition would copy.
    fn repeat(
        &mut self,
        copies: u64,
        min: u64,
        max: Option<u64>,
        at: usize,
    ) -> Result<u64, GbnfError> {
        let total = match max {
            Some(m) if m > 0 => m,
            _ => min.max(1),
        };
        let expanded = copies.saturating_mul(total);
        if expanded > MAX_REPETITIONS {
            return self.fail_at(at, Reason::TooManyRepetitions(expanded));
        }
        self.symbols += max.map_or(1, |m| m.saturating_sub(min));
        Ok(expanded)
    }

    /// `{m}`, `{m,}` or `{m,n}` after the `{`; returns `(m, n)`, `n = None` when unbounded.
    fn braces(&mut self, nested: bool) -> Result<(u64, Option<u64>), GbnfError> {
        self.space(nested);
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return self.fail(Reason::Expected("an integer"));
        }
        let min_at = self.pos;
        let min = self.int()?;
        self.space(nested);
        let max = match self.peek() {
            Some(b'}') => Some(min),
            Some(b',') => {
                self.pos += 1;
                self.space(nested);
                let max = if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    let m = self.int()?;
                    self.space(nested);
                    // A maximum above the limit means "unbounded" to llama.cpp.
                    (m <= MAX_REPETITIONS).then_some(m)
                } else {
                    None
                };
                if self.peek() != Some(b'}') {
                    return self.fail(Reason::Expected("`}`"));
                }
                max
            }
            _ => return self.fail(Reason::Expected("`,` or `}`")),
        };
        if min > MAX_REPETITIONS {
            return self.fail_at(min_at, Reason::TooManyRepetitions(min));
        }
        // The caller's `space` runs after the closing brace.
        self.pos += 1;
        Ok((min, max))
    }

    fn literal(&mut self) -> Result<Item<'a>, GbnfError> {
        let open = self.pos;
        self.pos += 1;
        let mut empty = true;
        loop {
            match self.peek() {
                None => return self.fail_at(open, Reason::UnterminatedLiteral),
                Some(b'"') => break,
                Some(_) => {
                    self.char()?;
                    empty = false;
                }
            }
        }
        self.pos += 1;
        Ok(Item::Terminal { nullable: empty })
    }

    fn class(&mut self) -> Result<Item<'a>, GbnfError> {
        let open = self.pos;
        self.pos += 1;
        if self.peek() == Some(b'^') {
            self.pos += 1;
        }
        loop {
            match self.peek() {
                None => return self.fail_at(open, Reason::UnterminatedClass),
                Some(b']') => break,
                Some(_) => {
                    self.char()?;
                    if self.peek() == Some(b'-') && self.peek_at(1) != Some(b']') {
                        self.pos += 1;
                        if self.peek().is_none() {
                            return self.fail_at(open, Reason::UnterminatedClass);
                        }
                        self.char()?;
                    }
                }
            }
        }
        self.pos += 1;
        Ok(Item::Terminal { nullable: false })
    }

    /// One character of a literal or class: an escape or one UTF-8 character.
    fn char(&mut self) -> Result<(), GbnfError> {
        let start = self.pos;
        let Some(c) = self.src[self.pos..].chars().next() else {
            return self.fail(Reason::Expected("a character"));
        };
        if c != '\\' {
            self.pos += c.len_utf8();
            return Ok(());
        }
        let hex = match self.peek_at(1) {
            Some(b'x') => 2,
            Some(b'u') => 4,
            Some(b'U') => 8,
            Some(b't' | b'r' | b'n' | b'\\' | b'"' | b'[' | b']' | b'-') => 0,
            _ => return self.fail_at(start, Reason::UnknownEscape),
        };
        self.pos += 2;
        for _ in 0..hex {
            if !self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
                return self.fail(Reason::Expected(match hex {
                    2 => "2 hex digits after `\\x`",
                    4 => "4 hex digits after `\\u`",
                    _ => "8 hex digits after `\\U`",
                }));
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// `<[id]>`, `<text>` or either negated with `!`.
    fn token(&mut self) -> Result<Item<'a>, GbnfError> {
        if self.peek() == Some(b'!') {
            self.pos += 1;
        }
        if self.peek() != Some(b'<') {
            return self.fail(Reason::Expected("`<` after `!`"));
        }
        self.pos += 1;
        if self.peek() == Some(b'[') {
            self.pos += 1;
            if self.int()? > u64::from(u32::MAX) {
                return self.fail(Reason::Expected("a token id below 2^32"));
            }
            if self.peek() != Some(b']') {
                return self.fail(Reason::Expected("`]` after the token id"));
            }
            self.pos += 1;
        } else {
            while self.peek().is_some_and(|b| b != b'>') {
                self.pos += 1;
            }
        }
        if self.peek() != Some(b'>') {
            return self.fail(Reason::Expected("`>` to close the token"));
        }
        self.pos += 1;
        Ok(Item::Terminal { nullable: false })
    }
}

/// The first left-recursive rule (by name) and where it is defined, as llama.cpp refuses them.
fn left_recursive<'a>(rules: &BTreeMap<&'a str, Rule<'a>>) -> Option<(&'a str, usize)> {
    // Which rules can match the empty string: iterate to a fixed point.
    let mut nullable: BTreeSet<&str> = BTreeSet::new();
    loop {
        let before = nullable.len();
        for (name, r) in rules {
            if r.alts.iter().any(|s| seq_nullable(s, &nullable)) {
                nullable.insert(name);
            }
        }
        if nullable.len() == before {
            break;
        }
    }
    // Edges to the rules that can come first in each rule; then look for a cycle.
    let first: BTreeMap<&str, BTreeSet<&str>> = rules
        .iter()
        .map(|(name, r)| {
            let mut out = BTreeSet::new();
            for s in &r.alts {
                seq_first(s, &nullable, &mut out);
            }
            (*name, out)
        })
        .collect();
    rules.iter().find_map(|(name, r)| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = first.get(name)?.iter().copied().collect();
        while let Some(n) = stack.pop() {
            if n == *name {
                return Some((*name, r.at));
            }
            if seen.insert(n) {
                stack.extend(first.get(n).into_iter().flatten().copied());
            }
        }
        None
    })
}

fn item_nullable(item: &Item<'_>, nullable: &BTreeSet<&str>) -> bool {
    match item {
        Item::Terminal { nullable } => *nullable,
        Item::Ref(n) => nullable.contains(n),
        Item::Group(alts) => alts.iter().any(|s| seq_nullable(s, nullable)),
        Item::Repeat { item, min } => *min == 0 || item_nullable(item, nullable),
    }
}

fn seq_nullable(seq: &[Item<'_>], nullable: &BTreeSet<&str>) -> bool {
    seq.iter().all(|i| item_nullable(i, nullable))
}

fn seq_first<'a>(seq: &[Item<'a>], nullable: &BTreeSet<&str>, out: &mut BTreeSet<&'a str>) {
    for item in seq {
        item_first(item, nullable, out);
        if !item_nullable(item, nullable) {
            break;
        }
    }
}

fn item_first<'a>(item: &Item<'a>, nullable: &BTreeSet<&str>, out: &mut BTreeSet<&'a str>) {
    match item {
        Item::Terminal { .. } => {}
        Item::Ref(n) => {
            out.insert(n);
        }
        Item::Group(alts) => {
            for s in alts {
                seq_first(s, nullable, out);
            }
        }
        Item::Repeat { item, .. } => item_first(item, nullable, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) {
        if let Err(e) = check(src) {
            panic!("expected {src:?} to parse: {e}");
        }
    }

    /// Checks that `src` fails at `line:column` in `rule` for `reason`.
    fn bad(src: &str, rule: Option<&str>, line: usize, column: usize, reason: Reason) {
        let e = check(src).expect_err(src);
        assert_eq!(
            (e.rule.as_deref(), e.line, e.column, &e.reason),
            (rule, line, column, &reason),
            "{src:?}: {e}"
        );
    }

    #[test]
    fn accepts_the_syntax_llama_cpp_accepts() {
        ok("root ::= \"a\"");
        ok("root ::= \"a\"\n");
        ok("root ::=\n  \"a\" |\n  \"b\"\n");
        ok("# a comment\nroot ::= x # trailing\nx ::= [a-z0-9_-]+ | [^\\n\\]] .\n");
        ok("root ::= ( \"a\"\n  | \"b\" )* \"c\"? [x]{2} [y]{1,} [z]{0,3} \"\" \n");
        ok("root ::= \"\\x41\\u00e9\\U0001F600\\t\\r\\n\\\\\\\"\\[\\]\\-\"\r\nx ::= \"é✓\"\r\n");
        ok("root ::= <[42]> !<[7]> <think> !<|end|>\n");
        ok("root ::= [a-]\n");
        // Empty alternatives and an empty rule are legal.
        ok("root ::= x\nx ::= | \"a\"\nempty ::=\n");
        // A redefinition replaces the earlier rule, as in llama.cpp.
        ok("root ::= \"a\"\nroot ::= \"b\"\n");
        // A maximum above the limit means unbounded.
        ok("root ::= \"a\"{0,5000}\n");
    }

    #[test]
    fn accepts_a_json_grammar() {
        // The shape of llama.cpp's grammars/json.gbnf.
        ok(r#"
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#);
    }

    #[test]
    fn names_the_rule_and_position_of_syntax_errors() {
        bad(
            "root ::= \"a\"\nx ::= \"b",
            Some("x"),
            2,
            7,
            Reason::UnterminatedLiteral,
        );
        bad(
            "root ::= [a-z\n",
            Some("root"),
            1,
            10,
            Reason::UnterminatedClass,
        );
        bad(
            "root = \"a\"",
            Some("root"),
            1,
            6,
            Reason::Expected("`::=`"),
        );
        bad(
            "root ::= * \"a\"",
            Some("root"),
            1,
            10,
            Reason::NothingToRepeat('*'),
        );
        bad(
            "root ::= \"a\" )",
            Some("root"),
            1,
            14,
            Reason::Expected("a newline or the end of the grammar"),
        );
        bad(
            "root ::= ( \"a\" ",
            Some("root"),
            1,
            16,
            Reason::Expected("`)` to close the group"),
        );
        bad(
            "root ::= x\nx ::= \"\\q\"",
            Some("x"),
            2,
            8,
            Reason::UnknownEscape,
        );
        bad(
            "root ::= \"é\\u12\"",
            Some("root"),
            1,
            16,
            Reason::Expected("4 hex digits after `\\u`"),
        );
        bad(
            "root ::= \"a\"{3001}",
            Some("root"),
            1,
            14,
            Reason::TooManyRepetitions(3001),
        );
        bad(
            "root ::= \"a\"{2,",
            Some("root"),
            1,
            16,
            Reason::Expected("`}`"),
        );
        bad("::= \"a\"", None, 1, 1, Reason::Expected("a rule name"));
        let e = check("root ::= \"a\"\nx ::= \"b").expect_err("unterminated");
        assert_eq!(
            e.to_string(),
            "rule `x`, line 2, column 7 (byte 19): unterminated string literal"
        );
    }

    #[test]
    fn undefined_rules_missing_root_and_left_recursion() {
        bad(
            "root ::= greeting \" \" name\nname ::= \"x\"\n",
            Some("root"),
            1,
            10,
            Reason::UndefinedRule("greeting".into()),
        );
        bad("start ::= \"a\"\n", None, 1, 1, Reason::NoRoot);
        bad(
            "root ::= expr\nexpr ::= expr \"+\" term | term\nterm ::= [0-9]\n",
            Some("expr"),
            2,
            1,
            Reason::LeftRecursion,
        );
        // Through a nullable prefix and another rule.
        bad(
            "root ::= ws a\na ::= ws? b\nb ::= a \"x\" | \"y\"\nws ::= \" \"*\n",
            Some("a"),
            2,
            1,
            Reason::LeftRecursion,
        );
        for src in [
            "root ::= \"a\" | root \"a\"",
            "root ::= asdf\nasdf ::= \"a\" | asdf \"a\"\n",
            "root ::= asdf\nasdf ::= \"a\" | foo \"b\"\nfoo ::= \"c\" | asdf \"d\" | \"e\"",
            "root ::= asdf\nasdf ::= \"a\" | foo \"b\"\nfoo ::= \"c\" | empty asdf \"d\" | \"e\"\nempty ::= \"blah\" | ",
        ] {
            assert_eq!(
                check(src).map_err(|e| e.reason),
                Err(Reason::LeftRecursion),
                "{src}"
            );
        }
        // Right recursion is fine.
        ok("root ::= \"a\" root | \"b\"\n");
    }
}
