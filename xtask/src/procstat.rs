//! What the benchmarks read about a process from `/proc`: CPU time (utime + stime of
//! `/proc/<pid>/stat`, in clock ticks), resident memory (`/proc/<pid>/status`), children, and the
//! open-files limit. Figures are read, never derived from wall time or sampling.

use anyhow::Context;

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let f = stat_fields(&s);
    let field = |k: usize| -> anyhow::Result<u64> {
        f.get(k)
            .and_then(|u| u.parse::<u64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", k + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// The fields of a `/proc/<pid>/stat` line after the command name (which may hold spaces and
/// parentheses), starting at field 3 (state).
fn stat_fields(s: &str) -> Vec<&str> {
    s.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`): the unit of `/proc/<pid>/stat`'s CPU times.
pub fn clock_ticks_per_sec() -> anyhow::Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hz: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))?;
    anyhow::ensure!(hz > 0.0, "getconf CLK_TCK printed {hz}");
    Ok(hz)
}

/// CPU seconds of several processes, read together.
pub struct CpuClock {
    hz: f64,
}

impl CpuClock {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hz: clock_ticks_per_sec()?,
        })
    }

    /// CPU seconds (user + system) `pid` has used so far.
    pub fn seconds(&self, pid: u32) -> anyhow::Result<f64> {
        Ok(cpu_ticks(pid)? as f64 / self.hz)
    }

    pub fn hz(&self) -> f64 {
        self.hz
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now (VmRSS), KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory (VmHWM), KiB.
pub fn vm_hwm(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// The direct children of `pid` (processes whose parent, field 4 of their stat, is `pid`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| stat_fields(&s).get(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Raises this process's open-files limit to its hard limit (children inherit it); returns the
/// soft limit now in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_from_proc_and_grows() {
        let pid = std::process::id();
        let clock = CpuClock::new().unwrap();
        let before = clock.seconds(pid).unwrap();
        // Burn CPU until at least one clock tick shows in /proc.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while clock.seconds(pid).unwrap() <= before && t0.elapsed().as_secs() < 30 {
            for k in 0..100_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(k);
            }
            std::hint::black_box(x);
        }
        assert!(clock.seconds(pid).unwrap() > before);
        assert!(clock.hz() > 0.0);
        assert!(rss_kib(pid) > 0);
        assert!(vm_hwm(pid) >= rss_kib(pid));
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let line = "42 (a b) c)) S 7 1 1 0 -1 0 0 0 0 0 15 4 0 0";
        let f = stat_fields(line);
        assert_eq!(f[0], "S");
        assert_eq!(f[1], "7");
        assert_eq!(f[11], "15");
        assert_eq!(f[12], "4");
    }

    #[test]
    fn children_lists_a_spawned_child() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let kids = children(std::process::id());
        let _ = c.kill();
        let _ = c.wait();
        assert!(kids.contains(&c.id()));
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, Resource};
        let soft = raise_nofile();
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
    }
}
