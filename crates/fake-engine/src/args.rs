//! Test-only: command-line parsing for fake-engine. Accepts the flags pool-managerd passes to
//! `llama-server` (and skips any other flag, with its value), so the fake can be launched exactly
//! like the real engine.

/// What the command line asked for. Only the fields the fake uses are kept; everything else
/// (`-t`, `--n-gpu-layers`, `--no-webui`, unknown flags) is accepted and recorded in `ignored`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `-m` / `--model`.
    pub model: String,
    /// `-a` / `--alias`; defaults to the model path, as llama-server does.
    pub alias: Option<String>,
    /// `-c` / `--ctx-size`: total context over all slots (0 = "from the model", here 4096/slot).
    pub ctx_total: u64,
    /// `--parallel` / `-np`: number of slots.
    pub parallel: u32,
    /// `--metrics`: enables `GET /metrics`.
    pub metrics: bool,
    /// `--api-key`: may be given several times, or comma-separated.
    pub api_keys: Vec<String>,
    /// `--api-key-file`: read (one key per line, trimmed) at startup.
    pub api_key_file: Option<String>,
    pub host: String,
    /// `--port`; 0 lets the OS pick.
    pub port: u16,
    /// `--version`: print the version banner to stderr and exit 0.
    pub version: bool,
    /// Flags accepted but without effect (for the startup log).
    pub ignored: Vec<String>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            model: String::new(),
            alias: None,
            ctx_total: 0,
            parallel: 1,
            metrics: false,
            api_keys: Vec::new(),
            api_key_file: None,
            host: "127.0.0.1".into(),
            port: 8080,
            version: false,
            ignored: Vec::new(),
        }
    }
}

/// Context per slot when `-c` is 0 or absent.
pub const DEFAULT_CTX_PER_SLOT: u64 = 4096;

impl Args {
    pub fn slots(&self) -> usize {
        self.parallel.max(1) as usize
    }

    /// `n_ctx` of each slot: `-c / --parallel`.
    pub fn ctx_per_slot(&self) -> u64 {
        if self.ctx_total == 0 {
            DEFAULT_CTX_PER_SLOT
        } else {
            self.ctx_total / self.slots() as u64
        }
    }

    pub fn model_alias(&self) -> String {
        self.alias.clone().unwrap_or_else(|| self.model.clone())
    }
}

/// Flags that take a value but have no effect in the fake.
const IGNORED_WITH_VALUE: &[&str] = &[
    "-t",
    "--threads",
    "-ngl",
    "--n-gpu-layers",
    "--gpu-layers",
    "-tb",
    "--threads-batch",
    "-b",
    "--batch-size",
    "-ub",
    "--ubatch-size",
];
/// Flags without a value that have no effect in the fake.
const IGNORED_SWITCHES: &[&str] = &[
    "--no-webui",
    "--cont-batching",
    "-cb",
    "--no-cont-batching",
    "-fa",
    "--flash-attn",
    "--slots",
    "--no-slots",
    "--jinja",
    "--verbose",
    "-v",
    "--log-disable",
];

/// Does `s` look like the value of the preceding unknown flag (rather than the next flag)?
fn looks_like_value(s: &str) -> bool {
    !s.starts_with('-') || s.parse::<f64>().is_ok()
}

/// Parses argv (without the program name). Errors only for a known flag whose value is missing or
/// malformed; unknown flags are skipped together with a following value.
pub fn parse<I, S>(argv: I) -> Result<Args, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let raw = &argv[i];
        i += 1;
        // `--flag=value` form.
        let (flag, inline) = match raw.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (raw.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            let v = argv
                .get(i)
                .cloned()
                .ok_or_else(|| format!("expected value for argument {name}"))?;
            i += 1;
            Ok(v)
        };
        match flag.as_str() {
            "--version" => a.version = true,
            "-m" | "--model" => a.model = value(&flag)?,
            "-a" | "--alias" => a.alias = Some(value(&flag)?),
            "-c" | "--ctx-size" => a.ctx_total = num(&flag, &value(&flag)?)?,
            "-np" | "--parallel" => {
                let n: i64 = num(&flag, &value(&flag)?)?;
                // llama-server treats -1 as "auto"; the fake picks 1.
                a.parallel = if n <= 0 {
                    1
                } else {
                    u32::try_from(n).map_err(|_| format!("{flag}: {n} is too large"))?
                };
            }
            "--metrics" => a.metrics = true,
            "--api-key" => {
                let v = value(&flag)?;
                a.api_keys.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(String::from),
                );
            }
            "--api-key-file" => a.api_key_file = Some(value(&flag)?),
            "--host" => a.host = value(&flag)?,
            "--port" => a.port = num(&flag, &value(&flag)?)?,
            f if IGNORED_WITH_VALUE.contains(&f) => {
                let v = value(f)?;
                a.ignored.push(format!("{f} {v}"));
            }
            f if IGNORED_SWITCHES.contains(&f) => a.ignored.push(f.to_string()),
            f if f.starts_with('-') => {
                // Unknown flag: skip it, and its value when the next word looks like one.
                if inline.is_none() && argv.get(i).is_some_and(|v| looks_like_value(v)) {
                    a.ignored.push(format!("{f} {}", argv[i]));
                    i += 1;
                } else {
                    a.ignored.push(raw.clone());
                }
            }
            other => a.ignored.push(other.to_string()),
        }
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("invalid value for {flag}: {v:?}"))
}

/// Reads the keys of `--api-key-file`: one per non-empty line, trimmed.
pub fn read_key_file(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --api-key-file {path}: {e}"))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from)
        .collect();
    if keys.is_empty() {
        return Err(format!("--api-key-file {path} contains no key"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pool_managerd_command_line() {
        let a = parse([
            "-m",
            "/models/x.gguf",
            "-a",
            "qwen",
            "-c",
            "8192",
            "--parallel",
            "4",
            "--metrics",
            "--api-key-file",
            "/tmp/k",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--n-gpu-layers",
            "99",
            "--no-webui",
            "-t",
            "8",
        ])
        .unwrap();
        assert_eq!(a.model, "/models/x.gguf");
        assert_eq!(a.model_alias(), "qwen");
        assert_eq!(a.ctx_total, 8192);
        assert_eq!(a.slots(), 4);
        assert_eq!(a.ctx_per_slot(), 2048);
        assert!(a.metrics);
        assert_eq!(a.api_key_file.as_deref(), Some("/tmp/k"));
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 0);
        assert!(!a.version);
        assert_eq!(a.ignored, vec!["--n-gpu-layers 99", "--no-webui", "-t 8"]);
    }

    #[test]
    fn short_and_inline_forms() {
        let a = parse([
            "-np",
            "3",
            "--port=9000",
            "--api-key",
            "k1,k2",
            "--api-key",
            "k3",
            "--ctx-size=300",
        ])
        .unwrap();
        assert_eq!(a.slots(), 3);
        assert_eq!(a.port, 9000);
        assert_eq!(a.api_keys, vec!["k1", "k2", "k3"]);
        assert_eq!(a.ctx_per_slot(), 100);
        assert_eq!(a.model_alias(), "");
    }

    #[test]
    fn unknown_flags_are_skipped_with_their_values() {
        let a = parse([
            "--seed",
            "-1",
            "--foo",
            "bar",
            "--switch",
            "--parallel",
            "2",
            "--temp=0.5",
            "stray",
            "--port",
            "1",
        ])
        .unwrap();
        assert_eq!(a.slots(), 2);
        assert_eq!(a.port, 1);
        assert_eq!(
            a.ignored,
            vec!["--seed -1", "--foo bar", "--switch", "--temp=0.5", "stray"]
        );
    }

    #[test]
    fn version_and_defaults() {
        let a = parse(["--version"]).unwrap();
        assert!(a.version);
        let d = parse(Vec::<String>::new()).unwrap();
        assert_eq!(d.slots(), 1);
        assert_eq!(d.ctx_per_slot(), DEFAULT_CTX_PER_SLOT);
        assert_eq!(d.port, 8080);
        assert!(d.api_keys.is_empty());
        assert_eq!(parse(["-np", "-1"]).unwrap().slots(), 1);
    }

    #[test]
    fn bad_values_of_known_flags_are_errors() {
        assert!(parse(["--port"]).unwrap_err().contains("expected value"));
        assert!(parse(["--port", "http"])
            .unwrap_err()
            .contains("invalid value"));
        assert!(parse(["-c", "lots"]).is_err());
    }

    #[test]
    fn key_file_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("fake-engine-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        std::fs::write(&p, "  secret \n\n").unwrap();
        assert_eq!(read_key_file(p.to_str().unwrap()).unwrap(), vec!["secret"]);
        std::fs::write(&p, "\n").unwrap();
        assert!(read_key_file(p.to_str().unwrap()).is_err());
        assert!(read_key_file(dir.join("missing").to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
