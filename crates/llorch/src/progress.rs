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
        Self { tty: std::io::stderr().is_terminal(), last_decile: AtomicU8::new(u8::MAX) }
    }

    pub fn report(&self, p: Progress) {
        let mut err = std::io::stderr();
        match p {
            Progress::Step(s) => {
                let _ = writeln!(err, "{}[engine] {s}", if self.tty { "\r\x1b[2K" } else { "" });
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
