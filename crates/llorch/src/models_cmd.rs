//! `llorch models …`: the model catalog (API.md §9.3) — register, list, inspect, verify, retire,
//! activate, remove — and `fetch`, which downloads a model into this machine's model cache.
//! Human output by default, `--json` for scripts; exit codes as in API.md §18.

use api::catalog::{
    AvailabilityResponse, ModelAvailability, ModelRecord, ModelState, RegisterModel,
};
use api::{ErrorCode, ErrorEnvelope};
use clap::Subcommand;

use crate::ops_cmd::Conn;
use crate::progress::human_bytes;

#[derive(Subcommand)]
pub enum ModelsCmd {
    /// Table of catalog entries with the number of Ready pools serving each (the default).
    List,
    /// Register a model by ref: hf:ORG/REPO[@REV]/PATH.gguf, https://HOST/PATH or file:/ABS/PATH.
    Add {
        /// The ModelRef.
        model_ref: String,
        /// Catalog id (default: the file name without .gguf, lowercased).
        #[arg(long)]
        id: Option<String>,
        /// Expected digest, sha256:<64 hex>; every fetch is checked against it.
        #[arg(long)]
        digest: Option<String>,
    },
    /// Show one entry with its GGUF metadata and where it is cached and served.
    Get { id: String },
    /// Remove an entry; nodes evict the copies they downloaded (refused while a pool serves it).
    Rm { id: String },
    /// Re-hash every node's copy; copies that fail are removed.
    Verify { id: String },
    /// Refuse new tasks for the model (running tasks finish).
    Retire { id: String },
    /// Accept tasks for a retired model again.
    Activate { id: String },
    /// Download a model into this machine's model cache (the layout pool-managerd uses).
    Fetch {
        /// The ModelRef.
        model_ref: String,
        /// Expected digest, sha256:<64 hex>; a mismatch leaves no file behind.
        #[arg(long)]
        digest: Option<String>,
        /// Model cache (default: ~/.cache/llama-orch/models).
        #[arg(long)]
        models_dir: Option<std::path::PathBuf>,
    },
}

pub async fn run(cmd: Option<ModelsCmd>, c: Conn) -> anyhow::Result<u8> {
    let client = client::Client::new(&c.url, c.token.clone())?;
    let cmd = cmd.unwrap_or(ModelsCmd::List);
    if let ModelsCmd::Get { id }
    | ModelsCmd::Rm { id }
    | ModelsCmd::Verify { id }
    | ModelsCmd::Retire { id }
    | ModelsCmd::Activate { id } = &cmd
    {
        if !api::ids::valid_name(id) {
            eprintln!("llorch: {id:?} is not a model id (^[a-z0-9][a-z0-9._-]{{0,63}}$)");
            return Ok(2);
        }
    }
    match cmd {
        ModelsCmd::List => list(&client, c.json).await,
        ModelsCmd::Add {
            model_ref,
            id,
            digest,
        } => {
            let id = match id.as_deref().map(str::parse::<api::ModelId>).transpose() {
                Ok(id) => id,
                Err(_) => {
                    eprintln!(
                        "llorch: {:?} is not a model id (^[a-z0-9][a-z0-9._-]{{0,63}}$)",
                        id.unwrap_or_default()
                    );
                    return Ok(2);
                }
            };
            let body = RegisterModel {
                id,
                model_ref,
                digest,
            };
            match client.register_model(&body).await {
                Ok((m, created)) => {
                    // The outcome goes to stderr in both modes: with --json, stdout is the body.
                    eprintln!(
                        "{} {} ({})",
                        if created {
                            "created"
                        } else {
                            "already registered"
                        },
                        m.id,
                        m.model_ref
                    );
                    if c.json {
                        println!("{}", serde_json::to_string_pretty(&m)?);
                    }
                    Ok(0)
                }
                Err(e) => Ok(refusal(&e)),
            }
        }
        ModelsCmd::Get { id } => match client.model(&id).await {
            Ok(m) => {
                // Where it is served: cheap, and optional (an older server may not have the route).
                let avail = if c.json {
                    None
                } else {
                    client.availability().await.ok()
                };
                let avail = avail.and_then(|a| a.models.into_iter().find(|x| x.id == m.id));
                print_record(&m, avail.as_ref(), c.json)?;
                Ok(0)
            }
            Err(e) => Ok(refusal(&e)),
        },
        ModelsCmd::Rm { id } => match client.delete_model(&id).await {
            Ok(()) => {
                eprintln!("removed {id}");
                Ok(0)
            }
            Err(e) => Ok(refusal(&e)),
        },
        ModelsCmd::Verify { id } => match client.verify_model(&id).await {
            Ok(m) => {
                if c.json {
                    println!("{}", serde_json::to_string_pretty(&m)?);
                } else if m.locations.is_empty() {
                    eprintln!("{id}: no node holds a copy; nothing to verify");
                } else {
                    eprintln!("{id}: verification started on {}", join(&m.locations, ", "));
                }
                Ok(0)
            }
            Err(e) => Ok(refusal(&e)),
        },
        ModelsCmd::Retire { id } => set_state(&client, &id, ModelState::Retired, c.json).await,
        ModelsCmd::Activate { id } => set_state(&client, &id, ModelState::Active, c.json).await,
        ModelsCmd::Fetch {
            model_ref,
            digest,
            models_dir,
        } => fetch(&model_ref, digest.as_deref(), models_dir, c.json).await,
    }
}

async fn list(client: &client::Client, json: bool) -> anyhow::Result<u8> {
    let models = match client.models().await {
        Ok(m) => m,
        Err(e) => return Ok(refusal(&e)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(0);
    }
    let avail = client.availability().await.ok();
    print!("{}", render_list(&models.models, avail.as_ref()));
    Ok(0)
}

async fn set_state(
    client: &client::Client,
    id: &str,
    state: ModelState,
    json: bool,
) -> anyhow::Result<u8> {
    match client.set_model_state(id, state).await {
        Ok(m) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                eprintln!("model {} is {}", m.id, m.state.as_str());
            }
            Ok(0)
        }
        Err(e) => Ok(refusal(&e)),
    }
}

fn print_record(
    m: &ModelRecord,
    avail: Option<&ModelAvailability>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        print!("{}", render_record(m, avail));
    }
    Ok(())
}

/// Prints the refusal and returns its exit code.
fn refusal(e: &client::Error) -> u8 {
    eprintln!("llorch: {e}");
    exit_code(e)
}

/// API.md §18: 2 usage or `INVALID_PARAMS`, 3 authentication (or a role that does not allow it), 4 a retriable refusal (429/503),
/// 1 any other refusal or error (including an unreachable server).
pub fn exit_code(e: &client::Error) -> u8 {
    e.envelope().map_or(1, envelope_exit_code)
}

pub fn envelope_exit_code(env: &ErrorEnvelope) -> u8 {
    match env.code {
        ErrorCode::InvalidParams => 2,
        ErrorCode::MissingToken | ErrorCode::BadToken | ErrorCode::Forbidden => 3,
        _ if env.retriable && matches!(env.http_status(), 429 | 503) => 4,
        _ => 1,
    }
}

/// `models fetch`: downloads `model_ref` into this machine's model cache with a progress bar, then
/// prints where it is. Exit codes: 2 for a malformed ref or digest, 1 for a digest mismatch or any
/// other failure, 4 for network trouble worth retrying.
async fn fetch(
    model_ref: &str,
    digest: Option<&str>,
    models_dir: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<u8> {
    let r = match api::model_ref::ModelRef::parse(model_ref) {
        Ok(r) => r,
        Err(api::model_ref::ModelRefError::Untrusted(why)) => {
            eprintln!("llorch: {why}");
            return Ok(1);
        }
        Err(e) => {
            eprintln!("llorch: {e}");
            return Ok(2);
        }
    };
    if let Some(Err(e)) = digest.map(api::catalog::parse_digest) {
        eprintln!("llorch: --digest: {e}");
        return Ok(2);
    }
    let dir = models_dir.unwrap_or_else(default_models_dir);
    let cache = match models::ModelCache::new(models::CacheConfig::from_env(dir)) {
        Ok(c) => c,
        Err(e) => return Ok(fetch_failed(&e)),
    };
    let bar = crate::progress::ByteProgress::new("fetch");
    let result = cache
        .fetch(&r, digest, &|p: models::Progress| {
            bar.update(p.bytes_done, p.bytes_total)
        })
        .await;
    bar.finish();
    let f = match result {
        Ok(f) => f,
        Err(e) => return Ok(fetch_failed(&e)),
    };
    if json {
        let body = FetchedJson {
            path: &f.path,
            digest: &f.digest,
            size_bytes: f.size_bytes,
            metadata: &f.metadata,
            downloaded_bytes: f.downloaded_bytes,
        };
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", render_fetched(&f));
    }
    Ok(0)
}

/// `models fetch --json`, in this field order.
#[derive(serde::Serialize)]
struct FetchedJson<'a> {
    path: &'a std::path::Path,
    digest: &'a str,
    size_bytes: u64,
    metadata: &'a api::catalog::GgufInfo,
    downloaded_bytes: u64,
}

fn fetch_failed(e: &models::FetchError) -> u8 {
    eprintln!("llorch: {e}");
    envelope_exit_code(&e.envelope())
}

/// pool-managerd's default `cache.models_dir`: `~/.cache/llama-orch/models`.
fn default_models_dir() -> std::path::PathBuf {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    home.join(".cache").join("llama-orch").join("models")
}

/// What `models fetch` prints: path, digest, size (and what was downloaded now), GGUF facts.
pub fn render_fetched(f: &models::Fetched) -> String {
    let g = &f.metadata;
    let mut facts: Vec<String> = [
        g.architecture.clone(),
        g.parameter_count
            .map(|p| format!("{} parameters", human_count(p))),
        g.quantization.clone(),
        g.context_length.map(|c| format!("ctx {c}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if g.chat_template {
        facts.push("chat template".into());
    }
    let downloaded = if f.downloaded_bytes == 0 {
        "nothing downloaded".to_string()
    } else {
        format!("{} downloaded", human_bytes(f.downloaded_bytes))
    };
    let mut out = format!(
        "path    {}\ndigest  {}\nsize    {} ({} bytes; {downloaded})\n",
        f.path.display(),
        f.digest,
        human_bytes(f.size_bytes),
        f.size_bytes
    );
    if !facts.is_empty() {
        out.push_str(&format!("gguf    {}\n", facts.join(", ")));
    }
    out
}

// ---- rendering ---------------------------------------------------------------------------------

/// `sha256:` and the first 12 hex digits, or `-`.
/// Joins ids (or anything printable) with `sep`.
fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(sep)
}

pub fn short_digest(d: Option<&str>) -> String {
    match d {
        Some(d) => {
            let hex = d.strip_prefix("sha256:").unwrap_or(d);
            hex.chars().take(12).collect()
        }
        None => "-".into(),
    }
}

/// `135M`, `1.7B`, `70B`: a parameter count.
pub fn human_count(n: u64) -> String {
    let (v, unit) = match n {
        n if n >= 1_000_000_000_000 => (n as f64 / 1e12, "T"),
        n if n >= 1_000_000_000 => (n as f64 / 1e9, "B"),
        n if n >= 1_000_000 => (n as f64 / 1e6, "M"),
        n if n >= 1_000 => (n as f64 / 1e3, "K"),
        n => return n.to_string(),
    };
    if v >= 100.0 || v.fract() < 0.05 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// The `models list` table. `SERVING` counts Ready pools (`-` when availability is unknown).
pub fn render_list(models: &[ModelRecord], avail: Option<&AvailabilityResponse>) -> String {
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let serving = match avail {
                Some(a) => a
                    .models
                    .iter()
                    .find(|x| x.id == m.id)
                    .map_or(0, |x| {
                        x.serving
                            .iter()
                            .filter(|p| p.state == api::node::PoolState::Ready)
                            .count()
                    })
                    .to_string(),
                None => "-".into(),
            };
            vec![
                m.id.to_string(),
                m.state.as_str().into(),
                m.size_bytes.map_or_else(|| "-".into(), human_bytes),
                short_digest(m.digest.as_deref()),
                if m.locations.is_empty() {
                    "-".into()
                } else {
                    join(&m.locations, ",")
                },
                serving,
                m.model_ref.clone(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "STATE",
            "SIZE",
            "DIGEST",
            "LOCATIONS",
            "SERVING",
            "REF",
        ],
        &rows,
    )
}

/// The `models get` view: every record field, the GGUF metadata and, when known, availability.
pub fn render_record(m: &ModelRecord, avail: Option<&ModelAvailability>) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", m.id.to_string()),
        ("ref", m.model_ref.clone()),
        ("state", m.state.as_str().into()),
        (
            "digest",
            m.digest
                .clone()
                .unwrap_or_else(|| "- (recorded at the first verified fetch or load)".into()),
        ),
        (
            "size",
            m.size_bytes
                .map_or_else(|| "-".into(), |b| format!("{} ({b} bytes)", human_bytes(b))),
        ),
        (
            "verified",
            m.last_verified_ms.map_or_else(
                || "never".into(),
                |ms| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                    )
                    .to_string()
                },
            ),
        ),
        (
            "locations",
            if m.locations.is_empty() {
                "-".into()
            } else {
                join(&m.locations, ", ")
            },
        ),
    ];
    if let Some(a) = avail {
        let serving: Vec<String> = a
            .serving
            .iter()
            .map(|p| {
                format!(
                    "{}/{} {} ({} free)",
                    p.node_id,
                    p.pool_id,
                    p.state.as_str(),
                    p.slots_free
                )
            })
            .collect();
        rows.push((
            "serving",
            if serving.is_empty() {
                "-".into()
            } else {
                serving.join(", ")
            },
        ));
    }
    match &m.metadata {
        Some(g) => {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            rows.push(("architecture", opt(g.architecture.clone())));
            rows.push((
                "context",
                opt(g.context_length.map(|c| format!("{c} tokens (trained)"))),
            ));
            rows.push((
                "parameters",
                opt(g
                    .parameter_count
                    .map(|p| format!("{} ({p})", human_count(p)))),
            ));
            rows.push(("quantization", opt(g.quantization.clone())));
            rows.push((
                "chat template",
                if g.chat_template { "yes" } else { "no" }.into(),
            ));
        }
        None => rows.push((
            "metadata",
            "- (read from the GGUF header at the first verified fetch or load)".into(),
        )),
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use api::catalog::{GgufInfo, ServingPool};
    use api::node::PoolState;

    use super::*;

    fn record(id: &str) -> ModelRecord {
        ModelRecord {
            id: id.parse().unwrap(),
            model_ref: format!("hf:org/repo/{id}.gguf"),
            digest: Some(format!("sha256:{}", "ab12".repeat(16))),
            size_bytes: Some(105_000_000),
            state: ModelState::Active,
            last_verified_ms: Some(1_700_000_000_000),
            locations: vec!["alpha".parse().unwrap(), "beta".parse().unwrap()],
            metadata: None,
        }
    }

    fn api_error(code: ErrorCode, retriable: bool) -> client::Error {
        let envelope = ErrorEnvelope::new(code, "x").with_retriable(retriable);
        client::Error::Api {
            status: envelope.http_status(),
            envelope,
            headers: Box::default(),
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&api_error(ErrorCode::InvalidParams, false)), 2);
        assert_eq!(
            exit_code(&api_error(ErrorCode::UntrustedArtifact, false)),
            1
        );
        assert_eq!(exit_code(&api_error(ErrorCode::Conflict, false)), 1);
        assert_eq!(exit_code(&api_error(ErrorCode::NotFound, false)), 1);
        assert_eq!(exit_code(&api_error(ErrorCode::MissingToken, false)), 3);
        assert_eq!(exit_code(&api_error(ErrorCode::BadToken, false)), 3);
        assert_eq!(exit_code(&api_error(ErrorCode::Forbidden, false)), 3);
        assert_eq!(exit_code(&api_error(ErrorCode::TenantRateLimited, true)), 4);
        assert_eq!(exit_code(&api_error(ErrorCode::TenantConcurrency, true)), 4);
        assert_eq!(exit_code(&api_error(ErrorCode::AdmissionReject, true)), 4);
        assert_eq!(exit_code(&api_error(ErrorCode::ModelNotAvailable, true)), 4);
        assert_eq!(
            exit_code(&api_error(ErrorCode::ModelNotAvailable, false)),
            1
        );
        assert_eq!(exit_code(&api_error(ErrorCode::Internal, false)), 1);
        assert_eq!(exit_code(&client::Error::Transport("refused".into())), 1);
        assert_eq!(exit_code(&client::Error::Protocol("?".into())), 1);
    }

    #[test]
    fn fetch_exit_codes() {
        use models::FetchError;
        let code = |e: FetchError| envelope_exit_code(&e.envelope());
        assert_eq!(
            code(FetchError::DigestMismatch {
                expected: "sha256:aa".into(),
                actual: "sha256:bb".into()
            }),
            1
        );
        assert_eq!(
            code(FetchError::Network {
                message: "reset".into(),
                retriable: true
            }),
            4
        );
        assert_eq!(
            code(FetchError::Network {
                message: "tls".into(),
                retriable: false
            }),
            1
        );
        assert_eq!(code(FetchError::Busy("x".into())), 4);
        assert_eq!(code(FetchError::NotFound("x".into())), 1);
        assert_eq!(code(FetchError::Unauthorized("x".into())), 1);
    }

    #[tokio::test]
    async fn fetch_refuses_bad_input_before_any_io() {
        let dir = std::env::temp_dir().join(format!("llorch-fetch-{}", std::process::id()));
        assert_eq!(
            fetch("hf:org/repo/model.bin", None, Some(dir.clone()), false)
                .await
                .ok(),
            Some(2),
            "bad ref"
        );
        assert_eq!(
            fetch("relative/path.gguf", None, Some(dir.clone()), false)
                .await
                .ok(),
            Some(2),
            "not a ref"
        );
        assert_eq!(
            fetch("http://example.com/m.gguf", None, Some(dir.clone()), false)
                .await
                .ok(),
            Some(1),
            "untrusted"
        );
        assert_eq!(
            fetch(
                "hf:org/repo/m.gguf",
                Some("md5:00"),
                Some(dir.clone()),
                false
            )
            .await
            .ok(),
            Some(2),
            "bad digest"
        );
        assert!(!dir.exists(), "nothing was created");
    }

    #[tokio::test]
    async fn fetch_of_a_missing_file_model_fails_with_1() {
        let dir = std::env::temp_dir().join(format!("llorch-fetch-missing-{}", std::process::id()));
        assert_eq!(
            fetch(
                "file:/nonexistent/llorch-test/m.gguf",
                None,
                Some(dir.clone()),
                false
            )
            .await
            .ok(),
            Some(1)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn fetched_view() {
        let mut f = models::Fetched {
            path: "/c/hf/org/repo/main/m.gguf".into(),
            digest: format!("sha256:{}", "cd".repeat(32)),
            size_bytes: 105_000_000,
            metadata: GgufInfo {
                architecture: Some("llama".into()),
                context_length: Some(8192),
                parameter_count: Some(134_515_008),
                quantization: Some("Q4_1".into()),
                chat_template: true,
            },
            downloaded_bytes: 105_000_000,
        };
        assert_eq!(
            render_fetched(&f),
            format!(
                "path    /c/hf/org/repo/main/m.gguf\ndigest  sha256:{}\nsize    100.1 MiB (105000000 bytes; 100.1 MiB downloaded)\ngguf    llama, 135M parameters, Q4_1, ctx 8192, chat template\n",
                "cd".repeat(32)
            )
        );
        f.downloaded_bytes = 0;
        f.metadata = GgufInfo::default();
        assert!(render_fetched(&f).ends_with("(105000000 bytes; nothing downloaded)\n"));
    }

    #[test]
    fn digests_and_counts() {
        assert_eq!(
            short_digest(Some(&format!("sha256:{}", "0123456789abcdef".repeat(4)))),
            "0123456789ab"
        );
        assert_eq!(short_digest(None), "-");
        assert_eq!(human_count(134_515_008), "135M");
        assert_eq!(human_count(1_711_376_384), "1.7B");
        assert_eq!(human_count(7_000_000_000), "7B");
        assert_eq!(human_count(70_553_706_496), "70.6B");
        assert_eq!(human_count(999), "999");
    }

    #[test]
    fn table_columns_align() {
        let t = render_table(
            &["A", "BB", "C"],
            &[
                vec!["long".into(), "x".into(), "last col".into()],
                vec!["s".into(), "".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A     BB  C\nlong  x   last col\ns         z\n");
    }

    #[test]
    fn list_table() {
        let mut retired = record("other");
        retired.state = ModelState::Retired;
        retired.digest = None;
        retired.size_bytes = None;
        retired.locations.clear();
        let models = [record("smollm2"), retired];
        let avail = AvailabilityResponse {
            models: vec![ModelAvailability {
                id: "smollm2".parse().unwrap(),
                state: ModelState::Active,
                cached_on: vec!["alpha".parse().unwrap()],
                serving: vec![
                    ServingPool {
                        node_id: "alpha".parse().unwrap(),
                        pool_id: "gpu0".parse().unwrap(),
                        state: PoolState::Ready,
                        slots_free: 1,
                    },
                    ServingPool {
                        node_id: "alpha".parse().unwrap(),
                        pool_id: "gpu1".parse().unwrap(),
                        state: PoolState::Starting,
                        slots_free: 0,
                    },
                    ServingPool {
                        node_id: "beta".parse().unwrap(),
                        pool_id: "cpu0".parse().unwrap(),
                        state: PoolState::Ready,
                        slots_free: 0,
                    },
                ],
            }],
        };
        let t = render_list(&models, Some(&avail));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID       STATE    SIZE       DIGEST        LOCATIONS   SERVING  REF"
        );
        assert_eq!(lines[1], "smollm2  Active   100.1 MiB  ab12ab12ab12  alpha,beta  2        hf:org/repo/smollm2.gguf");
        assert_eq!(lines[2], "other    Retired  -          -             -           0        hf:org/repo/other.gguf");
        let t = render_list(&models[..1], None);
        assert!(
            t.lines()
                .nth(1)
                .is_some_and(|l| l.contains("alpha,beta  -        hf:")),
            "{t}"
        );
    }

    #[test]
    fn record_view() {
        let mut m = record("smollm2");
        let v = render_record(&m, None);
        let expected = format!(
            "id         smollm2\nref        hf:org/repo/smollm2.gguf\nstate      Active\ndigest     sha256:{}\nsize       100.1 MiB (105000000 bytes)\n\
             verified   2023-11-14T22:13:20Z\nlocations  alpha, beta\nmetadata   - (read from the GGUF header at the first verified fetch or load)\n",
            "ab12".repeat(16)
        );
        assert_eq!(v, expected);
        m.metadata = Some(GgufInfo {
            architecture: Some("llama".into()),
            context_length: Some(8192),
            parameter_count: Some(134_515_008),
            quantization: Some("Q4_1".into()),
            chat_template: true,
        });
        let avail = ModelAvailability {
            id: "smollm2".parse().unwrap(),
            state: ModelState::Active,
            cached_on: vec![],
            serving: vec![ServingPool {
                node_id: "alpha".parse().unwrap(),
                pool_id: "gpu0".parse().unwrap(),
                state: PoolState::Ready,
                slots_free: 2,
            }],
        };
        let v = render_record(&m, Some(&avail));
        for line in [
            "architecture   llama",
            "context        8192 tokens (trained)",
            "parameters     135M (134515008)",
            "quantization   Q4_1",
            "chat template  yes",
            "serving        alpha/gpu0 Ready (2 free)",
        ] {
            assert!(v.lines().any(|l| l == line), "{line:?} in\n{v}");
        }
        m.metadata = Some(GgufInfo::default());
        let v = render_record(&m, None);
        assert!(
            v.lines().any(|l| l == "architecture   -")
                && v.lines().any(|l| l == "chat template  no"),
            "{v}"
        );
    }
}
