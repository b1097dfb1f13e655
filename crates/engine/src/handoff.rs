//! Handoff files: how an engine started outside pool-managerd (e.g. by `llorch engine start`) is
//! offered for adoption. One JSON file per pool, written atomically, naming the engine's URL, its
//! process (pid and start time, so a recycled pid is never mistaken for it), its model and shape,
//! and where its API key is (a 0600 file; the key itself never goes into the handoff file).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffModel {
    pub id: String,
    #[serde(rename = "ref")]
    pub model_ref: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffFile {
    pub pool_id: String,
    pub url: String,
    pub pid: u32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    pub model: HandoffModel,
    pub slots: u32,
    pub ctx_per_slot: u64,
    pub engine_version: String,
    pub api_key_file: PathBuf,
}

impl HandoffFile {
    /// Writes `<dir>/<pool_id>.json` atomically (temporary file, fsync, rename).
    pub fn write_atomic(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let dest = dir.join(format!("{}.json", self.pool_id));
        let tmp = dir.join(format!(".{}.json.tmp{}", self.pool_id, std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        Ok(dest)
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("not a handoff file: {e}"))
    }

    /// True when the named process runs and is the one that wrote the file.
    pub fn process_matches(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// The start time of a live process in clock ticks since boot, or `None` when it is gone (zombies
/// count as gone).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // Field 22 of stat is the 20th after the command name (state is field 3).
    fields.get(19)?.parse().ok()
}

/// Handoff files in `dir` (`*.json`), each with its parse result.
pub fn scan(dir: &Path) -> Vec<(PathBuf, Result<HandoffFile, String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|p| {
            let r = HandoffFile::read(&p);
            (p, r)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let h = HandoffFile {
            pool_id: "p0".into(),
            url: "http://127.0.0.1:1".into(),
            pid: me,
            start_time: process_start_time(me).unwrap(),
            model: HandoffModel {
                id: "m".into(),
                model_ref: "file:/m.gguf".into(),
            },
            slots: 1,
            ctx_per_slot: 512,
            engine_version: "b1-x".into(),
            api_key_file: "/k".into(),
        };
        let path = h.write_atomic(dir.path()).unwrap();
        assert_eq!(HandoffFile::read(&path).unwrap(), h);
        assert!(h.process_matches());
        assert!(
            !HandoffFile {
                start_time: h.start_time + 1,
                ..h.clone()
            }
            .process_matches(),
            "a recycled pid does not match"
        );
        assert!(!HandoffFile {
            pid: 0x7fff_fff0,
            ..h.clone()
        }
        .process_matches());
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let scanned = scan(dir.path());
        assert_eq!(scanned.len(), 2);
        assert!(scanned.iter().any(|(_, r)| r.is_err()));
    }
}
