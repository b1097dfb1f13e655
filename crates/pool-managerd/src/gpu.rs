//! GPU discovery for this node: the [`Gpu`] record, the [`GpuBackend`] interface and its
//! backends (NVML first, `nvidia-smi` as fallback; a fixed fake exists only in the unit tests),
//! the choice of backend ([`discover`], [`discover_with`]), device-mask parsing ([`parse_mask`]) and the
//! conversion to the wire types of registration and heartbeat. A node where no backend answers
//! reports no GPUs and runs `cpu` pools.

use std::process::Command;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use api::node::{GpuInfo, GpuStatus};
use nvml_wrapper::Nvml;

#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    pub utilization_pct: f64,
    pub compute_capability: Option<String>,
}

/// One way of listing the node's GPUs. `Err` means "this backend cannot answer here" (no
/// library, no binary, driver down), so the next backend is tried; `Ok(vec![])` is an answer.
pub trait GpuBackend: Send + Sync {
    fn name(&self) -> &'static str;
    fn gpus(&self) -> Result<Vec<Gpu>, String>;
}

/// NVML through `nvml-wrapper`, which loads `libnvidia-ml.so.1` at run time. The library is
/// initialized once per process; a failed initialization is remembered and answers `Err`.
pub struct NvmlBackend;

/// `nvidia-smi --query-gpu` parsed by [`parse_csv`].
pub struct SmiBackend;

fn nvml() -> Result<&'static Nvml, String> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| Nvml::init().map_err(|e| format!("NVML init: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

fn nvml_gpu(nvml: &Nvml, index: u32) -> Result<Gpu, String> {
    let dev = nvml
        .device_by_index(index)
        .map_err(|e| format!("NVML device {index}: {e}"))?;
    let mem = dev
        .memory_info()
        .map_err(|e| format!("NVML device {index} memory: {e}"))?;
    Ok(Gpu {
        index,
        name: dev
            .name()
            .map_err(|e| format!("NVML device {index} name: {e}"))?,
        vram_total_bytes: mem.total,
        vram_free_bytes: mem.free,
        // Not supported on every device (e.g. MIG instances); report 0 as nvidia-smi's parse does.
        utilization_pct: dev
            .utilization_rates()
            .map(|u| f64::from(u.gpu))
            .unwrap_or(0.0),
        compute_capability: dev
            .cuda_compute_capability()
            .ok()
            .map(|c| format!("{}.{}", c.major, c.minor)),
    })
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &'static str {
        "nvml"
    }
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        let nvml = nvml()?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        (0..count).map(|i| nvml_gpu(nvml, i)).collect()
    }
}

impl GpuBackend for SmiBackend {
    fn name(&self) -> &'static str {
        "nvidia-smi"
    }
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        // A node without `nvidia-smi` would search PATH and fork on every heartbeat and scrape;
        // it is looked for again only a minute after it was found missing.
        static MISSING_AT: Mutex<Option<Instant>> = Mutex::new(None);
        let missing = || MISSING_AT.lock().unwrap_or_else(|e| e.into_inner());
        if missing().is_some_and(|at| at.elapsed() < SMI_RECHECK) {
            return Err("nvidia-smi: not found".into());
        }
        let out = Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,name,memory.total,memory.free,utilization.gpu,compute_cap",
                "--format=csv,noheader,nounits",
            ])
            .output()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    *missing() = Some(Instant::now());
                }
                format!("nvidia-smi: {e}")
            })?;
        if !out.status.success() {
            return Err(format!(
                "nvidia-smi exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(parse_csv(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The GPUs of the first backend that answers, and that backend's name; empty and `None` when
/// none does.
pub fn discover_with(backends: &[&dyn GpuBackend]) -> (Vec<Gpu>, Option<&'static str>) {
    backends
        .iter()
        .find_map(|b| b.gpus().ok().map(|g| (g, Some(b.name()))))
        .unwrap_or((vec![], None))
}

/// How long a missing `nvidia-smi` is not looked for again.
const SMI_RECHECK: Duration = Duration::from_secs(60);

/// [`discover`] on the blocking pool: NVML queries and `nvidia-smi` block for milliseconds, and
/// pool-managerd's runtime has one worker thread by default (decision 74).
pub async fn discover_off_runtime() -> Vec<Gpu> {
    tokio::task::spawn_blocking(discover)
        .await
        .unwrap_or_default()
}

/// Every visible GPU, from NVML or else `nvidia-smi`; empty when there is no driver or no device.
/// Runs on every heartbeat and scrape, so NVML is initialized only once.
pub fn discover() -> Vec<Gpu> {
    let (gpus, source) = discover_with(&[&NvmlBackend, &SmiBackend]);
    static LOGGED: Once = Once::new();
    LOGGED.call_once(|| {
        tracing::info!(
            backend = source.unwrap_or("none"),
            gpus = gpus.len(),
            "GPU discovery"
        )
    });
    gpus
}

pub fn visible_indices() -> Vec<u32> {
    discover().iter().map(|g| g.index).collect()
}

/// Parses a device mask: `cpu` is `None`, otherwise comma-separated GPU indices, sorted and
/// without repeats. Whether the indices exist on this node is the config check's business.
pub fn parse_mask(mask: &str) -> Result<Option<Vec<u32>>, String> {
    if mask.trim() == "cpu" {
        return Ok(None);
    }
    let mut idx = mask
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("{mask:?} is not \"cpu\" or comma-separated GPU indices"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    idx.sort_unstable();
    idx.dedup();
    Ok(Some(idx))
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
                compute_capability: f
                    .get(5)
                    .map(|s| s.to_string())
                    .filter(|s| !s.is_empty() && s != "[N/A]"),
            })
        })
        .collect()
}

pub fn infos(gpus: &[Gpu]) -> Vec<GpuInfo> {
    gpus.iter()
        .map(|g| GpuInfo {
            device_id: api::DeviceId::from_index(g.index),
            name: g.name.clone(),
            vram_total_bytes: g.vram_total_bytes,
            compute_capability: g.compute_capability.clone(),
        })
        .collect()
}

pub fn statuses(gpus: &[Gpu]) -> Vec<GpuStatus> {
    gpus.iter()
        .map(|g| GpuStatus {
            device_id: api::DeviceId::from_index(g.index),
            vram_total_bytes: g.vram_total_bytes,
            vram_free_bytes: g.vram_free_bytes,
            utilization_pct: g.utilization_pct,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed answer; compiled only into the tests.
    struct FakeBackend(Vec<Gpu>);

    impl GpuBackend for FakeBackend {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn gpus(&self) -> Result<Vec<Gpu>, String> {
            Ok(self.0.clone())
        }
    }

    struct Failing;
    impl GpuBackend for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn gpus(&self) -> Result<Vec<Gpu>, String> {
            Err("no driver".into())
        }
    }

    fn gpu(index: u32, cc: Option<&str>) -> Gpu {
        Gpu {
            index,
            name: format!("GPU {index}"),
            vram_total_bytes: 80 << 30,
            vram_free_bytes: 60 << 30,
            utilization_pct: 12.5,
            compute_capability: cc.map(str::to_string),
        }
    }

    #[test]
    fn first_answering_backend_wins_and_failures_are_skipped() {
        let a = FakeBackend(vec![gpu(0, Some("9.0"))]);
        let b = FakeBackend(vec![gpu(1, None), gpu(2, None)]);
        let (g, src) = discover_with(&[&Failing, &a, &b]);
        assert_eq!((g, src), (vec![gpu(0, Some("9.0"))], Some("fake")));
    }

    #[test]
    fn empty_answer_is_an_answer() {
        let (g, src) = discover_with(&[&FakeBackend(vec![]), &FakeBackend(vec![gpu(0, None)])]);
        assert_eq!((g.len(), src), (0, Some("fake")));
    }

    #[test]
    fn all_failing_or_no_backends_give_nothing() {
        assert_eq!(discover_with(&[&Failing, &Failing]), (vec![], None));
        assert_eq!(discover_with(&[]), (vec![], None));
    }

    #[test]
    fn infos_and_statuses_carry_the_values() {
        let (g, _) = discover_with(&[&FakeBackend(vec![gpu(3, Some("8.6")), gpu(5, None)])]);
        let i = infos(&g);
        assert_eq!(
            i[0],
            GpuInfo {
                device_id: api::DeviceId::from_index(3),
                name: "GPU 3".into(),
                vram_total_bytes: 80 << 30,
                compute_capability: Some("8.6".into())
            }
        );
        assert_eq!(i[1].compute_capability, None);
        let s = statuses(&g);
        assert_eq!(
            s[1],
            GpuStatus {
                device_id: api::DeviceId::from_index(5),
                vram_total_bytes: 80 << 30,
                vram_free_bytes: 60 << 30,
                utilization_pct: 12.5
            }
        );
        assert!(infos(&[]).is_empty() && statuses(&[]).is_empty());
    }

    #[test]
    fn parses_nvidia_smi_rows() {
        let g = parse_csv("0, NVIDIA H100 80GB HBM3, 81559, 80000, 3, 9.0\n1, X, bad, 1, 1\n");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].index, 0);
        assert_eq!(g[0].vram_total_bytes, 81559 * 1024 * 1024);
        assert_eq!(g[0].compute_capability.as_deref(), Some("9.0"));
    }

    #[test]
    fn parse_csv_edge_cases() {
        assert!(parse_csv("").is_empty());
        assert!(
            parse_csv("\n  \n0, short, 1\n").is_empty(),
            "blank and short rows are skipped"
        );
        assert!(
            parse_csv("x, A, 1, 1, 1\n").is_empty(),
            "non-numeric index is skipped"
        );
        let g = parse_csv(
            "2, A, 1024, [N/A], [N/A], [N/A]\n3, B, 2048, 1024, 7\n4, C, 10, 5, 50.5, \n",
        );
        assert_eq!(g.len(), 3);
        assert_eq!(
            (
                g[0].vram_free_bytes,
                g[0].utilization_pct,
                g[0].compute_capability.clone()
            ),
            (0, 0.0, None)
        );
        assert_eq!(
            (
                g[1].index,
                g[1].vram_free_bytes,
                g[1].compute_capability.clone()
            ),
            (3, 1024 << 20, None),
            "5-column rows (old drivers) parse"
        );
        assert_eq!(
            (g[2].utilization_pct, g[2].compute_capability.clone()),
            (50.5, None)
        );
    }

    #[test]
    fn masks_parse_sorted_without_repeats() {
        assert_eq!(parse_mask("cpu"), Ok(None));
        assert_eq!(parse_mask(" cpu "), Ok(None));
        assert_eq!(parse_mask("2,0,2"), Ok(Some(vec![0, 2])));
        assert_eq!(parse_mask(" 1 "), Ok(Some(vec![1])));
        assert!(parse_mask("").is_err());
        assert!(parse_mask("0,gpu1")
            .expect_err("malformed")
            .contains("not \"cpu\""));
    }

    /// Trivially passes without a driver; on a GPU machine both real backends must agree.
    #[test]
    #[ignore = "needs an NVIDIA GPU and driver: cargo test -p pool-managerd -- --ignored nvml"]
    fn nvml_and_smi_agree_where_both_answer() {
        let n = NvmlBackend.gpus().expect("NVML answers on a GPU machine");
        let s = SmiBackend
            .gpus()
            .expect("nvidia-smi answers on a GPU machine");
        assert!(!n.is_empty(), "a GPU machine lists at least one GPU");
        let key = |g: &Gpu| {
            (
                g.index,
                g.name.clone(),
                g.vram_total_bytes >> 20,
                g.compute_capability.clone(),
            )
        };
        assert_eq!(
            n.iter().map(key).collect::<Vec<_>>(),
            s.iter().map(key).collect::<Vec<_>>()
        );
    }
}
