//! What a machine tells the build host: a small signed report after each
//! pull, after each boot decision (the health check's verdict) and on a
//! timer. It goes through the web server that serves the store (WebDAV
//! `PUT` into `<store>/fleet/inbox/<machine>/report.json`, nginx's
//! configuration from `cairn publish --nginx-config`): no server of cairn's
//! own. The build host takes it in with `cairn fleet ingest` (`inbox`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::status::Status;
use crate::mirror::url::RepoUrl;
use crate::trust::machine::MachineKey;

/// An envelope larger than this is refused unread (nginx's
/// `client_max_body_size` in the printed configuration is the same).
pub const REPORT_LIMIT: u64 = 64 << 10;
/// The health check's output kept in a report (its end: where the error is).
pub const HEALTH_LIMIT: usize = 4096;
/// A report's file under the inbox: `<machine>/report.json`.
pub const REPORT_FILE: &str = "report.json";
/// Where a machine keeps its last report's number (the boot partition).
const SEQ_FILE: &str = "cairn/report-seq";
/// Where a boot whose health check failed on trial leaves the verdict and
/// the check's output before it reboots (booted.sh).
pub const FAILURE_FILE: &str = "cairn/health-failed";

/// Why a report was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// After a pull (its outcome or its error).
    Pull,
    /// After the boot's health check decided.
    Boot,
    /// The report timer.
    Timer,
    /// By hand.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LastPull {
    /// `up-to-date`, `held-back`, `staged`, `already-there`, `gave-up`, or
    /// `failed` (then `error`).
    pub outcome: String,
    pub version: Option<String>,
    pub at: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Report {
    pub schema_version: u32,
    /// The machine's id (its boot partition's UUID), as enrolled.
    pub machine: String,
    /// Grows with every report of this machine: an older one is a replay.
    pub seq: u64,
    pub sent_at: i64,
    pub reason: Reason,
    pub profile: Option<String>,
    /// `PROFILE/VERSION` this boot runs.
    pub booted: Option<String>,
    /// The menu entries as the GRUB environment block holds them.
    pub next_boot: Option<String>,
    pub on_trial: Option<String>,
    pub tries_left: Option<u32>,
    pub trial_passed: bool,
    pub last_good: Option<String>,
    pub refused: Option<String>,
    /// `passed` or `failed: …` (the check's output, its last 4 KiB).
    pub health: Option<String>,
    /// The last failed health check on a trial, as the boot that failed
    /// left it on the boot partition before rebooting (its last 4 KiB).
    pub last_failure: Option<String>,
    pub last_pull: Option<LastPull>,
    /// `PROFILE/VERSION` of each image on the boot disk.
    pub images: Vec<String>,
    pub free_bytes: Option<u64>,
    pub kernel: Option<String>,
    pub uptime_seconds: Option<u64>,
}

/// What crosses the wire: the report's exact bytes and their signature.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Envelope {
    pub report: String,
    /// Ed25519 (hex) by the machine's key over the report's bytes.
    pub signature: String,
}

/// The last `limit` bytes of `s` (at a character boundary), marked cut.
pub fn tail(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut at = s.len() - limit;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    format!("[…] {}", &s[at..])
}

/// Entries on a boot partition are strings its writer chose: shown as
/// `PROFILE/VERSION` when they name an image, else kept, bounded.
fn bounded(s: Option<String>) -> Option<String> {
    s.map(|s| tail(&s, 256))
}

impl Report {
    /// A report of the boot partition's status (`s`), this machine's `id`.
    pub fn of(
        id: &str,
        profile: Option<&str>,
        reason: Reason,
        s: Status,
        root: Option<&Path>,
        on_machine: bool,
    ) -> Report {
        let last_pull = s.last_pull.map(|p| LastPull {
            outcome: serde_json::to_value(p.outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            version: p.version.or(p.newest),
            at: p.at,
            error: None,
        });
        let read = |p: &str| std::fs::read_to_string(p).ok().filter(|_| on_machine);
        Report {
            schema_version: 1,
            machine: id.to_string(),
            seq: 0,
            sent_at: crate::unix_now(),
            reason,
            profile: profile.map(String::from),
            booted: s.booted.map(|b| b.image),
            next_boot: bounded(s.next_boot),
            on_trial: bounded(s.on_trial),
            tries_left: s.tries_left,
            trial_passed: s.trial_passed,
            last_good: bounded(s.last_good),
            refused: bounded(s.refused),
            health: s.health.map(|h| tail(&h, HEALTH_LIMIT)),
            last_failure: root
                .and_then(|r| crate::fsutil::small_file(&r.join(FAILURE_FILE), 16 << 10).ok())
                .map(|b| tail(String::from_utf8_lossy(&b).trim(), HEALTH_LIMIT)),
            last_pull,
            images: s
                .images
                .iter()
                .take(64)
                .map(|i| format!("{}/{}", i.profile, i.version))
                .collect(),
            free_bytes: root.and_then(free_bytes),
            kernel: read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_string()),
            uptime_seconds: read("/proc/uptime").and_then(|u| u.split('.').next()?.parse().ok()),
        }
    }

    /// A failed pull's error, in the report (bounded).
    pub fn pull_failed(&mut self, error: &str) {
        self.last_pull = Some(LastPull {
            outcome: "failed".into(),
            version: None,
            at: crate::unix_now(),
            error: Some(tail(error, 1024)),
        });
    }
}

/// The free bytes of the file system at `root`.
pub fn free_bytes(root: &Path) -> Option<u64> {
    rustix::fs::statvfs(root)
        .ok()
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// Numbers the report (greater than this partition's last, and than the
/// clock in milliseconds, so a reset partition still counts up), records
/// the number, signs: the envelope's bytes and the number.
pub fn seal(root: &Path, key: &MachineKey, mut r: Report) -> Result<(Vec<u8>, u64)> {
    let p = root.join(SEQ_FILE);
    let last: u64 = match crate::fsutil::small_file(&p, 64) {
        Ok(b) => String::from_utf8_lossy(&b).trim().parse().unwrap_or(0),
        Err(_) => 0,
    };
    let now_ms = u64::try_from(crate::unix_now())
        .unwrap_or(0)
        .saturating_mul(1000);
    r.seq = last.saturating_add(1).max(now_ms);
    crate::fsutil::write_atomic(&p, format!("{}\n", r.seq).as_bytes())?;
    let report = serde_json::to_string(&r)?;
    let env = Envelope {
        signature: key.sign(report.as_bytes()),
        report,
    };
    let bytes = serde_json::to_vec(&env)?;
    if bytes.len() as u64 > REPORT_LIMIT {
        bail!(
            "a report of {} bytes: more than the build host takes",
            bytes.len()
        );
    }
    Ok((bytes, r.seq))
}

/// Where a report goes below a base URL.
pub fn report_url(base: &RepoUrl, machine: &str) -> String {
    base.join(&format!("reports/{machine}/{REPORT_FILE}"))
}

/// Sends the envelope to the first base URL that takes it (2xx to a PUT);
/// the ones that did not, and why. Bounded in time: a report never holds
/// a pull or a boot up for long.
pub fn send(urls: &[RepoUrl], machine: &str, body: &[u8]) -> Result<String> {
    crate::names::check("machine id", machine)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .user_agent(format!("cairn/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut why = Vec::new();
    for u in urls {
        if !u.is_http() {
            why.push(format!("{u}: reports go over HTTP(S)"));
            continue;
        }
        let url = report_url(u, machine);
        match agent
            .put(&url)
            .header("Content-Type", "application/json")
            .send(body)
        {
            Ok(r) if r.status().is_success() => return Ok(url),
            Ok(r) => why.push(format!("{url}: {}", r.status())),
            Err(e) => why.push(format!("{url}: {e}")),
        }
    }
    bail!("no server took the report: {}", why.join("; "))
}

/// The report of an envelope's bytes, its signature checked against
/// `public` (hex) — the one parse of a report the build host does.
pub fn open(bytes: &[u8], public: &str) -> Result<Report> {
    if bytes.len() as u64 > REPORT_LIMIT {
        bail!("oversized ({} bytes)", bytes.len());
    }
    let env: Envelope = serde_json::from_slice(bytes).context("not a report envelope")?;
    crate::trust::machine::verify(public, env.report.as_bytes(), &env.signature)?;
    let r: Report =
        serde_json::from_str(&env.report).context("a signed report that does not parse")?;
    if r.schema_version != 1 {
        bail!("report schema {}: not known", r.schema_version);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end_within_the_limit() {
        assert_eq!(tail("abc", 5), "abc");
        let t = tail(&"é".repeat(3000), HEALTH_LIMIT);
        assert!(
            t.len() <= HEALTH_LIMIT + 8 && t.starts_with("[…] "),
            "{}",
            t.len()
        );
    }

    #[test]
    fn sealed_reports_open_only_with_their_key_and_count_up() {
        let d = tempfile::tempdir().unwrap();
        let k = MachineKey::generate().unwrap();
        let r = Report::of(
            "m1",
            Some("web"),
            Reason::Manual,
            Status::empty(),
            None,
            false,
        );
        let (a, _) = seal(d.path(), &k, r.clone()).unwrap();
        let (b, _) = seal(d.path(), &k, r).unwrap();
        let ra = open(&a, &k.public()).unwrap();
        let rb = open(&b, &k.public()).unwrap();
        assert!(rb.seq > ra.seq, "{} then {}", ra.seq, rb.seq);
        assert_eq!(ra.machine, "m1");
        let other = MachineKey::generate().unwrap();
        assert!(open(&a, &other.public()).is_err());
        // A changed report under the old signature.
        let mut env: Envelope = serde_json::from_slice(&a).unwrap();
        env.report = env.report.replace("\"m1\"", "\"m2\"");
        assert!(open(&serde_json::to_vec(&env).unwrap(), &k.public()).is_err());
        assert!(open(&vec![b' '; REPORT_LIMIT as usize + 1], &k.public()).is_err());
    }
}
