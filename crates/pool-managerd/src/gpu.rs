//! GPU discovery. This version asks `nvidia-smi` (present wherever the NVIDIA driver is); a node
//! without it reports no GPUs and runs `cpu` pools.

use std::process::Command;

use api::node::{GpuInfo, GpuStatus};

#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    pub utilization_pct: f64,
    pub compute_capability: Option<String>,
}

/// Queries every visible GPU; empty when there is no driver or no device.
pub fn discover() -> Vec<Gpu> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=index,name,memory.total,memory.free,utilization.gpu,compute_cap", "--format=csv,noheader,nounits"])
        .output();
    match out {
        Ok(o) if o.status.success() => parse_csv(&String::from_utf8_lossy(&o.stdout)),
        _ => vec![],
    }
}

pub fn visible_indices() -> Vec<u32> {
    discover().iter().map(|g| g.index).collect()
}

/// Parses `nvidia-smi --format=csv,noheader,nounits` rows (memory in MiB).
pub fn parse_csv(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 5 {
                return None;
            }
            let mib = |s: &str| s.parse::<u64>().ok().map(|v| v * 1024 * 1024);
            Some(Gpu {
                index: f[0].parse().ok()?,
                name: f[1].to_string(),
                vram_total_bytes: mib(f[2])?,
                vram_free_bytes: mib(f[3]).unwrap_or(0),
                utilization_pct: f[4].parse().unwrap_or(0.0),
                compute_capability: f.get(5).map(|s| s.to_string()).filter(|s| !s.is_empty() && s != "[N/A]"),
            })
        })
        .collect()
}

pub fn infos(gpus: &[Gpu]) -> Vec<GpuInfo> {
    gpus.iter()
        .map(|g| GpuInfo { device_id: g.index.to_string(), name: g.name.clone(), vram_total_bytes: g.vram_total_bytes, compute_capability: g.compute_capability.clone() })
        .collect()
}

pub fn statuses(gpus: &[Gpu]) -> Vec<GpuStatus> {
    gpus.iter()
        .map(|g| GpuStatus { device_id: g.index.to_string(), vram_total_bytes: g.vram_total_bytes, vram_free_bytes: g.vram_free_bytes, utilization_pct: g.utilization_pct })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_rows() {
        let g = parse_csv("0, NVIDIA H100 80GB HBM3, 81559, 80000, 3, 9.0\n1, X, bad, 1, 1\n");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].index, 0);
        assert_eq!(g[0].vram_total_bytes, 81559 * 1024 * 1024);
        assert_eq!(g[0].compute_capability.as_deref(), Some("9.0"));
    }
}
