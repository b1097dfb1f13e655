//! Config loading (API.md §17.1): one TOML file, overridden by `PREFIX__SECTION__KEY=value`
//! environment variables, deserialized strictly. Unknown keys are all collected and reported together
//! with the first type error; semantic validation happens in each daemon's own config module.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Loads `T` from an optional TOML file plus env overrides. On success it also returns the
/// problems that do not stop deserialization (unknown keys), so the caller can report them together
/// with its own validation; a type error or unreadable file is returned as `Err` with them.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    env_prefix: &str,
    env: &[(String, String)],
) -> Result<(T, Vec<String>), Vec<String>> {
    let mut root = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| vec![format!("{}: cannot read: {e}", p.display())])?;
            text.parse::<toml::Table>()
                .map_err(|e| vec![format!("{}: invalid TOML: {}", p.display(), e.message())])?
        }
        None => toml::Table::new(),
    };
    let mut problems = Vec::new();
    apply_env(&mut root, env_prefix, env, &mut problems);
    let mut unknown = Vec::new();
    let de = toml::Value::Table(root);
    let mut track = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let ignored = serde_ignored::Deserializer::new(de, &mut track);
    let result: Result<T, _> = serde_path_to_error::deserialize(ignored);
    for key in unknown {
        problems.push(format!("{key}: unknown key"));
    }
    match result {
        Ok(v) => Ok((v, problems)),
        Err(e) => {
            let path = e.path().to_string();
            problems.push(format!(
                "{}: {}",
                if path == "." { "(root)".into() } else { path },
                e.into_inner()
            ));
            Err(problems)
        }
    }
}

/// Applies `PREFIX__A__B=value` overrides; values parse as TOML scalars or arrays, else strings.
fn apply_env(
    root: &mut toml::Table,
    prefix: &str,
    env: &[(String, String)],
    problems: &mut Vec<String>,
) {
    let head = format!("{prefix}__");
    for (k, v) in env {
        let Some(rest) = k.strip_prefix(&head) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            problems.push(format!("{k}: malformed override name"));
            continue;
        }
        let value = format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        if let Err(p) = set_path(root, &path, value) {
            problems.push(format!("{k}: {p} is not a table"));
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => match table
            .entry(head.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => set_path(t, rest, value),
            _ => Err(head.clone()),
        },
        [] => Ok(()),
    }
}

/// Reads a secret given either inline or through its `<key>_file` twin; both set is an error.
pub fn secret_or_file(
    key: &str,
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
    problems: &mut Vec<String>,
) -> Option<String> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(format!("{key}: set either {key} or {key}_file, not both"));
            None
        }
        (Some(v), None) => Some(v.clone()),
        (None, Some(p)) => match std::fs::read_to_string(p) {
            Ok(s) => Some(s.trim().to_string()),
            Err(e) => {
                problems.push(format!("{key}_file: cannot read {}: {e}", p.display()));
                None
            }
        },
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct Cfg {
        queue: Queue,
        name: String,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct Queue {
        capacity: u32,
        policy: String,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_types_parse() {
        let dir = std::env::temp_dir().join(format!("cfgtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "name = \"a\"\n[queue]\ncapacity = 1\n").unwrap();
        let (c, problems): (Cfg, _) = load(
            Some(&f),
            "X",
            &env(&[
                ("X__QUEUE__CAPACITY", "128"),
                ("X__QUEUE__POLICY", "drop-lru"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert!(problems.is_empty());
        assert_eq!(c.queue.capacity, 128);
        assert_eq!(c.queue.policy, "drop-lru");
        assert_eq!(c.name, "a");
    }

    #[test]
    fn unknown_keys_are_all_reported() {
        let dir = std::env::temp_dir().join(format!("cfgtest2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "bogus = 1\n[queue]\ncapacty = 1\n").unwrap();
        let (_, errs) = load::<Cfg>(Some(&f), "X", &[]).unwrap();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("queue.capacty")));
        let errs = load::<Cfg>(None, "X", &env(&[("X__QUEUE__CAPACITY", "\"many\"")])).unwrap_err();
        assert!(errs[0].contains("queue.capacity"), "{errs:?}");
    }
}
