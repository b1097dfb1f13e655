//! Authentication (API.md §3.1): client and node tokens are distinct, 401s carry the envelope,
//! `WWW-Authenticate` and a correlation id, a node acts only as itself, health and metrics stay
//! open, and client tokens rotate on SIGHUP without a restart.

use std::time::Duration;

use anyhow::{ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixtures::{wait_for, Assets};

const OLD: &str = "client-token-old-0123456789";
const NEW: &str = "client-token-new-0123456789";
const REG: &str = "registration-token-0123456789";

fn orchd_auth(clients: &[&str]) -> String {
    let list: Vec<String> = clients.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "[auth]\nclient_tokens = [{}]\nnode_registration_token = {REG:?}\n",
        list.join(", ")
    )
}

async fn get(url: &str, token: Option<&str>) -> anyhow::Result<reqwest::Response> {
    let mut r = reqwest::Client::new()
        .get(url)
        .header("x-correlation-id", "auth-test");
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    Ok(r.send().await?)
}

pub async fn auth_rules_and_rotation(a: Assets) -> anyhow::Result<()> {
    let mut spec = a.spec("auth")?;
    spec.orchd_extra = orchd_auth(&[OLD]);
    spec.registration_token = Some(REG.into());
    let mut stack = llorch::stack::Stack::start(spec).await?;
    let result = async {
        let base = stack.orchd_url.clone();
        let with_old = client::Client::new(&base, Some(OLD.into()))?;
        wait_for("the node to register with the registration token", Duration::from_secs(30), || async { with_old.nodes().await.ok().filter(|n| n.count == 1) }).await?;
        // No token, a wrong token, an unknown path: 401 with the envelope and headers.
        for (path, token, code) in [("/v2/pools", None, "MISSING_TOKEN"), ("/v2/pools", Some("wrong-token-0123456789"), "BAD_TOKEN"), ("/v2/no-such-route", None, "MISSING_TOKEN"), ("/v2/pools", Some(REG), "BAD_TOKEN")] {
            let r = get(&format!("{base}{path}"), token).await?;
            ensure!(r.status() == 401, "{path} with {token:?}: {}", r.status());
            ensure!(r.headers().get("www-authenticate").is_some_and(|v| v == "Bearer") && r.headers().get("x-correlation-id").is_some_and(|v| v == "auth-test"), "{path}: headers {:?}", r.headers());
            let body: serde_json::Value = r.json().await?;
            ensure!(body["code"] == code && body["retriable"] == false, "{path}: {body}");
        }
        ensure!(get(&format!("{base}/health"), None).await?.status() == 200, "/health needs no token");
        ensure!(get(&format!("{base}/metrics"), None).await?.status() == 200, "/metrics needs no token");
        ensure!(get(&format!("{base}/v2/pools"), Some(OLD)).await?.status() == 200, "the client token works");
        // A node registers only with the registration token, and acts only as itself.
        let http = reqwest::Client::new();
        let body = serde_json::json!({ "protocol_version": 1, "node_id": "intruder", "machine_id": "m", "version": "t", "address": "http://127.0.0.1:9", "dispatch_token": "x".repeat(32), "pools": [] });
        ensure!(http.post(format!("{base}/v2/nodes/register")).bearer_auth(OLD).json(&body).send().await?.status() == 401, "a client token registered a node");
        let reg: serde_json::Value = http.post(format!("{base}/v2/nodes/register")).bearer_auth(REG).json(&body).send().await?.json().await?;
        let cred = reg["node_token"].as_str().context("an issued credential")?.to_string();
        let hb = serde_json::json!({ "seq": 1, "sent_at_ms": 0, "pools": [] });
        let r = http.post(format!("{base}/v2/nodes/local/heartbeat")).bearer_auth(&cred).json(&hb).send().await?;
        ensure!(r.status() == 401, "another node's credential was accepted: {}", r.status());
        ensure!(http.post(format!("{base}/v2/nodes/intruder/heartbeat")).bearer_auth(&cred).json(&hb).send().await?.status() == 200, "its own heartbeat");
        // Rotation: add the new token, then drop the old one, each with a SIGHUP.
        let cfg = stack.spec.dir.join("orchestratord.toml");
        let pid = Pid::from_raw(stack.orchd.as_ref().and_then(|c| c.id()).context("pid")? as i32);
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, text.replace(&orchd_auth(&[OLD]), &orchd_auth(&[OLD, NEW])))?;
        kill(pid, Signal::SIGHUP)?;
        wait_for("the new token to work", Duration::from_secs(10), || async { (get(&format!("{base}/v2/pools"), Some(NEW)).await.ok()?.status() == 200).then_some(()) }).await?;
        ensure!(get(&format!("{base}/v2/pools"), Some(OLD)).await?.status() == 200, "both tokens work during the rotation");
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, text.replace(&orchd_auth(&[OLD, NEW]), &orchd_auth(&[NEW])))?;
        kill(pid, Signal::SIGHUP)?;
        wait_for("the old token to stop working", Duration::from_secs(10), || async { (get(&format!("{base}/v2/pools"), Some(OLD)).await.ok()?.status() == 401).then_some(()) }).await?;
        ensure!(get(&format!("{base}/v2/pools"), Some(NEW)).await?.status() == 200, "the new token works after the rotation");
        // A broken config on SIGHUP changes nothing.
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, format!("{text}\nbogus_key = 1\n"))?;
        kill(pid, Signal::SIGHUP)?;
        wait_for("the refused reload to be logged", Duration::from_secs(10), || async {
            crate::fixtures::log_lines(&stack.orchd_log).iter().any(|l| l["event"] == "auth.reload_failed").then_some(())
        })
        .await?;
        ensure!(get(&format!("{base}/v2/pools"), Some(NEW)).await?.status() == 200, "a bad reload changed the tokens");
        // Logs name callers by fingerprint only.
        let log = std::fs::read_to_string(&stack.orchd_log)?;
        ensure!(!log.contains(OLD) && !log.contains(NEW) && !log.contains(REG) && !log.contains(&cred), "a secret reached the log");
        ensure!(log.contains(&format!("token:{}", &sha_fp(NEW))), "no fingerprint identity in the request log");
        Ok(())
    }
    .await;
    stack.shutdown().await?;
    result
}

fn sha_fp(t: &str) -> String {
    use std::fmt::Write;
    let digest = {
        // The fingerprint rule: first 6 hex of SHA-256.
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let mut child = out.expect("sha256sum");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), t.as_bytes())
            .expect("write");
        let o = child.wait_with_output().expect("sha256sum output");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let mut s = String::new();
    let _ = write!(s, "{}", &digest[..6]);
    s
}
