//! The model catalog and on-demand provisioning against real processes (API.md §8, §9): a local
//! file server stands in for Hugging Face (through HF_ENDPOINT) and serves the dev GGUF; a node
//! with an Unloaded pool fetches it, verifies it, starts a real llama-server and streams tokens.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use api::catalog::{ModelState, RegisterModel};
use api::events::Event;
use api::node::{PoolState, StepStatus};
use api::task::TaskRequest;
use api::ErrorCode;
use fileserver::{FileServer, Options};
use llorch::stack::NodeSpec;

use crate::fixtures::{wait_for, Assets};
use crate::sched::empty_stack;

const REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const HF_TOKEN: &str = "hf_test_token_0123456789abcdef";
const DEV_SHA: &str = "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const ON_DEMAND: &str = "[provisioning]\nmode = \"on-demand\"\n";

fn hf_ref() -> String {
    format!("hf:{REPO}/{FILE}")
}

/// A node whose only pool has no model: Unloaded, a provisioning target. Its models cache is the
/// stack's `models/` folder (shared by every node of the stack).
fn unloaded_node(
    a: &Assets,
    node: &str,
    pool: &str,
    server: &FileServer,
) -> anyhow::Result<NodeSpec> {
    let (engine, _) = a.real.clone().map_err(anyhow::Error::msg)?;
    Ok(NodeSpec {
        node_id: node.into(),
        engine,
        pools: vec![],
        env: vec![("HF_ENDPOINT".into(), server.url()), ("HF_TOKEN".into(), HF_TOKEN.into())],
        engine_keys: "threads = 2\n".into(),
        extra_toml: format!("[[pools]]\nid = {pool:?}\nctx = 1024\nslots = 1\ndevices = \"cpu\"\ngpu_policy = \"cpu\"\n"),
    })
}

async fn wait_unloaded(client: &client::Client, pools: &[&str]) -> anyhow::Result<()> {
    wait_for(
        "the Unloaded pools to register with a built engine",
        Duration::from_secs(120),
        || async {
            let listed = client.pools().await.ok()?.pools;
            pools
                .iter()
                .all(|id| {
                    listed
                        .iter()
                        .any(|p| p.pool_id == *id && p.state == PoolState::Unloaded)
                })
                .then_some(())
        },
    )
    .await
}

async fn hf_server(a: &Assets, opts: Options) -> anyhow::Result<(FileServer, String)> {
    let (_, model) = a.real.clone().map_err(anyhow::Error::msg)?;
    let server = FileServer::start(opts.require_token(HF_TOKEN).hf_redirect()).await;
    let path = server.serve_hf(REPO, "main", FILE, model);
    Ok((server, path))
}

fn chat(model: &str) -> TaskRequest {
    let mut req = TaskRequest::new(model);
    req.messages = Some(vec![api::task::Message::text(
        api::task::Role::User,
        "Name a colour.",
    )]);
    req.max_tokens = Some(12);
    req.temperature = Some(0.0);
    req.seed = Some(7);
    req
}

/// Reads a stream to its terminal frame.
async fn all_frames(stream: &mut client::EventStream) -> anyhow::Result<Vec<Event>> {
    let mut out = vec![];
    loop {
        let f = tokio::time::timeout(Duration::from_secs(180), stream.next())
            .await
            .context("no frame for 180 s")?
            .context("the stream closed before a terminal frame")??;
        let terminal = f.event.is_terminal();
        out.push(f.event);
        if terminal {
            return Ok(out);
        }
    }
}

/// Files and partial downloads under a models cache.
fn cached_files(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// A task for a model no pool has: 202 with the steps, verbose progress frames until the first
/// token, real tokens, one download for two tasks, and the catalog learns digest, size, location
/// and GGUF facts.
pub async fn provisioning_from_hf(a: Assets) -> anyhow::Result<()> {
    let (server, hf_path) = hf_server(&a, Options::new()).await?;
    let (mut stack, _) = empty_stack(&a, "provision-hf", ON_DEMAND).await?;
    let result = async {
        stack.add_node(unloaded_node(&a, "loader", "prov0", &server)?)?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        wait_unloaded(&client, &["prov0"]).await?;
        let (rec, created) = client.register_model(&RegisterModel { id: None, model_ref: hf_ref(), digest: None }).await?;
        ensure!(created && rec.id == "smollm2-135m-instruct.q4_1" && rec.digest.is_none() && rec.locations.is_empty(), "{rec:?}");
        let first = client.submit(&chat(rec.id.as_str())).await?.body;
        let kinds: Vec<&str> = first.preparation.steps.iter().map(|s| s.kind.as_str()).collect();
        ensure!(kinds == ["model_fetch", "pool_warmup"], "steps {kinds:?}");
        ensure!(first.preparation.steps.iter().all(|s| s.status == api::node::StepStatus::Pending && s.node_id == "loader"), "{:?}", first.preparation);
        let second = client.submit(&chat(rec.id.as_str())).await?.body;
        ensure!(second.preparation.steps.is_empty(), "the second task waits on the same preparation: {:?}", second.preparation);
        let mut verbose = client.events(&first.streams.sse_verbose).await?;
        let frames = all_frames(&mut verbose).await?;
        ensure!(matches!(&frames[0], Event::Started(s) if s.pool_id == "prov0" && s.node_id == "loader"), "first frame {:?}", frames[0]);
        let first_token = frames.iter().position(|e| matches!(e, Event::Token(_))).context("no token")?;
        let preps: Vec<&api::events::Metrics> = frames[..first_token].iter().filter_map(|e| if let Event::Metrics(m) = e { m.prep.as_ref().map(|_| m) } else { None }).collect();
        ensure!(!preps.is_empty(), "no preparation progress before the first token: {frames:?}");
        ensure!(preps.iter().all(|m| m.human.is_some() && m.phase.is_some()), "progress frames carry human and phase");
        let last = preps.last().and_then(|m| m.prep.as_ref()).context("prep")?;
        ensure!(last.values().all(|p| p.status == StepStatus::Completed), "a step was not completed before the first token: {last:?}");
        let fetch = &last[&api::StepId::model(&hf_ref())];
        ensure!(fetch.bytes_total == 98_362_432 && fetch.bytes_done == fetch.bytes_total, "fetch progress {fetch:?}");
        ensure!(matches!(frames.last(), Some(Event::End(e)) if e.tokens_out > 0), "did not end with end: {:?}", frames.last());
        // The plain stream of the same task shows none of the verbose keys.
        let mut plain = client.events(&first.streams.sse).await?;
        for f in all_frames(&mut plain).await? {
            if let Event::Metrics(m) = f {
                ensure!(m.prep.is_none() && m.phase.is_none() && m.human.is_none(), "verbose keys in a plain stream: {m:?}");
            }
        }
        let mut s2 = client.events(&second.streams.sse).await?;
        let f2 = all_frames(&mut s2).await?;
        ensure!(matches!(f2.last(), Some(Event::End(_))) && f2.iter().any(|e| matches!(e, Event::Token(_))), "second task: {f2:?}");
        ensure!(server.gets(&hf_path) == 1, "{} downloads for two tasks", server.gets(&hf_path));
        let rec = client.model(rec.id.as_str()).await?;
        ensure!(rec.digest.as_deref() == Some(DEV_SHA) && rec.size_bytes == Some(98_362_432) && rec.locations == ["loader"] && rec.last_verified_ms.is_some(), "{rec:?}");
        let meta = rec.metadata.clone().context("no GGUF metadata in the record")?;
        ensure!(meta.context_length == Some(8192) && meta.chat_template && meta.quantization.as_deref() == Some("Q4_1"), "{meta:?}");
        // A ctx above the model's training context is refused at admission.
        let mut big = chat(rec.id.as_str());
        big.ctx = Some(16_384);
        let e = client.submit(&big).await.err().context("ctx 16384 admitted")?;
        ensure!(e.envelope().is_some_and(|e| e.code == ErrorCode::InvalidParams && e.field.as_deref() == Some("ctx")), "{e}");
        let avail = client.availability().await?;
        let m = avail.models.iter().find(|m| m.id == rec.id).context("availability")?;
        ensure!(m.cached_on == ["loader"] && m.serving.iter().any(|p| p.pool_id == "prov0" && p.state == PoolState::Ready), "{m:?}");
        let metrics = client.metrics_text().await?.body;
        ensure!(metrics.contains("catalog_verifications_total{result=\"pass\",reason=\"ok\",engine=\"llamacpp\"}"), "no passed verification counted");
        ensure!(metrics.contains(&format!("model_state{{model_id=\"{}\",state=\"Active\"}} 1", rec.id)), "no model_state gauge");
        // The node re-hashes its copy on request.
        client.verify_model(rec.id.as_str()).await?;
        wait_for("the verification to be counted", Duration::from_secs(30), || async {
            let m = client.metrics_text().await.ok()?.body;
            m.contains("catalog_verifications_total{result=\"pass\",reason=\"ok\",engine=\"llamacpp\"} 2").then_some(())
        })
        .await?;
        // While a pool serves it, the entry cannot be deleted.
        let e = client.delete_model(rec.id.as_str()).await.err().context("deleted a served model")?;
        ensure!(e.envelope().is_some_and(|e| e.code == ErrorCode::Conflict), "{e}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// A wrong digest ends the task with UNTRUSTED_ARTIFACT and leaves no file; the catalog survives
/// an orchestratord restart; a retired model is refused; an unserved entry can be deleted.
pub async fn digest_mismatch_and_restart(a: Assets) -> anyhow::Result<()> {
    let (server, _) = hf_server(&a, Options::new()).await?;
    let (mut stack, _) = empty_stack(&a, "catalog-restart", ON_DEMAND).await?;
    let result = async {
        stack.add_node(unloaded_node(&a, "loader", "prov0", &server)?)?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        wait_unloaded(&client, &["prov0"]).await?;
        let wrong = format!("sha256:{}", "0".repeat(64));
        let (rec, _) = client.register_model(&RegisterModel { id: Some("pinned-digest".parse().expect("model id")), model_ref: hf_ref(), digest: Some(wrong.to_uppercase().replace("SHA256", "sha256")) }).await?;
        ensure!(rec.digest.as_deref() == Some(wrong.as_str()), "digest stored lower case: {rec:?}");
        let adm = client.submit(&chat("pinned-digest")).await?.body;
        let mut s = client.events(&adm.streams.sse).await?;
        let frames = all_frames(&mut s).await?;
        ensure!(matches!(frames.last(), Some(Event::Error(e)) if e.code == ErrorCode::UntrustedArtifact && !e.retriable), "{frames:?}");
        ensure!(!frames.iter().any(|e| matches!(e, Event::Token(_))), "tokens from an untrusted model");
        let left = cached_files(&stack.spec.dir.join("models"));
        ensure!(!left.iter().any(|f| f.ends_with(".gguf") || f.ends_with(".part")), "files left after a digest mismatch: {left:?}");
        let metrics = client.metrics_text().await?.body;
        ensure!(metrics.contains("catalog_verifications_total{result=\"fail\",reason=\"digest_mismatch\",engine=\"llamacpp\"} 1"), "mismatch not counted");
        ensure!(client.model("pinned-digest").await?.locations.is_empty(), "a failed copy became a location");
        // Bad input changes nothing.
        let e = client.register_model(&RegisterModel { id: None, model_ref: "http://example.com/m.gguf".into(), digest: None }).await.err().context("http ref registered")?;
        ensure!(e.envelope().is_some_and(|e| e.code == ErrorCode::UntrustedArtifact), "{e}");
        let e = client.register_model(&RegisterModel { id: Some("pinned-digest".parse().expect("model id")), model_ref: "file:/elsewhere.gguf".into(), digest: None }).await.err().context("id clash registered")?;
        ensure!(e.envelope().is_some_and(|e| e.code == ErrorCode::Conflict), "{e}");
        let (local, _) = client.register_model(&RegisterModel { id: Some("local-copy".parse().expect("model id")), model_ref: "file:/nonexistent/model.gguf".into(), digest: None }).await?;
        client.set_model_state(local.id.as_str(), ModelState::Retired).await?;
        let before = client.models().await?.models;
        ensure!(before.len() == 2, "{before:?}");
        stack.restart_orchestratord().await?;
        let after = client.models().await?.models;
        ensure!(after == before, "the catalog changed across a restart:\n{before:?}\n{after:?}");
        let e = client.submit(&chat("local-copy")).await.err().context("a retired model was admitted")?;
        ensure!(e.envelope().is_some_and(|e| e.code == ErrorCode::ModelDeprecated), "{e}");
        client.delete_model("local-copy").await?;
        let e = client.model("local-copy").await.err().context("deleted entry still there")?;
        ensure!(e.envelope().is_some_and(|e| e.code == ErrorCode::NotFound), "{e}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

/// Two pools on two pool-managerd processes sharing one models cache load the same model at once:
/// one download (resumed after the server drops it), both pools serve real tokens.
pub async fn two_pools_one_download(a: Assets) -> anyhow::Result<()> {
    let (server, hf_path) = hf_server(&a, Options::new().interrupt_first_after(16 << 20)).await?;
    let (mut stack, _) = empty_stack(&a, "two-pools", "").await?;
    let result = async {
        stack.add_node(unloaded_node(&a, "n1", "p1", &server)?)?;
        stack.add_node(unloaded_node(&a, "n2", "p2", &server)?)?;
        let client = client::Client::new(&stack.orchd_url, None)?;
        wait_unloaded(&client, &["p1", "p2"]).await?;
        let (rec, _) = client
            .register_model(&RegisterModel {
                id: None,
                model_ref: hf_ref(),
                digest: Some(DEV_SHA.into()),
            })
            .await?;
        let (r1, r2) = tokio::join!(
            client.reload_pool("p1", rec.id.as_str()),
            client.reload_pool("p2", rec.id.as_str())
        );
        r1?;
        r2?;
        stack
            .wait_pools_ready(&["p1", "p2"], Duration::from_secs(180))
            .await?;
        let sent = server.bytes_sent(&hf_path);
        ensure!(
            sent < 98_362_432 * 12 / 10,
            "{sent} bytes sent for one 98 MB model: downloaded more than once"
        );
        ensure!(
            server.gets(&hf_path) == 2,
            "{} GETs: expected the interrupted one and its resume",
            server.gets(&hf_path)
        );
        for pool in ["p1", "p2"] {
            let mut req = chat(rec.id.as_str());
            req.placement = Some(api::task::Placement {
                mode: api::task::PlacementMode::Pin,
                pin_pool_id: Some(pool.parse().expect("pool id")),
                ..Default::default()
            });
            let adm = client.submit(&req).await?.body;
            let mut s = client.events(&adm.streams.sse).await?;
            let frames = all_frames(&mut s).await?;
            ensure!(
                frames.iter().any(|e| matches!(e, Event::Token(_)))
                    && matches!(frames.last(), Some(Event::End(_))),
                "{pool}: {frames:?}"
            );
        }
        let rec = client.model(rec.id.as_str()).await?;
        ensure!(rec.locations == ["n1", "n2"], "{rec:?}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
