//! Terminal progress for long work: a rewritten line on a terminal, occasional plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};

use engine::Progress;

pub struct BuildProgress {
    tty: bool,
    last_decile: AtomicU8,
}

impl BuildProgress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last_decile: AtomicU8::new(u8::MAX),
        }
    }

    pub fn report(&self, p: Progress) {
        let mut err = std::io::stderr();
        match p {
            Progress::Step(s) => {
                let _ = writeln!(
                    err,
                    "{}[engine] {s}",
                    if self.tty { "\r\x1b[2K" } else { "" }
                );
            }
            Progress::Build { pct, line } => {
                if self.tty {
                    let short: String = line.chars().take(100).collect();
                    let _ = write!(err, "\r\x1b[2K[engine] {pct:>3}% {short}");
                } else if self.last_decile.swap(pct / 10, Ordering::Relaxed) != pct / 10 {
                    let _ = writeln!(err, "[engine] build {pct}%");
                }
            }
        }
    }
}

/// A download's progress on stderr: a bar rewritten in place (at most ten times a second) on a
/// terminal, otherwise one plain line per 10% (or every 10 s when the total is unknown).
pub struct ByteProgress {
    label: String,
    tty: bool,
    t0: std::time::Instant,
    state: std::sync::Mutex<ByteState>,
}

#[derive(Default)]
struct ByteState {
    /// Bytes already present when the first report came (a resumed download): not counted in the
    /// rate.
    base: Option<u64>,
    last_draw: Option<std::time::Duration>,
    plain: PlainLines,
    drawn: bool,
}

/// When a plain (non-terminal) progress line is due: at each new 10% step of a known total, or
/// every 10 s without one.
#[derive(Default)]
pub struct PlainLines {
    last_decile: Option<u64>,
    last_at: Option<std::time::Duration>,
}

impl PlainLines {
    pub fn due(&mut self, done: u64, total: Option<u64>, elapsed: std::time::Duration) -> bool {
        match total.filter(|t| *t > 0) {
            Some(t) => {
                let decile = (done.min(t) * 10) / t;
                if self.last_decile == Some(decile) {
                    return false;
                }
                self.last_decile = Some(decile);
                true
            }
            None => {
                if self.last_at.is_some_and(|at| {
                    elapsed.saturating_sub(at) < std::time::Duration::from_secs(10)
                }) {
                    return false;
                }
                self.last_at = Some(elapsed);
                true
            }
        }
    }
}

impl ByteProgress {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            tty: std::io::stderr().is_terminal(),
            t0: std::time::Instant::now(),
            state: Default::default(),
        }
    }

    /// Reports `done` of `total` bytes.
    pub fn update(&self, done: u64, total: Option<u64>) {
        let elapsed = self.t0.elapsed();
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let base = *st.base.get_or_insert(done);
        let rate = rate(done.saturating_sub(base), elapsed);
        let mut err = std::io::stderr();
        if self.tty {
            let finished = total.is_some_and(|t| done >= t);
            if !finished
                && st.last_draw.is_some_and(|at| {
                    elapsed.saturating_sub(at) < std::time::Duration::from_millis(100)
                })
            {
                return;
            }
            st.last_draw = Some(elapsed);
            st.drawn = true;
            let _ = write!(
                err,
                "\r\x1b[2K[{}] {}",
                self.label,
                render_bar(done, total, rate, 24)
            );
        } else if st.plain.due(done, total, elapsed) {
            let _ = writeln!(err, "[{}] {}", self.label, render_plain(done, total, rate));
        }
    }

    /// Clears the bar (terminals only) before the next output.
    pub fn finish(&self) {
        if self.tty && self.state.lock().is_ok_and(|s| s.drawn) {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Bytes per second over `elapsed` (None before any time has passed or any byte arrived).
pub fn rate(bytes: u64, elapsed: std::time::Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (secs >= 0.001 && bytes > 0).then(|| bytes as f64 / secs)
}

/// `[#########---------------]  37%  37.0 MiB / 100.0 MiB  12.3 MiB/s  ETA 5s`; without a total,
/// `37.0 MiB  12.3 MiB/s`.
pub fn render_bar(done: u64, total: Option<u64>, rate: Option<f64>, width: usize) -> String {
    let speed = rate
        .map(|r| format!("  {}/s", human_bytes(r as u64)))
        .unwrap_or_default();
    let Some(total) = total.filter(|t| *t > 0) else {
        return format!("{}{speed}", human_bytes(done));
    };
    let done = done.min(total);
    let filled = ((done as u128 * width as u128) / total as u128) as usize;
    let pct = (done as u128 * 100 / total as u128) as u64;
    let eta = match rate {
        Some(r) if r > 0.0 && done < total => format!(
            "  ETA {}",
            human_duration(((total - done) as f64 / r).ceil() as u64)
        ),
        _ => String::new(),
    };
    format!(
        "[{}{}] {pct:>3}%  {} / {}{speed}{eta}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        human_bytes(done),
        human_bytes(total)
    )
}

/// `37% (37.0 MiB / 100.0 MiB, 12.3 MiB/s)`, for logs and pipes.
pub fn render_plain(done: u64, total: Option<u64>, rate: Option<f64>) -> String {
    let speed = rate
        .map(|r| format!(", {}/s", human_bytes(r as u64)))
        .unwrap_or_default();
    match total.filter(|t| *t > 0) {
        Some(t) => format!(
            "{}% ({} / {}{speed})",
            done.min(t) as u128 * 100 / t as u128,
            human_bytes(done.min(t)),
            human_bytes(t)
        ),
        None => format!("{}{}", human_bytes(done), speed.replacen(", ", " at ", 1)),
    }
}

/// Binary units with one decimal: `512 B`, `1.5 KiB`, `100.0 MiB`, `4.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `42s`, `3m05s`, `1h02m`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn byte_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(100 * MIB), "100.0 MiB");
        assert_eq!(human_bytes(4 * 1024 * MIB + 200 * MIB), "4.2 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(185), "3m05s");
        assert_eq!(human_duration(3720), "1h02m");
    }

    #[test]
    fn bar_with_a_total() {
        let r = rate(25 * MIB, Duration::from_secs(2));
        assert_eq!(
            render_bar(25 * MIB, Some(100 * MIB), r, 20),
            "[#####---------------]  25%  25.0 MiB / 100.0 MiB  12.5 MiB/s  ETA 6s"
        );
        assert_eq!(
            render_bar(100 * MIB, Some(100 * MIB), r, 10),
            "[##########] 100%  100.0 MiB / 100.0 MiB  12.5 MiB/s"
        );
        // No time has passed: no rate, no ETA; more than the total is shown as the total.
        assert_eq!(
            render_bar(0, Some(MIB), rate(0, Duration::ZERO), 4),
            "[----]   0%  0 B / 1.0 MiB"
        );
        assert_eq!(
            render_bar(0, Some(MIB), rate(0, Duration::from_secs(1)), 4),
            "[----]   0%  0 B / 1.0 MiB"
        );
        assert_eq!(
            render_bar(2 * MIB, Some(MIB), None, 4),
            "[####] 100%  1.0 MiB / 1.0 MiB"
        );
    }

    #[test]
    fn bar_without_a_total() {
        assert_eq!(
            render_bar(3 * MIB, None, Some(MIB as f64), 20),
            "3.0 MiB  1.0 MiB/s"
        );
        assert_eq!(render_bar(3 * MIB, Some(0), None, 20), "3.0 MiB");
        assert_eq!(
            render_plain(3 * MIB, None, Some(MIB as f64)),
            "3.0 MiB at 1.0 MiB/s"
        );
        assert_eq!(
            render_plain(MIB / 2, Some(MIB), Some(MIB as f64)),
            "50% (512.0 KiB / 1.0 MiB, 1.0 MiB/s)"
        );
    }

    #[test]
    fn plain_lines_once_per_decile() {
        let mut p = PlainLines::default();
        let t = Duration::from_secs(1);
        let due: Vec<u64> = (0..=100)
            .filter(|pct| p.due(pct * MIB, Some(100 * MIB), t))
            .collect();
        assert_eq!(due, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        // Unknown total: at most one line per 10 s.
        let mut p = PlainLines::default();
        let due: Vec<u64> = (0..35)
            .filter(|s| p.due(s * MIB, None, Duration::from_secs(*s)))
            .collect();
        assert_eq!(due, [0, 10, 20, 30]);
    }
}
