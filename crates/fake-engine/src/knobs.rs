//! Test-only: fault and load knobs of fake-engine, read once from the environment at startup.

use std::path::PathBuf;
use std::time::Duration;

/// The knobs (see the crate docs in `main.rs` for what each one does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// `FAKE_LOAD_MS` (default 0): how long everything answers 503 "Loading model".
    pub load: Duration,
    /// `FAKE_TOKENS` (default 16): tokens per request before an "eos" stop.
    pub tokens: u64,
    /// `FAKE_TOKEN_DELAY_MS` (default 5): wait before each token.
    pub token_delay: Duration,
    /// `FAKE_CRASH_AFTER_TOKENS` (unset = never): exit(3) once a request has sent this many tokens.
    pub crash_after_tokens: Option<u64>,
    /// `FAKE_FAIL_STATUS` (unset = never): every `/completion` answers this HTTP status.
    pub fail_status: Option<u16>,
    /// `FAKE_HOLD_FILE` (unset = never): while this file exists, no request sends a token after its
    /// first. Lets a test hold tasks running (and release them) by state instead of by a delay.
    pub hold_file: Option<PathBuf>,
    /// `FAKE_TOKEN_STAMP` (default 0): 1 = each token's text carries the wall-clock time it was
    /// produced, `tok<k>@<µs since the Unix epoch> `, so a benchmark can measure the latency the
    /// relay adds to each token (`bench relay`).
    pub token_stamp: bool,
    /// `FAKE_HOLD_UNTIL_SIGUSR1` (default 0): 1 = no request sends a token after its first until
    /// the process receives SIGUSR1 (once; from then on nothing is held). A benchmark opens
    /// thousands of streams first and then releases them all at once, without polling a file.
    pub hold_until_sigusr1: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            load: Duration::ZERO,
            tokens: 16,
            token_delay: Duration::from_millis(5),
            crash_after_tokens: None,
            fail_status: None,
            hold_file: None,
            token_stamp: false,
            hold_until_sigusr1: false,
        }
    }
}

impl Knobs {
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds the knobs from a variable lookup; empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |name: &str| -> Result<Option<u64>, String> {
            match get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
            {
                None => Ok(None),
                Some(v) => v
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| format!("{name}={v:?} is not a non-negative integer")),
            }
        };
        let d = Self::default();
        let fail_status = match var("FAKE_FAIL_STATUS")? {
            None => None,
            Some(s) if (400..=599).contains(&s) => Some(s as u16),
            Some(s) => {
                return Err(format!(
                    "FAKE_FAIL_STATUS={s} must be an HTTP error status (400..=599)"
                ))
            }
        };
        let token_stamp = match var("FAKE_TOKEN_STAMP")? {
            None | Some(0) => false,
            Some(1) => true,
            Some(v) => return Err(format!("FAKE_TOKEN_STAMP={v} must be 0 or 1")),
        };
        let hold_until_sigusr1 = match var("FAKE_HOLD_UNTIL_SIGUSR1")? {
            None | Some(0) => false,
            Some(1) => true,
            Some(v) => return Err(format!("FAKE_HOLD_UNTIL_SIGUSR1={v} must be 0 or 1")),
        };
        Ok(Self {
            token_stamp,
            hold_until_sigusr1,
            load: var("FAKE_LOAD_MS")?.map_or(d.load, Duration::from_millis),
            tokens: var("FAKE_TOKENS")?.unwrap_or(d.tokens),
            token_delay: var("FAKE_TOKEN_DELAY_MS")?.map_or(d.token_delay, Duration::from_millis),
            crash_after_tokens: var("FAKE_CRASH_AFTER_TOKENS")?,
            fail_status,
            hold_file: get("FAKE_HOLD_FILE")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn knobs(vars: &[(&str, &str)]) -> Result<Knobs, String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Knobs::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(knobs(&[]).unwrap(), Knobs::default());
        let k = knobs(&[
            ("FAKE_LOAD_MS", "250"),
            ("FAKE_TOKENS", "3"),
            ("FAKE_TOKEN_DELAY_MS", "0"),
            ("FAKE_CRASH_AFTER_TOKENS", "2"),
            ("FAKE_FAIL_STATUS", "503"),
            ("FAKE_HOLD_FILE", "/tmp/hold"),
            ("FAKE_TOKEN_STAMP", "1"),
            ("FAKE_HOLD_UNTIL_SIGUSR1", "1"),
        ])
        .unwrap();
        assert_eq!(k.load, Duration::from_millis(250));
        assert_eq!(k.tokens, 3);
        assert_eq!(k.token_delay, Duration::ZERO);
        assert_eq!(k.crash_after_tokens, Some(2));
        assert_eq!(k.fail_status, Some(503));
        assert_eq!(k.hold_file, Some(PathBuf::from("/tmp/hold")));
        assert!(k.token_stamp);
        assert!(k.hold_until_sigusr1);
        assert!(knobs(&[("FAKE_HOLD_UNTIL_SIGUSR1", "2")]).is_err());
        assert_eq!(
            knobs(&[("FAKE_CRASH_AFTER_TOKENS", " ")])
                .unwrap()
                .crash_after_tokens,
            None
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(knobs(&[("FAKE_TOKENS", "many")]).is_err());
        assert!(knobs(&[("FAKE_FAIL_STATUS", "200")]).is_err());
        assert!(knobs(&[("FAKE_TOKEN_DELAY_MS", "-1")]).is_err());
        assert!(knobs(&[("FAKE_TOKEN_STAMP", "2")]).is_err());
    }
}
