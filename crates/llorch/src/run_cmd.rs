//! `llorch run`: admit one task, stream its tokens to stdout; Ctrl-C cancels the task.
//! Exit codes (API.md §18): 0 success, 1 task error or refusal, 2 usage or INVALID_PARAMS,
//! 3 authentication, 4 retriable refusal.

use std::io::Write;

use api::events::Event;
use api::task::{Message, Role, TaskRequest};
use api::ErrorCode;
use clap::Args;

#[derive(Args)]
pub struct RunArgs {
    /// Catalog model id.
    model: String,
    /// The prompt, sent as one user message (with --raw: as a plain completion prompt).
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    raw: bool,
    #[arg(long)]
    max_tokens: Option<u64>,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// orchestratord's base URL; several, comma-separated, for an HA group (the run follows the
    /// leader and resumes its stream across a failover).
    #[arg(long, env = "LLORCH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "LLORCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(a: RunArgs) -> anyhow::Result<u8> {
    let client = client::Client::new(&a.url, a.token.clone())?;
    let mut req = TaskRequest::new(&a.model);
    if a.raw {
        req.prompt = Some(a.prompt.clone());
    } else {
        req.messages = Some(vec![Message::text(Role::User, a.prompt.clone())]);
    }
    req.max_tokens = a.max_tokens;
    req.temperature = a.temperature;
    req.seed = a.seed;
    // One Ctrl-C listener for the whole run, registered before the task exists: a listener made
    // anew in each loop turn misses a Ctrl-C that lands between two turns (tokens arriving fast),
    // and the run would stream on to its last token.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // An idempotency key makes the submit safe to send again to another orchestratord of an HA
    // group when the first one went away before answering.
    let key = uuid::Uuid::new_v4().to_string();
    let adm = match client.submit_idempotent(&req, &key).await {
        Ok(a) => a.body,
        Err(e) => return Ok(refusal(&e)),
    };
    // A task that triggered provisioning reads the verbose stream: its progress frames say what
    // is being prepared (fetch percentage, engine build, warmup).
    let preparing = !adm.preparation.steps.is_empty();
    if preparing {
        let steps: Vec<&str> = adm
            .preparation
            .steps
            .iter()
            .map(|s| s.description.as_str())
            .collect();
        eprintln!(
            "[run] no pool serves this model yet; preparing: {}",
            steps.join("; ")
        );
    }
    let path = if preparing {
        &adm.streams.sse_verbose
    } else {
        &adm.streams.sse
    };
    // Followed across a failover: a broken stream is opened again with Last-Event-ID.
    let mut stream = client.follow(path);
    let mut out = std::io::stdout();
    let spinner = Spinner::start(adm.queue_position, adm.predicted_start_ms);
    let mut spinner = Some(spinner);
    loop {
        let next = tokio::select! {
            f = stream.next() => f,
            _ = interrupt.recv() => {
                let _ = client.cancel(adm.task_id).await;
                eprintln!("\n[run] canceled task {}", adm.task_id);
                return Ok(1);
            }
        };
        match next {
            None => {
                eprintln!("\n[run] the stream ended without a terminal frame");
                return Ok(1);
            }
            Some(Err(e)) => {
                eprintln!();
                return Ok(refusal(&e));
            }
            Some(Ok(f)) => match f.event {
                Event::Token(t) => {
                    if let Some(s) = spinner.take() {
                        s.stop();
                    }
                    print!("{}", t.t);
                    let _ = out.flush();
                }
                Event::Metrics(m) => {
                    if let (Some(s), Some(pos)) = (&spinner, m.queue_position) {
                        s.position(pos);
                    }
                    if let (Some(s), Some(h)) = (&spinner, m.human) {
                        s.note(h);
                    }
                }
                Event::End(e) => {
                    if let Some(s) = spinner.take() {
                        s.stop();
                    }
                    println!();
                    eprintln!(
                        "[run] {:?}: {} tokens in, {} out, first token after {} ms",
                        e.stop_reason,
                        e.tokens_in,
                        e.tokens_out,
                        e.ttft_ms.unwrap_or(0)
                    );
                    return Ok(0);
                }
                Event::Error(e) => {
                    eprintln!("\n[run] {}: {}", e.code, e.message);
                    return Ok(1);
                }
                _ => {}
            },
        }
    }
}

/// A spinner on stderr (terminals only) while the task waits for its first token.
struct Spinner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    position: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The latest preparation sentence (verbose `human`), shown instead of the queue position.
    note: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    tty: bool,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Spinner {
    fn start(position: u64, predicted_ms: u64) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let pos = std::sync::Arc::new(AtomicU64::new(position));
        let note = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let handle = tty.then(|| {
            let (stop, pos, note) = (stop.clone(), pos.clone(), note.clone());
            tokio::spawn(async move {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let t0 = std::time::Instant::now();
                for k in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let current = note.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    match current {
                        Some(n) => eprint!("\r\x1b[2K{} {n} ({:.1} s so far)", frames[k % frames.len()], t0.elapsed().as_secs_f64()),
                        None => eprint!("\r\x1b[2K{} waiting for the first token: queue position {}, expected start in {:.1} s ({:.1} s so far)",
                            frames[k % frames.len()], pos.load(Ordering::Relaxed), predicted_ms as f64 / 1000.0, t0.elapsed().as_secs_f64()),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                eprint!("\r\x1b[2K");
            })
        });
        Self {
            stop,
            position: pos,
            note,
            tty,
            handle,
        }
    }

    /// A new preparation sentence: the spinner shows it; without a terminal it is printed once.
    fn note(&self, n: String) {
        let mut cur = self.note.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_deref() != Some(n.as_str()) {
            if !self.tty {
                eprintln!("[run] {n}");
            }
            *cur = Some(n);
        }
    }

    fn position(&self, p: u64) {
        self.position.store(p, std::sync::atomic::Ordering::Relaxed);
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

pub fn refusal(e: &client::Error) -> u8 {
    eprintln!("[run] {e}");
    match e.envelope() {
        Some(env) if env.code == ErrorCode::InvalidParams => 2,
        Some(env)
            if matches!(
                env.code,
                ErrorCode::MissingToken | ErrorCode::BadToken | ErrorCode::Forbidden
            ) =>
        {
            3
        }
        Some(env) if env.retriable && matches!(env.http_status(), 429 | 503) => 4,
        _ => 1,
    }
}
