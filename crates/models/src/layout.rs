//! Where things are (API.md §9.2): the cache path of a ref, its sidecar, partial and lock files,
//! the URL it is fetched from, and the token fingerprint used in logs.

use std::path::{Path, PathBuf};

use api::model_ref::ModelRef;
use sha2::{Digest, Sha256};

/// Suffix of the sidecar next to a cached copy.
pub const SIDECAR_SUFFIX: &str = ".llorch.json";
/// Suffix of the temporary download next to the destination.
pub const PART_SUFFIX: &str = ".part";
/// Suffix of the per-artifact lock file next to the destination.
pub const LOCK_SUFFIX: &str = ".lock";

/// `<dir>/hf/<org>/<repo>/<rev or "main">/<path>`, `<dir>/https/<16 hex of sha256(url)>/<last
/// segment>`, or the `file:` path itself.
pub fn path_for(models_dir: &Path, r: &ModelRef) -> PathBuf {
    match r {
        ModelRef::Hf {
            org,
            repo,
            rev,
            path,
        } => {
            let mut p = models_dir
                .join("hf")
                .join(org)
                .join(repo)
                .join(rev.as_deref().unwrap_or("main"));
            for seg in path.split('/') {
                p.push(seg);
            }
            p
        }
        ModelRef::Https { path, .. } => {
            let url = r.to_string();
            let key = hex::encode(Sha256::digest(url.as_bytes()));
            let path_only = path.split(['?', '#']).next().unwrap_or(path);
            let last = path_only
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("model");
            models_dir.join("https").join(&key[..16]).join(last)
        }
        ModelRef::File { path } => PathBuf::from(path),
    }
}

/// The URL an `hf:` or `https://` ref is fetched from; `None` for `file:`.
pub fn source_url(hf_endpoint: &str, r: &ModelRef) -> Option<String> {
    match r {
        ModelRef::Hf {
            org,
            repo,
            rev,
            path,
        } => Some(format!(
            "{}/{org}/{repo}/resolve/{}/{path}",
            hf_endpoint.trim_end_matches('/'),
            rev.as_deref().unwrap_or("main")
        )),
        ModelRef::Https { .. } => Some(r.to_string()),
        ModelRef::File { .. } => None,
    }
}

pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn sidecar_path(dest: &Path) -> PathBuf {
    with_suffix(dest, SIDECAR_SUFFIX)
}

pub fn part_path(dest: &Path) -> PathBuf {
    with_suffix(dest, PART_SUFFIX)
}

pub fn lock_path(dest: &Path) -> PathBuf {
    with_suffix(dest, LOCK_SUFFIX)
}

/// `token:<6 hex of sha256(token)>`, the only form in which a token may appear in logs.
pub fn token_fingerprint(token: &str) -> String {
    format!(
        "token:{}",
        &hex::encode(Sha256::digest(token.as_bytes()))[..6]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ModelRef {
        ModelRef::parse(s).expect("valid ref")
    }

    #[test]
    fn layout() {
        let d = Path::new("/m");
        assert_eq!(
            path_for(d, &r("hf:org/repo/sub/m.gguf")),
            Path::new("/m/hf/org/repo/main/sub/m.gguf")
        );
        assert_eq!(
            path_for(d, &r("hf:org/repo@v1/m.gguf")),
            Path::new("/m/hf/org/repo/v1/m.gguf")
        );
        let url = "https://example.com:8443/a/m.gguf?x=1";
        let key = hex::encode(Sha256::digest(url.as_bytes()));
        assert_eq!(
            path_for(d, &r(url)),
            Path::new("/m/https").join(&key[..16]).join("m.gguf")
        );
        assert_eq!(path_for(d, &r("file:///x/y.gguf")), Path::new("/x/y.gguf"));
        assert_eq!(
            sidecar_path(Path::new("/m/a.gguf")),
            Path::new("/m/a.gguf.llorch.json")
        );
    }

    #[test]
    fn urls_and_fingerprints() {
        assert_eq!(
            source_url("http://h:1/", &r("hf:o/r@abc/d/m.gguf")).as_deref(),
            Some("http://h:1/o/r/resolve/abc/d/m.gguf")
        );
        assert_eq!(
            source_url("https://huggingface.co", &r("hf:o/r/m.gguf")).as_deref(),
            Some("https://huggingface.co/o/r/resolve/main/m.gguf")
        );
        assert_eq!(
            source_url("x", &r("https://h/m.gguf")).as_deref(),
            Some("https://h/m.gguf")
        );
        assert_eq!(source_url("x", &r("file:/m.gguf")), None);
        let fp = token_fingerprint("hf_secret");
        assert!(fp.starts_with("token:") && fp.len() == 12 && !fp.contains("secret"));
    }
}
