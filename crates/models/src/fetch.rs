//! One HTTP download into a partial file: the HTTP client (extra CA, redirects without https →
//! http downgrades, timeouts), hashing as bytes arrive, resume with `Range: bytes=<done>-` after a
//! dropped connection or a 5xx (checking the 206's `Content-Range` start, restarting from 0 when
//! the server ignores the range), up to [`MAX_ATTEMPTS`] with doubling backoff, and throttled
//! progress reports. It knows nothing of the cache layout, digests or locks.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Client, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use crate::error::FetchError;

/// Attempts per download (the first try included).
pub const MAX_ATTEMPTS: u32 = 5;
/// Delay before the second attempt; doubles after each further failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Progress is reported when this much time or [`PROGRESS_BYTES`] passed since the last report.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
const PROGRESS_BYTES: u64 = 1 << 20;

/// Download progress: bytes in the partial file, and the total when the server said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
}

/// Builds the client used for all fetches of a cache; `extra_root_pem` may hold several certificates.
pub(crate) fn client(extra_root_pem: Option<&[u8]>) -> Result<Client, FetchError> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error("refusing a redirect from https to http")
        } else if attempt.previous().len() >= 10 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    });
    let mut builder = Client::builder()
        .user_agent(concat!("llama-orch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .redirect(policy);
    if let Some(pem) = extra_root_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| FetchError::Invalid(format!("extra root certificate: {e}")))?;
        if certs.is_empty() {
            return Err(FetchError::Invalid(
                "extra root certificate: no PEM certificate found".into(),
            ));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| FetchError::Invalid(format!("http client: {e}")))
}

/// What a finished download produced.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub digest: String,
    pub size: u64,
    /// Body bytes received over all attempts (more than `size` after a restart).
    pub transferred: u64,
}

pub(crate) struct Request<'a> {
    pub client: &'a Client,
    pub url: &'a str,
    pub bearer: Option<&'a str>,
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
}

/// The URL without query or fragment, for logs and messages (queries may carry signatures).
pub(crate) fn redact(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Downloads `req.url` into `part` (created or truncated). On error `part` may hold a prefix;
/// the caller removes it.
pub(crate) async fn download(req: &Request<'_>, part: &Path) -> Result<Downloaded, FetchError> {
    let shown = redact(req.url);
    let file = tokio::fs::File::create(part)
        .await
        .map_err(|e| FetchError::io(part.display(), e))?;
    let mut out = Partial {
        file: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        done: 0,
    };
    let mut total: Option<u64> = None;
    let mut transferred = 0u64;
    let mut reporter = Reporter::new(req.progress);
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::new();

    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            tracing::warn!(url = shown, attempt, done = out.done, error = %last_error, "model download interrupted; retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let mut http = req.client.get(req.url);
        if let Some(token) = req.bearer {
            http = http.bearer_auth(token);
        }
        if out.done > 0 {
            http = http.header(RANGE, format!("bytes={}-", out.done));
        }
        let resp = match http.send().await {
            Ok(r) => r,
            Err(e) if is_trust_error(&e) => {
                return Err(FetchError::Network {
                    message: format!("{shown}: {}", api::error::chain(&e)),
                    retriable: false,
                })
            }
            Err(e) => {
                last_error = api::error::chain(&e);
                continue;
            }
        };
        let status = resp.status();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(FetchError::Unauthorized(format!("{shown} answered {status}; check the token (HF_TOKEN) and access to the repository")))
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => return Err(FetchError::NotFound(format!("{shown} answered {status}"))),
            StatusCode::PARTIAL_CONTENT => {
                let range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(parse_content_range);
                match range {
                    Some((start, len)) if start == out.done => total = len.or(total),
                    _ => {
                        last_error = format!("206 with Content-Range {:?} for a resume at {}", resp.headers().get(CONTENT_RANGE), out.done);
                        out.restart().await.map_err(|e| FetchError::io(part.display(), e))?;
                        continue;
                    }
                }
            }
            StatusCode::OK => {
                if out.done > 0 {
                    tracing::info!(url = shown, "server ignored the range; restarting from 0");
                    out.restart().await.map_err(|e| FetchError::io(part.display(), e))?;
                }
                total = resp.content_length();
            }
            StatusCode::RANGE_NOT_SATISFIABLE if out.done > 0 => {
                last_error = format!("416 for a resume at {}", out.done);
                out.restart().await.map_err(|e| FetchError::io(part.display(), e))?;
                continue;
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
                last_error = format!("{shown} answered {s}");
                continue;
            }
            s => return Err(FetchError::Network { message: format!("{shown} answered {s}"), retriable: false }),
        }
        reporter.report(out.done, total, true);

        let mut body = resp.bytes_stream();
        let mut broke = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    out.write(&bytes)
                        .await
                        .map_err(|e| FetchError::io(part.display(), e))?;
                    transferred += bytes.len() as u64;
                    reporter.report(out.done, total, false);
                }
                Err(e) => {
                    broke = Some(api::error::chain(&e));
                    break;
                }
            }
        }
        if let Some(e) = broke {
            last_error = e;
            continue;
        }
        match total {
            Some(t) if out.done < t => {
                last_error = format!("connection closed at {} of {t} bytes", out.done);
                continue;
            }
            Some(t) if out.done > t => {
                return Err(FetchError::Network {
                    message: format!("{shown} sent {} bytes, more than its {t}", out.done),
                    retriable: true,
                });
            }
            _ => {}
        }
        let (digest, size) = out
            .finish()
            .await
            .map_err(|e| FetchError::io(part.display(), e))?;
        reporter.report(size, total.or(Some(size)), true);
        return Ok(Downloaded {
            digest,
            size,
            transferred,
        });
    }
    Err(FetchError::Network {
        message: format!("{shown}: giving up after {MAX_ATTEMPTS} attempts: {last_error}"),
        retriable: true,
    })
}

/// The partial file and the hash of what it holds.
struct Partial {
    file: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    done: u64,
}

impl Partial {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await?;
        self.hasher.update(bytes);
        self.done += bytes.len() as u64;
        Ok(())
    }

    async fn restart(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.get_mut().set_len(0).await?;
        self.file
            .get_mut()
            .seek(std::io::SeekFrom::Start(0))
            .await?;
        self.hasher = Sha256::new();
        self.done = 0;
        Ok(())
    }

    async fn finish(mut self) -> std::io::Result<(String, u64)> {
        self.file.flush().await?;
        self.file.get_mut().sync_all().await?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.done,
        ))
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL if not `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total.trim() == "*" {
        None
    } else {
        Some(total.trim().parse().ok()?)
    };
    Some((start.trim().parse().ok()?, total))
}

/// A TLS trust failure: retrying cannot help.
fn is_trust_error(e: &reqwest::Error) -> bool {
    let s = api::error::chain(e).to_ascii_lowercase();
    s.contains("certificate") || s.contains("unknownissuer")
}

/// Calls the progress callback at most every [`PROGRESS_EVERY`] or [`PROGRESS_BYTES`].
struct Reporter<'a> {
    f: &'a (dyn Fn(Progress) + Send + Sync),
    last_at: Instant,
    last_bytes: u64,
}

impl<'a> Reporter<'a> {
    fn new(f: &'a (dyn Fn(Progress) + Send + Sync)) -> Self {
        Reporter {
            f,
            last_at: Instant::now(),
            last_bytes: 0,
        }
    }

    fn report(&mut self, done: u64, total: Option<u64>, force: bool) {
        if force
            || self.last_at.elapsed() >= PROGRESS_EVERY
            || done.saturating_sub(self.last_bytes) >= PROGRESS_BYTES
        {
            (self.f)(Progress {
                bytes_done: done,
                bytes_total: total,
            });
            self.last_at = Instant::now();
            self.last_bytes = done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("https://h/p.gguf?X-Amz-Signature=s"),
            "https://h/p.gguf"
        );
        assert_eq!(redact("https://h/p.gguf"), "https://h/p.gguf");
    }
}
