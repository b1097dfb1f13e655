//! ModelRef parsing (API.md §9.1): `hf:ORG/REPO[@REV]/PATH.gguf`, `https://HOST[:PORT]/PATH`,
//! `file:/ABS/PATH` (`file:///x` normalizes to `file:/x`). Strict: no empty segments, no `.` or
//! `..`, relative file paths refused; `http://` is refused as untrusted.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Hf {
        org: String,
        repo: String,
        rev: Option<String>,
        path: String,
    },
    Https {
        host: String,
        port: Option<u16>,
        path: String,
    },
    File {
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRefError {
    /// Malformed; 400 INVALID_PARAMS.
    #[error("invalid model ref: {0}")]
    Invalid(String),
    /// `http://`; 400 UNTRUSTED_ARTIFACT.
    #[error("untrusted model ref: {0}")]
    Untrusted(String),
}

fn bad(msg: impl Into<String>) -> ModelRefError {
    ModelRefError::Invalid(msg.into())
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks `/`-separated segments: non-empty, not `.` or `..`, no control characters.
fn segments_ok(path: &str) -> Result<(), ModelRefError> {
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad(format!("path segment {seg:?} is empty, . or ..")));
        }
        if seg.chars().any(char::is_control) {
            return Err(bad("control characters in the path"));
        }
    }
    Ok(())
}

impl ModelRef {
    pub fn parse(s: &str) -> Result<Self, ModelRefError> {
        if s.len() > 2048 {
            return Err(bad("longer than 2048 bytes"));
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            return parse_hf(rest);
        }
        if let Some(rest) = s.strip_prefix("https://") {
            return parse_https(rest);
        }
        if s.starts_with("http://") {
            return Err(ModelRefError::Untrusted(
                "http:// refs are not allowed; use https://".into(),
            ));
        }
        if let Some(rest) = s.strip_prefix("file:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let Some(abs) = path.strip_prefix('/') else {
                return Err(bad("file: refs need an absolute path"));
            };
            segments_ok(abs)?;
            return Ok(ModelRef::File {
                path: path.to_string(),
            });
        }
        Err(bad(format!("{s:?} is not hf:, https:// or file:")))
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            ModelRef::Hf { .. } => "hf",
            ModelRef::Https { .. } => "https",
            ModelRef::File { .. } => "file",
        }
    }

    /// The catalog id when none is given (API.md §9.1).
    pub fn default_id(&self) -> String {
        let path = match self {
            ModelRef::Hf { path, .. } | ModelRef::Https { path, .. } | ModelRef::File { path } => {
                path
            }
        };
        crate::ids::model_id_from_path(path)
    }
}

fn parse_hf(rest: &str) -> Result<ModelRef, ModelRefError> {
    let mut parts = rest.splitn(3, '/');
    let (Some(org), Some(repo_rev), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("hf: refs are hf:ORG/REPO[@REV]/PATH"));
    };
    let (repo, rev) = match repo_rev.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (repo_rev, None),
    };
    if !name_ok(org) || !name_ok(repo) || rev.is_some_and(|v| !name_ok(v)) {
        return Err(bad("ORG, REPO and REV use only A-Z a-z 0-9 . _ -"));
    }
    if [org, repo]
        .iter()
        .chain(rev.iter())
        .any(|s| *s == "." || *s == "..")
    {
        return Err(bad("ORG, REPO and REV must not be . or .."));
    }
    segments_ok(path)?;
    if !path.ends_with(".gguf") {
        return Err(bad("the hf: PATH must end in .gguf"));
    }
    Ok(ModelRef::Hf {
        org: org.into(),
        repo: repo.into(),
        rev: rev.map(str::to_string),
        path: path.into(),
    })
}

fn parse_https(rest: &str) -> Result<ModelRef, ModelRefError> {
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("https refs need a path"))?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| bad(format!("bad port {p:?}")))?,
            ),
        ),
        None => (authority, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    {
        return Err(bad(format!("bad host {host:?}")));
    }
    let path_only = path.split(['?', '#']).next().unwrap_or("");
    segments_ok(path_only)?;
    Ok(ModelRef::Https {
        host: host.into(),
        port,
        path: path.into(),
    })
}

impl fmt::Display for ModelRef {
    /// The normalized ref.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Hf {
                org,
                repo,
                rev: Some(rev),
                path,
            } => write!(f, "hf:{org}/{repo}@{rev}/{path}"),
            ModelRef::Hf {
                org,
                repo,
                rev: None,
                path,
            } => write!(f, "hf:{org}/{repo}/{path}"),
            ModelRef::Https {
                host,
                port: Some(p),
                path,
            } => write!(f, "https://{host}:{p}/{path}"),
            ModelRef::Https {
                host,
                port: None,
                path,
            } => write!(f, "https://{host}/{path}"),
            ModelRef::File { path } => write!(f, "file:{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(normalized)` or `Err(untrusted?)`.
    fn check(input: &str, expected: Result<&str, bool>) {
        let got = ModelRef::parse(input);
        match (got, expected) {
            (Ok(r), Ok(n)) => assert_eq!(r.to_string(), n, "{input}"),
            (Err(ModelRefError::Untrusted(_)), Err(true))
            | (Err(ModelRefError::Invalid(_)), Err(false)) => {}
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn grammar() {
        check(
            "hf:HuggingFaceTB/SmolLM2-135M@main/model.Q4_1.gguf",
            Ok("hf:HuggingFaceTB/SmolLM2-135M@main/model.Q4_1.gguf"),
        );
        check("hf:org/repo/dir/m.gguf", Ok("hf:org/repo/dir/m.gguf"));
        check("hf:org/repo/m.bin", Err(false));
        check("hf:org//m.gguf", Err(false));
        check("hf:org/repo/../m.gguf", Err(false));
        check("hf:o rg/repo/m.gguf", Err(false));
        check("hf:org/repo@/m.gguf", Err(false));
        check(
            "https://example.com:8443/models/m.gguf",
            Ok("https://example.com:8443/models/m.gguf"),
        );
        check("https://example.com/a/./m.gguf", Err(false));
        check("https://:80/m.gguf", Err(false));
        check("https://example.com", Err(false));
        check("http://example.com/m.gguf", Err(true));
        check("file:///models/m.gguf", Ok("file:/models/m.gguf"));
        check("file:/models/m.gguf", Ok("file:/models/m.gguf"));
        check("file:models/m.gguf", Err(false));
        check("file:/models//m.gguf", Err(false));
        check("s3://bucket/m.gguf", Err(false));
        check("", Err(false));
    }

    #[test]
    fn default_ids() {
        assert_eq!(
            ModelRef::parse("hf:o/r/SmolLM2-135M-Instruct.Q4_1.gguf")
                .unwrap()
                .default_id(),
            "smollm2-135m-instruct.q4_1"
        );
        assert_eq!(
            ModelRef::parse("file:/a/My Model.gguf")
                .unwrap()
                .default_id(),
            "my-model"
        );
    }
}
