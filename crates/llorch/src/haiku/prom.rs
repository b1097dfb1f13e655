//! A small Prometheus text-format reader for the haiku check: series values and TYPE lines.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses every sample line; malformed lines are returned as errors with their text.
pub fn parse(text: &str) -> Result<Vec<Series>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).ok_or_else(|| format!("unparseable sample: {line}"))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Option<Series> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = if value == "+Inf" {
        f64::INFINITY
    } else {
        value.parse().ok()?
    };
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n.to_string(), parse_labels(rest.strip_suffix('}')?)?),
        None => (head.to_string(), BTreeMap::new()),
    };
    Some(Series {
        name,
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.insert(key.trim().to_string(), val);
    }
}

/// Names declared `counter` by `# TYPE` lines.
pub fn counters(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split_once(' '))
        .filter(|(_, kind)| kind.trim() == "counter")
        .map(|(n, _)| n.to_string())
        .collect()
}

pub fn has_help_and_type(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("# HELP ")) && text.lines().any(|l| l.starts_with("# TYPE "))
}

pub fn sum(series: &[Series], name: &str) -> f64 {
    series
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let text = "# HELP a x\n# TYPE a counter\na{p=\"x\\\"y\",q=\"\"} 3\nb 1.5\n";
        let s = parse(text).expect("the sample parses");
        assert_eq!(s[0].labels["p"], "x\"y");
        assert_eq!(s[0].labels["q"], "");
        assert_eq!(sum(&s, "b"), 1.5);
        assert_eq!(counters(text), vec!["a".to_string()]);
        assert!(has_help_and_type(text));
        assert!(parse("a{p=\"x} 1").is_err());
    }
}
