//! `cargo xtask bench fetch`: the models cache's download path (Range-capable streaming into a
//! `.part` file, sha256 on the way, fsync, rename, sidecar, GGUF header read) versus a plain
//! reqwest download of the same file into a file with sha256, from the same local server, in the
//! same process, alternating which goes first per round; prints median throughput of both and the
//! ratio.

use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each downloads the dev model once per path.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let model = llorch::dev::model();
    anyhow::ensure!(
        model.is_file(),
        "the dev model {} is missing (run scripts/dev-assets.sh)",
        model.display()
    );
    let size = std::fs::metadata(&model)?.len();
    let server = fileserver::FileServer::start(fileserver::Options::new()).await;
    let path = server.serve_hf("bench/model", "main", "model.gguf", model.clone());
    let url = format!("{}{path}", server.url());
    let dir = std::env::temp_dir().join(format!("llorch-bench-fetch-{}", std::process::id()));
    let (mut cache_s, mut plain_s) = (vec![], vec![]);
    let r = api::model_ref::ModelRef::parse("hf:bench/model/model.gguf")?;
    for round in 0..a.rounds {
        let _ = std::fs::remove_dir_all(&dir);
        let cache = models::ModelCache::new(models::CacheConfig {
            models_dir: dir.join("cache"),
            quota_bytes: None,
            hf_endpoint: server.url(),
            hf_token: None,
            extra_root_pem: None,
        })?;
        // The order alternates per round so that neither path always runs on a cold (or warm)
        // page cache and disk.
        let cache_first = round % 2 == 0;
        let (f, digest) = if cache_first {
            let f = timed(&mut cache_s, cache_fetch(&cache, &r)).await?;
            let digest = timed(&mut plain_s, plain(&url, &dir.join("plain.gguf"))).await?;
            (f, digest)
        } else {
            let digest = timed(&mut plain_s, plain(&url, &dir.join("plain.gguf"))).await?;
            let f = timed(&mut cache_s, cache_fetch(&cache, &r)).await?;
            (f, digest)
        };
        anyhow::ensure!(
            f.size_bytes == size && f.downloaded_bytes == size,
            "the cache fetched {} of {size} bytes",
            f.downloaded_bytes
        );
        anyhow::ensure!(
            f.digest == format!("sha256:{digest}"),
            "the two paths hashed different bytes: {} vs sha256:{digest}",
            f.digest
        );
        eprintln!(
            "[bench] round {} ({} first): cache {:.3} s, plain {:.3} s",
            round + 1,
            if cache_first { "cache" } else { "plain" },
            cache_s[round],
            plain_s[round]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (c, p) = (median(&mut cache_s), median(&mut plain_s));
    let mb = size as f64 / 1e6;
    println!(
        "fetch of a {mb:.1} MB GGUF from a loopback server, median of {} rounds",
        a.rounds
    );
    println!(
        "  plain reqwest + sha256 + write: {:>8.1} MB/s ({p:.3} s)",
        mb / p
    );
    println!(
        "  models cache fetch:             {:>8.1} MB/s ({c:.3} s)",
        mb / c
    );
    println!("  ratio cache / plain time:       {:>8.2}", c / p);
    Ok(())
}

/// Awaits `fut`, pushing its duration in seconds onto `into`.
async fn timed<T>(
    into: &mut Vec<f64>,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let t = Instant::now();
    let v = fut.await?;
    into.push(t.elapsed().as_secs_f64());
    Ok(v)
}

async fn cache_fetch(
    cache: &models::ModelCache,
    r: &api::model_ref::ModelRef,
) -> anyhow::Result<models::Fetched> {
    cache
        .fetch(r, None, &|_| {})
        .await
        .context("models cache fetch")
}

/// The baseline: stream the body into a file while hashing it; returns the hex sha256.
async fn plain(url: &str, dest: &std::path::Path) -> anyhow::Result<String> {
    let resp = reqwest::get(url).await?.error_for_status()?;
    let mut file = tokio::fs::File::create(dest).await?;
    let mut hasher = sha2::Sha256::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    Ok(hex::encode(hasher.finalize()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
