//! Progress for long work: a bar on a terminal, a plain line every few
//! seconds otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Quiet,
}

/// Progress of one stage: files and bytes against known totals.
pub struct Progress {
    bar: Option<ProgressBar>,
    pub files: AtomicU64,
    pub bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(mode: Mode, label: &str, total_files: u64, total_bytes: u64) -> Progress {
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let files = AtomicU64::new(0);
        if mode == Mode::Quiet || total_files == 0 {
            return Progress {
                bar: None,
                files,
                bytes,
                stop,
                ticker: None,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            let (b2, by, st) = (bar.clone(), bytes.clone(), stop.clone());
            let ticker = std::thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    b2.set_position(by.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            return Progress {
                bar: Some(bar),
                files,
                bytes,
                stop,
                ticker: Some(ticker),
            };
        }
        let (by, st, label) = (bytes.clone(), stop.clone(), label.to_string());
        let ticker = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut last = Instant::now();
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    let done = by.load(Ordering::Relaxed);
                    let rate = done as f64 / t0.elapsed().as_secs_f64().max(0.001);
                    let eta = if rate > 0.0 {
                        (total_bytes.saturating_sub(done)) as f64 / rate
                    } else {
                        0.0
                    };
                    eprintln!(
                        "{label}: {} of {} ({}/s, ETA {:.0}s)",
                        human_bytes(done),
                        human_bytes(total_bytes),
                        human_bytes(rate as u64),
                        eta
                    );
                }
            }
        });
        Progress {
            bar: None,
            files,
            bytes,
            stop,
            ticker: Some(ticker),
        }
    }

    pub fn file_done(&self) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.set_message(format!("{n} files"));
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// Says, once for the process, that nothing but errors goes to stderr
/// (`--quiet`, `--json`).
pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// Whether the process is quiet (see [`set_quiet`]).
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A note on stderr for a person (what cairn is about to do); nothing when quiet.
pub fn note(msg: &str) {
    if !quiet() {
        eprintln!("{msg}");
    }
}

/// A long program's progress: on a terminal one line, rewritten every
/// second with its last output; otherwise a plain line every 10 s, so
/// that a journal or a log never stays silent for minutes.
pub struct Heartbeat {
    label: String,
    t0: Instant,
    tty: bool,
    next: std::cell::Cell<Instant>,
    drawn: std::cell::Cell<bool>,
}

impl Heartbeat {
    pub fn new(label: &str) -> Heartbeat {
        let tty = std::io::stderr().is_terminal();
        let t0 = Instant::now();
        Heartbeat {
            label: label.to_string(),
            t0,
            tty,
            next: std::cell::Cell::new(t0 + Duration::from_secs(if tty { 1 } else { 10 })),
            drawn: std::cell::Cell::new(false),
        }
    }

    /// Shows `last` (the program's last line) when it is time.
    pub fn tick(&self, last: &str) {
        if let Some(line) = self.line_at(Instant::now(), last) {
            if self.tty {
                eprint!("\r\x1b[2K{line}");
                self.drawn.set(true);
            } else {
                eprintln!("{line}");
            }
        }
    }

    /// The line to show at `now`, if it is time for one.
    fn line_at(&self, now: Instant, last: &str) -> Option<String> {
        if now < self.next.get() {
            return None;
        }
        let secs = now.duration_since(self.t0).as_secs();
        if self.tty {
            self.next.set(now + Duration::from_secs(1));
            Some(
                format!("{} [{secs}s] {last}", self.label)
                    .chars()
                    .take(terminal_width().saturating_sub(1))
                    .collect(),
            )
        } else {
            self.next.set(now + Duration::from_secs(10));
            Some(format!(
                "{}: still running after {secs}s{}",
                self.label,
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ))
        }
    }

    /// Clears the terminal line.
    pub fn done(self) {
        if self.drawn.get() {
            eprint!("\r\x1b[2K");
        }
    }
}

/// The terminal's width (COLUMNS, else 80).
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w: &usize| *w >= 20)
        .unwrap_or(80)
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Stage lines of a long command, each with the seconds since it started
/// (`[  12.3s] packing …`) on stderr; nothing when quiet.
pub struct Steps {
    t0: Instant,
    quiet: bool,
}

impl Steps {
    pub fn start(quiet: bool) -> Steps {
        Steps {
            t0: Instant::now(),
            quiet,
        }
    }

    pub fn say(&self, msg: &str) {
        if !self.quiet {
            eprintln!("[{:>6.1}s] {msg}", self.seconds());
        }
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn off_a_terminal_a_line_every_ten_seconds_with_the_last_output() {
        let mut h = super::Heartbeat::new("mksquashfs");
        h.tty = false;
        h.next.set(h.t0 + super::Duration::from_secs(10));
        let at = |s| h.t0 + super::Duration::from_secs(s);
        assert_eq!(h.line_at(at(3), "[==>  ] 10/100 10%"), None);
        assert_eq!(
            h.line_at(at(10), "[==>  ] 10/100 10%").as_deref(),
            Some("mksquashfs: still running after 10s: [==>  ] 10/100 10%")
        );
        assert_eq!(h.line_at(at(15), "x"), None);
        assert!(h.line_at(at(20), "").unwrap().ends_with("after 20s"));
    }

    #[test]
    fn human() {
        assert_eq!(super::human_bytes(10), "10 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(600 * 1024 * 1024), "600.0 MiB");
    }
}
