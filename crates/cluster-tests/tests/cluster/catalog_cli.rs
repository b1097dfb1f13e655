//! `llorch models …` against a live stack: add (created, already registered, conflicts, refusals),
//! list, get, retire/activate (with their effect on tasks), verify, rm; `--json` and exit codes.

use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::Value;

use crate::fixtures::{run_llorch as run, wait_for, Assets};

const EXTRA_REF: &str =
    "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_k_m.gguf";

/// Runs a `--json` command that must succeed and returns its body.
async fn json(args: &[&str], url: &str) -> anyhow::Result<Value> {
    let (code, out, err) = run(args, url).await?;
    ensure!(
        code == 0,
        "llorch {}: exit {code}, stderr {err}",
        args.join(" ")
    );
    serde_json::from_str(&out)
        .with_context(|| format!("llorch {}: stdout is not JSON: {out}", args.join(" ")))
}

pub async fn catalog_cli(a: Assets) -> anyhow::Result<()> {
    let mut stack = a.stack(a.spec("catalog-cli")?).await?;
    let url = stack.orchd_url.clone();
    let model = stack.spec.model_id.clone();
    let result = async {
        // The pool's locally configured model is registered on its first report, with its digest
        // once pool-managerd has hashed the file.
        let record = wait_for(
            "the pool's model in the catalog with a digest",
            Duration::from_secs(30),
            || async {
                let v = json(&["models", "get", &model, "--json"], &url)
                    .await
                    .ok()?;
                v["digest"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71)
                    .then_some(v)
            },
        )
        .await?;
        ensure!(
            record["state"] == "Active"
                && record["ref"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("file:/")),
            "record: {record}"
        );
        let listed = json(&["models", "list", "--json"], &url).await?;
        ensure!(
            listed["models"]
                .as_array()
                .is_some_and(|m| m.iter().any(|r| r["id"] == model.as_str())),
            "list --json: {listed}"
        );
        let (code, out, _) = run(&["models", "get", &model], &url).await?;
        ensure!(
            code == 0
                && out
                    .lines()
                    .any(|l| l.starts_with("digest") && l.contains("sha256:"))
                && out.contains("local/cpu0 Ready"),
            "get: exit {code}\n{out}"
        );

        // add: created, then already registered; a clash, an untrusted scheme, bad input.
        let (code, out, err) = run(
            &["models", "add", EXTRA_REF, "--id", "extra-model", "--json"],
            &url,
        )
        .await?;
        ensure!(
            code == 0 && err.contains("created extra-model"),
            "add: exit {code}, stderr {err}"
        );
        let v: Value = serde_json::from_str(&out).context("add --json")?;
        ensure!(
            v["id"] == "extra-model"
                && v["ref"] == EXTRA_REF
                && v["state"] == "Active"
                && v["digest"].is_null(),
            "add --json: {v}"
        );
        let (code, _, err) =
            run(&["models", "add", EXTRA_REF, "--id", "extra-model"], &url).await?;
        ensure!(
            code == 0 && err.contains("already registered extra-model"),
            "second add: exit {code}, stderr {err}"
        );
        let (code, _, err) = run(
            &[
                "models",
                "add",
                "hf:org/repo/other.gguf",
                "--id",
                "extra-model",
            ],
            &url,
        )
        .await?;
        ensure!(
            code == 1 && err.contains("CONFLICT"),
            "id clash: exit {code}, stderr {err}"
        );
        let (code, _, err) = run(&["models", "add", "http://example.com/m.gguf"], &url).await?;
        ensure!(
            code == 1 && err.contains("UNTRUSTED_ARTIFACT"),
            "http ref: exit {code}, stderr {err}"
        );
        let (code, _, err) = run(&["models", "add", "file:relative/m.gguf"], &url).await?;
        ensure!(
            code == 2 && err.contains("INVALID_PARAMS"),
            "relative file ref: exit {code}, stderr {err}"
        );
        let (code, _, err) = run(
            &[
                "models",
                "add",
                "hf:org/repo/m.gguf",
                "--digest",
                "md5:0123",
            ],
            &url,
        )
        .await?;
        ensure!(
            code == 2 && err.contains("INVALID_PARAMS"),
            "md5 digest: exit {code}, stderr {err}"
        );
        let (code, _, _) = run(&["models", "get", "Not/An-Id"], &url).await?;
        ensure!(code == 2, "a malformed id should exit 2, got {code}");
        let (code, _, err) = run(&["models", "get", "no-such-model"], &url).await?;
        ensure!(
            code == 1 && err.contains("NOT_FOUND"),
            "unknown id: exit {code}, stderr {err}"
        );

        // The table: both entries; the served model counts one Ready pool.
        let (code, out, _) = run(&["models", "list"], &url).await?;
        ensure!(
            code == 0
                && out.lines().next().is_some_and(|h| h.split_whitespace().eq([
                    "ID",
                    "STATE",
                    "SIZE",
                    "DIGEST",
                    "LOCATIONS",
                    "SERVING",
                    "REF"
                ])),
            "list header:\n{out}"
        );
        let row = |id: &str| {
            out.lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        };
        let served = row(&model).with_context(|| format!("no row for {model}:\n{out}"))?;
        // SIZE is two words (e.g. "93.8 MiB"): count SERVING from the end (it precedes REF).
        ensure!(
            served[1] == "Active" && served[served.len() - 2] == "1",
            "served row: {served:?}"
        );
        let extra =
            row("extra-model").with_context(|| format!("no row for extra-model:\n{out}"))?;
        ensure!(
            extra[1] == "Active"
                && extra[2] == "-"
                && extra[3] == "-"
                && extra[5] == "0"
                && extra[6] == EXTRA_REF,
            "extra row: {extra:?}"
        );
        let client = client::Client::new(&url, None)?;
        let avail = client.availability().await?;
        let served = avail
            .models
            .iter()
            .find(|m| m.id == model.as_str())
            .context("availability lists the served model")?;
        ensure!(
            served
                .serving
                .iter()
                .any(|p| p.pool_id == "cpu0" && p.node_id == "local"),
            "availability: {served:?}"
        );

        // retire refuses new tasks; activate accepts them again.
        let v = json(&["models", "retire", &model, "--json"], &url).await?;
        ensure!(v["state"] == "Retired", "retire --json: {v}");
        let (code, _, err) =
            run(&["run", &model, "--prompt", "x", "--max-tokens", "4"], &url).await?;
        ensure!(
            code == 1 && err.contains("MODEL_DEPRECATED"),
            "run a retired model: exit {code}, stderr {err}"
        );
        let (code, _, err) = run(&["models", "activate", &model], &url).await?;
        ensure!(
            code == 0 && err.contains("Active"),
            "activate: exit {code}, stderr {err}"
        );
        let (code, out, err) = run(
            &[
                "run",
                &model,
                "--prompt",
                "Name a fruit.",
                "--max-tokens",
                "4",
                "--temperature",
                "0",
            ],
            &url,
        )
        .await?;
        ensure!(
            code == 0 && !out.trim().is_empty(),
            "run after activate: exit {code}, stdout {out:?}, stderr {err}"
        );

        // verify answers with the record.
        let v = json(&["models", "verify", &model, "--json"], &url).await?;
        ensure!(v["id"] == model.as_str(), "verify --json: {v}");
        let (code, _, _) = run(&["models", "verify", "no-such-model"], &url).await?;
        ensure!(
            code == 1,
            "verify an unknown model should exit 1, got {code}"
        );

        // rm: refused while a pool serves the model; an unused entry goes, once.
        let (code, _, err) = run(&["models", "rm", &model], &url).await?;
        ensure!(
            code == 1 && err.contains("CONFLICT"),
            "rm a served model: exit {code}, stderr {err}"
        );
        let (code, out, err) = run(&["models", "rm", "extra-model", "--json"], &url).await?;
        ensure!(
            code == 0 && out.trim().is_empty() && err.contains("removed extra-model"),
            "rm: exit {code}, stdout {out:?}, stderr {err}"
        );
        let (code, _, err) = run(&["models", "get", "extra-model"], &url).await?;
        ensure!(
            code == 1 && err.contains("NOT_FOUND"),
            "get after rm: exit {code}, stderr {err}"
        );
        let (code, _, _) = run(&["models", "rm", "extra-model"], &url).await?;
        ensure!(code == 1, "a second rm should exit 1, got {code}");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}
