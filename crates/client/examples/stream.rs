//! Submit one task and stream its tokens.
//!
//! ```sh
//! scripts/up.sh &        # or any running llama-orch
//! cargo run -p client --example stream -- "Write a haiku about the sea."
//! ```
//! Reads `LLORCH_URL` (default http://127.0.0.1:8080) and `LLORCH_TOKEN`.

use std::io::Write;

use api::events::Event;
use api::task::{Message, Role, TaskRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Write a haiku about the sea.".into());
    let url = std::env::var("LLORCH_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let client = client::Client::new(url, std::env::var("LLORCH_TOKEN").ok())?;
    let mut req = TaskRequest::new("smollm2-135m-instruct");
    req.messages = Some(vec![Message::text(Role::User, prompt)]);
    req.max_tokens = Some(64);
    // Admission is retried on 429/503 after the server's Retry-After.
    let admitted = client.submit_with_retry(&req, 5).await?.body;
    let mut events = client.events(&admitted.streams.sse).await?;
    while let Some(frame) = events.next().await {
        match frame?.event {
            Event::Token(t) => {
                print!("{}", t.t);
                std::io::stdout().flush()?;
            }
            Event::End(e) => {
                println!("\n[{:?}: {} tokens]", e.stop_reason, e.tokens_out);
                break;
            }
            Event::Error(e) => return Err(format!("{}: {}", e.code, e.message).into()),
            _ => {}
        }
    }
    Ok(())
}
