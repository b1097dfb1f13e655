//! pool-managerd's Prometheus metrics, computed at scrape time from the pools' snapshots and
//! counters and from GPU discovery. Scraping changes nothing. The page is built from plain
//! samples ([`PoolSample`], [`crate::gpu::Gpu`]), so this module knows no pool or daemon type.

use std::fmt::Write;

use api::node::{PoolState, PoolStatus};

use crate::gpu::Gpu;

/// One pool's status and counters at scrape time.
#[derive(Debug, Clone)]
pub struct PoolSample {
    pub status: PoolStatus,
    /// Engine exits nobody asked for (crashes, failed health checks).
    pub crashes: u64,
    /// Dispatches that ended with an `end` line, with an `error` line.
    pub ended: u64,
    pub failed: u64,
}

/// The node's dispatch streams and tasks (HA): runs waiting out the grace period, attaches to a
/// running or finished task, and tasks canceled when their grace period ended.
#[derive(Debug, Clone, Default)]
pub struct TaskSample {
    pub detached: u64,
    pub reattached: u64,
    pub grace_expired: u64,
}

const STATES: [PoolState; 6] = [
    PoolState::Unloaded,
    PoolState::Provisioning,
    PoolState::Starting,
    PoolState::Ready,
    PoolState::Draining,
    PoolState::Failed,
];

/// The metrics page of node `node` with its pools and GPUs.
pub fn render(node: &str, pools: &[PoolSample], tasks: &TaskSample, gpus: &[Gpu]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let per_pool = |f: &dyn Fn(&PoolSample) -> Option<f64>| -> Vec<(String, f64)> {
        pools
            .iter()
            .filter_map(|p| {
                let labels = format!("node_id=\"{node}\",pool_id=\"{}\"", p.status.pool_id);
                f(p).map(|v| (labels, v))
            })
            .collect()
    };
    let states: Vec<(String, f64)> = pools
        .iter()
        .map(|p| &p.status)
        .flat_map(|s| {
            STATES.iter().map(move |st| {
                (
                    format!(
                        "node_id=\"{node}\",pool_id=\"{}\",state=\"{}\"",
                        s.pool_id,
                        st.as_str()
                    ),
                    if s.state == *st { 1.0 } else { 0.0 },
                )
            })
        })
        .collect();
    family(
        "pool_state",
        "gauge",
        "1 for the pool's current state, else 0.",
        states,
    );
    family(
        "pool_slots_total",
        "gauge",
        "Slots of the pool's engine.",
        per_pool(&|p| Some(p.status.slots_total as f64)),
    );
    family(
        "pool_slots_free",
        "gauge",
        "Slots not held by a dispatch.",
        per_pool(&|p| Some(p.status.slots_free as f64)),
    );
    family(
        "pool_kv_cache_usage_ratio",
        "gauge",
        "Context in use by running requests over the pool's total context.",
        per_pool(&|p| p.status.kv_cache_usage_ratio),
    );
    family(
        "engine_decode_tokens_per_second",
        "gauge",
        "EWMA of the engine's decode speed from llama-server's timings.",
        per_pool(&|p| p.status.decode_tokens_per_s),
    );
    family(
        "engine_crashes_total",
        "counter",
        "Engine exits nobody asked for (crashes, failed health checks).",
        per_pool(&|p| Some(p.crashes as f64)),
    );
    family(
        "dispatches_ended_total",
        "counter",
        "Dispatches that ended with an end line.",
        per_pool(&|p| Some(p.ended as f64)),
    );
    family(
        "dispatches_failed_total",
        "counter",
        "Dispatches that ended with an error line.",
        per_pool(&|p| Some(p.failed as f64)),
    );
    family(
        "fetched_bytes_total",
        "counter",
        "Bytes downloaded by this node: engine source archives and model files.",
        vec![
            (
                format!("node_id=\"{node}\",kind=\"engine_source\""),
                engine::provision::downloaded_bytes() as f64,
            ),
            (
                format!("node_id=\"{node}\",kind=\"model\""),
                MODEL_BYTES.load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
        ],
    );
    let node_label = format!("node_id=\"{node}\"");
    family(
        "worker_tasks_detached",
        "gauge",
        "Tasks whose dispatch stream broke, running on for the grace period.",
        vec![(node_label.clone(), tasks.detached as f64)],
    );
    family(
        "worker_tasks_reattached_total",
        "counter",
        "Dispatches that attached to a running or finished task and replayed its lines.",
        vec![(node_label.clone(), tasks.reattached as f64)],
    );
    family(
        "worker_tasks_grace_expired_total",
        "counter",
        "Tasks canceled because no dispatch attached within the grace period.",
        vec![(node_label, tasks.grace_expired as f64)],
    );
    let gpu = |f: &dyn Fn(&Gpu) -> f64| -> Vec<(String, f64)> {
        gpus.iter()
            .map(|g| (format!("node_id=\"{node}\",device=\"{}\"", g.index), f(g)))
            .collect()
    };
    family(
        "gpu_vram_total_bytes",
        "gauge",
        "VRAM per GPU.",
        gpu(&|g| g.vram_total_bytes as f64),
    );
    family(
        "gpu_vram_free_bytes",
        "gauge",
        "Free VRAM per GPU.",
        gpu(&|g| g.vram_free_bytes as f64),
    );
    family(
        "gpu_utilization_percent",
        "gauge",
        "GPU utilization.",
        gpu(&|g| g.utilization_pct),
    );
    out
}

/// Bytes of model files downloaded by this process (added after each fetch).
pub static MODEL_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
