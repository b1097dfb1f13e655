//! Register a model in the catalog by its Hugging Face ref, list the catalog and print where each
//! model is cached and served.
//!
//! ```sh
//! scripts/up.sh &        # or any running llama-orch
//! cargo run -p client --example catalog -- hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_k_m.gguf
//! ```
//! Reads `LLORCH_URL` (default http://127.0.0.1:8080) and `LLORCH_TOKEN`. Registering only records
//! the ref: a node downloads the file (reading `HF_TOKEN` / `HF_ENDPOINT`) when a pool loads it.

use api::catalog::RegisterModel;

const DEFAULT_REF: &str =
    "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_k_m.gguf";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model_ref = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_REF.into());
    let url = std::env::var("LLORCH_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let client = client::Client::new(url, std::env::var("LLORCH_TOKEN").ok())?;

    // 201 when created, 200 when the same id/ref/digest is already registered; a different ref
    // under the same id is 409 CONFLICT.
    let body = RegisterModel {
        model_ref,
        ..Default::default()
    };
    let (record, created) = client.register_model(&body).await?;
    println!(
        "{} {} ({})",
        if created {
            "created"
        } else {
            "already registered"
        },
        record.id,
        record.model_ref
    );

    for m in client.models().await?.models {
        let digest = m.digest.as_deref().unwrap_or("-");
        println!(
            "{:<32} {:<8} {:>12} {digest}",
            m.id,
            m.state.as_str(),
            m.size_bytes
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }

    for a in client.availability().await?.models {
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
        println!(
            "{}: cached on [{}], serving [{}]",
            a.id,
            a.cached_on.join(", "),
            serving.join(", ")
        );
    }
    Ok(())
}
