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
    #[arg(long, env = "LLORCH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "LLORCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(a: RunArgs) -> anyhow::Result<u8> {
    let client = client::Client::new(&a.url, a.token.clone());
    let mut req = TaskRequest::new(&a.model);
    if a.raw {
        req.prompt = Some(a.prompt.clone());
    } else {
        req.messages = Some(vec![Message { role: Role::User, content: a.prompt.clone() }]);
    }
    req.max_tokens = a.max_tokens;
    req.temperature = a.temperature;
    req.seed = a.seed;
    let adm = match client.submit(&req).await {
        Ok(a) => a.body,
        Err(e) => return Ok(refusal(&e)),
    };
    let mut stream = match client.events(&adm.streams.sse).await {
        Ok(s) => s,
        Err(e) => return Ok(refusal(&e)),
    };
    let mut out = std::io::stdout();
    loop {
        let next = tokio::select! {
            f = stream.next() => f,
            _ = tokio::signal::ctrl_c() => {
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
                eprintln!("\n[run] {e}");
                return Ok(1);
            }
            Some(Ok(f)) => match f.event {
                Event::Token(t) => {
                    print!("{}", t.t);
                    let _ = out.flush();
                }
                Event::End(e) => {
                    println!();
                    eprintln!("[run] {:?}: {} tokens in, {} out, first token after {} ms", e.stop_reason, e.tokens_in, e.tokens_out, e.ttft_ms.unwrap_or(0));
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

pub fn refusal(e: &client::Error) -> u8 {
    eprintln!("[run] {e}");
    match e.envelope() {
        Some(env) if env.code == ErrorCode::InvalidParams => 2,
        Some(env) if matches!(env.code, ErrorCode::MissingToken | ErrorCode::BadToken) => 3,
        Some(env) if env.retriable && matches!(env.http_status(), 429 | 503) => 4,
        _ => 1,
    }
}
