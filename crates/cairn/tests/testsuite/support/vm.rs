//! Booting a disk or ISO with `cairn vm run` for a VM proof: one run, its
//! console and marker logs, and a verdict message that names the boot, the
//! time spent and the last console lines — so a failure on a slow machine
//! says where it stood. Timeouts are base values (measured here, with a
//! margin of three or more) times one factor from the environment,
//! `CAIRN_TEST_TIME_FACTOR` (default 1), for machines slower than this one.

use std::fs;
use std::path::Path;

use crate::support::{cairn, text};

/// `CAIRN_TEST_TIME_FACTOR`: every VM timeout is multiplied by it.
pub fn factor() -> f64 {
    std::env::var("CAIRN_TEST_TIME_FACTOR")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0)
}

/// A timeout of `base` seconds, scaled.
pub fn secs(base: u64) -> String {
    ((base as f64) * factor()).ceil().to_string()
}

/// What one VM run showed.
pub struct Boot {
    pub name: String,
    /// The first line that began with the marker, if one did.
    pub marker: Option<String>,
    /// First serial port (GRUB, kernel, initramfs, systemd).
    pub console: String,
    /// Second serial port (the image's marker line, the test probe's lines).
    pub markers: String,
    pub seconds: f64,
    pub timed_out: bool,
    pub timeout: String,
}

impl Boot {
    /// The run, for an assertion message: boot name, outcome, time, the
    /// marker port whole, the console's last lines.
    pub fn why(&self) -> String {
        let tail: Vec<&str> = self.console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "boot {}: {} after {:.1}s (timeout {}s, time factor {})\n\
             -- marker port:\n{}\n-- last console lines:\n{}",
            self.name,
            match (&self.marker, self.timed_out) {
                (Some(m), _) => format!("reached {m:?}"),
                (None, true) => "TIMED OUT without its marker".to_string(),
                (None, false) => "ended without its marker".to_string(),
            },
            self.seconds,
            self.timeout,
            factor(),
            self.markers.trim_end(),
            tail.join("\n")
        )
    }

    /// Asserts that the run ended at `want` (the whole marker line).
    #[track_caller]
    pub fn reached(&self, want: &str) {
        assert_eq!(self.marker.as_deref(), Some(want), "{}", self.why());
    }

    /// Asserts that the console shows `s`.
    #[track_caller]
    pub fn console_has(&self, s: &str) {
        assert!(
            self.console.contains(s),
            "console lacks {s:?}\n{}",
            self.why()
        );
    }

    /// Asserts that neither port shows `s` (an attacker's code announcing
    /// itself).
    #[track_caller]
    pub fn never_shows(&self, s: &str) {
        for t in [&self.console, &self.markers] {
            assert!(!t.contains(s), "{s:?} appeared\n{}", self.why());
        }
    }

    /// Asserts that the console shows `s`, however GRUB wrapped it (at 80
    /// columns, a space turned into a line break): whitespace runs compare
    /// as one space.
    #[track_caller]
    pub fn console_has_wrapped(&self, s: &str) {
        let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat(&self.console).contains(&flat(s)),
            "console lacks {s:?}\n{}",
            self.why()
        );
    }

    /// Asserts that the marker port shows `s`.
    #[track_caller]
    pub fn markers_have(&self, s: &str) {
        assert!(
            self.markers.contains(s),
            "marker port lacks {s:?}\n{}",
            self.why()
        );
    }
}

/// Boots `media` with `cairn vm run` (TCG unless `--accel` is in `extra`),
/// stopping at `--marker` (CAIRN-BOOTED unless `extra` names one) or the
/// timeout (`base_timeout` seconds, scaled, unless `extra` has `--timeout`).
///
/// A boot that leaves nothing behind on its media (a network boot, or an
/// ISO, which qemu opens read-only) and hung in the emulator — its kernel
/// reporting an RCU stall, a vCPU whose timer never fired, as qemu's TCG
/// does now and then on a loaded two-core host — runs once more, from the
/// same state, and says so (in its output and in the boot times
/// scripts/test prints). A disk boot never does: its first run may have
/// changed the disk (a boot counter, a grubenv), so a second would prove
/// something else.
pub fn boot(
    store: &Path,
    media: &Path,
    firmware: &str,
    entry: Option<&str>,
    extra: &[&str],
    name: &str,
    base_timeout: u64,
) -> Boot {
    let b = boot_once(store, media, firmware, entry, extra, name, base_timeout);
    let stateless = media.as_os_str().is_empty() || media.extension().is_some_and(|e| e == "iso");
    if !(stateless && b.emulator_stalled()) {
        return b;
    }
    let log = store.join(format!("vm-{name}"));
    let kept = store.join(format!("vm-{name}-stalled"));
    let _ = fs::remove_dir_all(&kept);
    fs::rename(&log, &kept).expect("keep the stalled run's logs");
    record(&format!(
        "boot {name}: RETRIED: the emulator stalled (an RCU stall in the guest \
         kernel after {:.1}s; its logs are in {})",
        b.seconds,
        kept.display()
    ));
    boot_once(store, media, firmware, entry, extra, name, base_timeout)
}

impl Boot {
    /// The run hung in the emulator, not in what it booted: no marker, and
    /// the guest kernel reported a CPU that stopped taking its timer.
    fn emulator_stalled(&self) -> bool {
        self.marker.is_none() && self.console.contains("rcu_preempt detected stalls")
    }
}

/// Appends `line` to the boot times scripts/test prints (a passing test's
/// output is swallowed, so every run reports its boot times this way).
fn record(line: &str) {
    eprintln!("{line}");
    let times = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-times.txt");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(times) {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

/// One run of [`boot`].
fn boot_once(
    store: &Path,
    media: &Path,
    firmware: &str,
    entry: Option<&str>,
    extra: &[&str],
    name: &str,
    base_timeout: u64,
) -> Boot {
    let log = store.join(format!("vm-{name}"));
    let timeout = secs(base_timeout);
    // No media (an empty path): a network boot (`--netboot` in `extra`).
    let mut args = vec!["vm", "run"];
    if !media.as_os_str().is_empty() {
        args.push(media.to_str().unwrap());
    }
    args.extend([
        "--firmware",
        firmware,
        "--json",
        "--log-dir",
        log.to_str().unwrap(),
    ]);
    // `--stay-up` (the test's, not cairn's): the image does not power off
    // after its marker (a machine that goes on to pull and switch).
    let stay_up = extra.contains(&"--stay-up");
    let extra: Vec<&str> = extra
        .iter()
        .copied()
        .filter(|a| *a != "--stay-up")
        .collect();
    let extra = extra.as_slice();
    if !stay_up {
        args.push("--poweroff");
    }
    if !extra.contains(&"--marker") {
        args.extend(["--marker", "CAIRN-BOOTED"]);
    }
    if let Some(e) = entry {
        args.extend(["--entry", e]);
    }
    args.extend(extra);
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", &timeout]);
    }
    if !extra.contains(&"--accel") {
        args.extend(["--accel", "tcg"]);
    }
    let out = cairn(store, &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("boot {name}: vm run gave no report ({e}):\n{}", text(&out)));
    let read = |f: &str| {
        cairn::vm::strip_ansi(&String::from_utf8_lossy(
            &fs::read(log.join(f)).unwrap_or_default(),
        ))
    };
    let b = Boot {
        name: name.to_string(),
        marker: v["marker_line"].as_str().map(String::from),
        console: read("console.log"),
        markers: read("marker.log"),
        seconds: v["seconds_to_marker"]
            .as_f64()
            .unwrap_or(v["seconds"].as_f64().unwrap_or(0.0)),
        timed_out: v["timed_out"].as_bool().unwrap_or(false),
        timeout,
    };
    let line = format!(
        "boot {name} ({firmware}, entry {entry:?}): {:?} after {:.1}s",
        b.marker, b.seconds
    );
    record(&line);
    b
}

#[cfg(test)]
mod tests {
    use super::Boot;

    fn run(marker: Option<&str>, console: &str) -> Boot {
        Boot {
            name: "t".into(),
            marker: marker.map(String::from),
            console: console.into(),
            markers: String::new(),
            seconds: 1.0,
            timed_out: marker.is_none(),
            timeout: "1".into(),
        }
    }

    /// Only a hang the guest kernel blames on a stalled CPU counts as the
    /// emulator's: a plain timeout, a panic, or a stall after the marker
    /// is the boot's own result and is never retried.
    #[test]
    fn only_an_rcu_stall_without_a_marker_is_the_emulators() {
        let stall = "[ 127.3] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:";
        assert!(run(None, stall).emulator_stalled());
        assert!(!run(Some("CAIRN-BOOTED x"), stall).emulator_stalled());
        assert!(!run(None, "Kernel panic - not syncing").emulator_stalled());
        assert!(!run(None, "").emulator_stalled());
    }
}
