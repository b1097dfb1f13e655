//! The e2e haiku check (API.md §19) through a real stack.

use crate::fixtures::Assets;

pub async fn haiku(a: Assets) -> anyhow::Result<()> {
    let spec = a.spec("haiku")?;
    let out = spec.dir.clone();
    let mut stack = a.stack(spec).await?;
    let opts = llorch::haiku::HaikuOptions {
        base_url: stack.orchd_url.clone(),
        token: None,
        model: stack.spec.model_id.clone(),
        out_dir: out,
        log_files: stack.log_files(),
        seed: 42,
    };
    let report = llorch::haiku::run(&opts, &mut |_| {}).await;
    stack.shutdown().await?;
    let report = report?;
    for f in [
        "request.json",
        "admission.json",
        "sse_transcript.jsonl",
        "metrics_before.txt",
        "metrics_after.txt",
        "logs.jsonl",
        "verification.json",
    ] {
        anyhow::ensure!(report.run_dir.join(f).is_file(), "run folder lacks {f}");
    }
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.run_dir.join("request.json"))?)?;
    anyhow::ensure!(
        request["grammar"]
            .as_str()
            .is_some_and(|g| g.contains("root")),
        "request.json lacks the grammar"
    );
    anyhow::ensure!(
        report.passed,
        "haiku check failed: {}",
        serde_json::to_string_pretty(&report.verification["checks"])?
    );
    println!("  haiku: {:?} ({})", report.text, report.run_dir.display());
    Ok(())
}
