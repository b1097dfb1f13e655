//! Config loading (API.md §17.1): one TOML file, overridden by `PREFIX__SECTION__KEY=value`
//! environment variables, deserialized strictly. Unknown keys and type errors are all collected:
//! a value of the wrong type is reported and dropped (its default applies), and deserialization
//! runs again, so each daemon's semantic validation still runs and every problem is reported in
//! one pass.

use std::collections::BTreeSet;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

/// Loads `T` from an optional TOML file plus env overrides. On success it also returns the
/// problems found on the way (unknown keys, values of the wrong type), so the caller can report
/// them together with its own validation; an unreadable file, invalid TOML or a type error that
/// cannot be narrowed to one key is returned as `Err` with them.
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
    let mut unknown = BTreeSet::new();
    let mut type_errors = Vec::new();
    // Each round drops one bad value, so this ends after at most one round per value.
    let outcome = loop {
        let mut track = |p: serde_ignored::Path<'_>| {
            unknown.insert(p.to_string());
        };
        let ignored =
            serde_ignored::Deserializer::new(toml::Value::Table(root.clone()), &mut track);
        match serde_path_to_error::deserialize::<_, T>(ignored) {
            Ok(v) => break Ok(v),
            Err(e) => {
                let path = e.path().to_string();
                let key = if path == "." { "(root)".into() } else { path };
                let segments: Vec<Segment> = e.path().iter().cloned().collect();
                type_errors.push(format!("{key}: {}", e.into_inner()));
                if !remove_path(&mut root, &segments) {
                    break Err(());
                }
            }
        }
    };
    problems.extend(unknown.into_iter().map(|key| format!("{key}: unknown key")));
    problems.extend(type_errors);
    match outcome {
        Ok(v) => Ok((v, problems)),
        Err(()) => Err(problems),
    }
}

/// Removes the value at `path` from `root`; false when there is nothing to remove.
fn remove_path(root: &mut toml::Table, path: &[Segment]) -> bool {
    let mut tree = toml::Value::Table(std::mem::take(root));
    let removed = remove_in(&mut tree, path);
    if let toml::Value::Table(t) = tree {
        *root = t;
    }
    removed
}

fn remove_in(v: &mut toml::Value, path: &[Segment]) -> bool {
    match (v, path) {
        (toml::Value::Table(t), [Segment::Map { key }]) => t.remove(key).is_some(),
        (toml::Value::Array(a), [Segment::Seq { index }]) if *index < a.len() => {
            a.remove(*index);
            true
        }
        (toml::Value::Table(t), [Segment::Map { key }, rest @ ..]) => {
            t.get_mut(key).is_some_and(|v| remove_in(v, rest))
        }
        (toml::Value::Array(a), [Segment::Seq { index }, rest @ ..]) => {
            a.get_mut(*index).is_some_and(|v| remove_in(v, rest))
        }
        _ => false,
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
        std::fs::create_dir_all(&dir).expect("test setup");
        let f = dir.join("c.toml");
        std::fs::write(&f, "bogus = 1\n[queue]\ncapacty = 1\n").expect("test setup");
        let (_, errs) = load::<Cfg>(Some(&f), "X", &[]).expect("test setup");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("queue.capacty")));
        let (c, errs) = load::<Cfg>(None, "X", &env(&[("X__QUEUE__CAPACITY", "\"many\"")]))
            .expect("test setup");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("queue.capacity"), "{errs:?}");
        assert_eq!(
            c.queue.capacity, 0,
            "the bad value is dropped for its default"
        );
    }

    #[test]
    fn every_type_error_is_reported_with_the_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("cfgtest3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test setup");
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "name = 5\nbogus = 1\n[queue]\ncapacity = \"big\"\npolicy = [1]\n",
        )
        .expect("test setup");
        let (c, errs) = load::<Cfg>(Some(&f), "X", &[]).expect("test setup");
        assert_eq!(errs.len(), 4, "{errs:#?}");
        for key in [
            "bogus: unknown key",
            "name: ",
            "queue.capacity: ",
            "queue.policy: ",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(key)),
                "{key} in {errs:#?}"
            );
        }
        assert_eq!((c.name.as_str(), c.queue.capacity), ("", 0));
        // A whole section of the wrong type is one problem, too.
        std::fs::write(&f, "queue = 3\nname = \"ok\"\n").expect("test setup");
        let (c, errs) = load::<Cfg>(Some(&f), "X", &[]).expect("test setup");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(c.name, "ok");
    }
}
