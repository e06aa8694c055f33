//! What a profile says about delivery: where its machines pull newer
//! images from and what they do with one (`[fleet]`), and the check that
//! decides whether a boot is good (`[health]`).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// What a machine does once it has pulled a newer image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Put it on the boot disk as the default on trial; boot it whenever.
    Stage,
    /// Then reboot through the firmware now.
    Reboot,
    /// Then switch to it with kexec now (a reboot when kexec cannot).
    Kexec,
    /// Then switch to it without restarting the kernel (systemd's
    /// soft-reboot) when it has the running kernel; else kexec, else a
    /// reboot.
    SoftReboot,
    /// Then switch to it (kexec) inside the maintenance window only.
    Window,
    /// Then bring the running system to its package set now (apt, from the
    /// published mirror over HTTP); it boots at the next reboot. A kernel
    /// change cannot be applied live: then it is only staged.
    ApplyLive,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Stage => "stage",
            Policy::Reboot => "reboot",
            Policy::Kexec => "kexec",
            Policy::SoftReboot => "soft-reboot",
            Policy::Window => "window",
            Policy::ApplyLive => "apply-live",
        }
    }
}

/// `[fleet]`: the machines of this profile keep themselves up to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Fleet {
    /// Base URLs of the published store (its `images/` and `mirror/`),
    /// tried in order.
    pub urls: Vec<String>,
    pub policy: Policy,
    /// `HH:MM-HH:MM`, local time (may wrap past midnight); with `window`.
    pub window: Option<String>,
    /// How often the pull timer runs, after boot and then (systemd spans).
    pub interval: String,
    pub first: String,
    /// Each run waits a random time up to this (spreads a fleet's load).
    pub delay: String,
    /// Images of the profile kept on a machine's boot disk (at least 2).
    pub keep: u32,
    /// How often a machine reports to the build host besides after each
    /// pull and boot (a systemd span; the report timer).
    #[serde(default = "hourly")]
    pub report: String,
    /// New versions go out in stages that gate themselves on the machines'
    /// reports (`[fleet.rollout]`); none: at once to every machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
}

fn hourly() -> String {
    "1h".into()
}

/// `[fleet.rollout]`: a new version reaches `stages` percent of the
/// profile's machines in turn; a stage advances when `advance` percent of
/// its machines report the version booted and healthy and `soak` has
/// passed, and halts by itself when more than `halt` percent of them
/// report it failed (in a small stage: one failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RolloutPolicy {
    #[serde(default = "default_stages")]
    pub stages: Vec<u8>,
    #[serde(default = "default_advance")]
    pub advance: u8,
    #[serde(default = "default_halt")]
    pub halt: u8,
    #[serde(default = "default_soak")]
    pub soak: String,
}

fn default_stages() -> Vec<u8> {
    vec![1, 10, 50, 100]
}
fn default_advance() -> u8 {
    90
}
fn default_halt() -> u8 {
    5
}
fn default_soak() -> String {
    "1h".into()
}

impl Default for RolloutPolicy {
    fn default() -> RolloutPolicy {
        RolloutPolicy {
            stages: default_stages(),
            advance: default_advance(),
            halt: default_halt(),
            soak: default_soak(),
        }
    }
}

impl RolloutPolicy {
    pub fn check(&self) -> Result<()> {
        let s = &self.stages;
        if s.is_empty() || s.len() > 10 || s.last() != Some(&100) {
            bail!("fleet.rollout.stages {s:?}: up to 10 growing percentages, the last 100");
        }
        if s.windows(2).any(|w| w[0] >= w[1]) || s[0] == 0 {
            bail!("fleet.rollout.stages {s:?}: each stage larger than the one before, from 1");
        }
        if !(1..=100).contains(&self.advance) {
            bail!(
                "fleet.rollout.advance {}: 1 to 100 (percent of a stage healthy)",
                self.advance
            );
        }
        if self.halt >= 100 {
            bail!(
                "fleet.rollout.halt {}: 0 to 99 (percent of a stage failed)",
                self.halt
            );
        }
        crate::span::parse_duration(&self.soak)
            .map_err(|e| anyhow::anyhow!("fleet.rollout.soak: {e:#}"))?;
        Ok(())
    }
}

/// `[health]`: run after every boot; only its success marks a boot good
/// (and ends a trial). A failure on trial reboots, so boot counting falls
/// back to the last good image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Health {
    /// A shell command (`sh -c`), as trusted as a hook.
    pub command: String,
    /// Seconds before it counts as failed.
    pub timeout: u32,
}

/// A systemd time span as cairn accepts it: numbers with units, no
/// spaces (`30s`, `6h`, `1h30min`) — it is written into a unit file.
pub fn check_span(what: &str, s: &str) -> Result<()> {
    let units = [
        "usec", "us", "msec", "ms", "sec", "s", "min", "m", "h", "d", "w",
    ];
    let mut rest = s;
    if rest.is_empty() || rest.len() > 32 {
        bail!("{what} {s:?}: a time span such as 30s, 15min, 6h");
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            bail!("{what} {s:?}: a time span such as 30s, 15min, 6h");
        }
        rest = &rest[digits..];
        let unit = units.iter().find(|u| rest.starts_with(**u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None if rest.is_empty() => {}
            None => bail!("{what} {s:?}: a time span such as 30s, 15min, 6h"),
        }
    }
    Ok(())
}

/// `HH:MM-HH:MM` as minutes of the day (start, end); the end may be
/// before the start (the window wraps past midnight).
pub fn parse_window(s: &str) -> Result<(u32, u32)> {
    let hm = |t: &str| -> Option<u32> {
        let (h, m) = t.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    match s.split_once('-').and_then(|(a, b)| Some((hm(a)?, hm(b)?))) {
        Some((a, b)) if a != b => Ok((a, b)),
        _ => bail!("window {s:?}: HH:MM-HH:MM, local time, e.g. 02:00-05:00"),
    }
}

/// Whether minute-of-day `now` is inside `window`.
pub fn in_window((start, end): (u32, u32), now: u32) -> bool {
    if start < end {
        (start..end).contains(&now)
    } else {
        now >= start || now < end
    }
}

/// `[fleet]` as written (every key optional, merged through `extends`).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawFleet {
    pub(super) urls: Option<Vec<String>>,
    pub(super) policy: Option<Policy>,
    pub(super) window: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) first: Option<String>,
    pub(super) delay: Option<String>,
    pub(super) keep: Option<u32>,
    pub(super) report: Option<String>,
    pub(super) rollout: Option<RolloutPolicy>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) command: Option<String>,
    pub(super) timeout: Option<u32>,
}

impl From<Fleet> for RawFleet {
    fn from(f: Fleet) -> RawFleet {
        RawFleet {
            urls: Some(f.urls),
            policy: Some(f.policy),
            window: f.window,
            interval: Some(f.interval),
            first: Some(f.first),
            delay: Some(f.delay),
            keep: Some(f.keep),
            report: Some(f.report),
            rollout: f.rollout,
        }
    }
}

impl RawFleet {
    /// `child` over `self`, key by key.
    pub fn under(self, child: RawFleet) -> RawFleet {
        RawFleet {
            urls: child.urls.or(self.urls),
            policy: child.policy.or(self.policy),
            window: child.window.or(self.window),
            interval: child.interval.or(self.interval),
            first: child.first.or(self.first),
            delay: child.delay.or(self.delay),
            keep: child.keep.or(self.keep),
            report: child.report.or(self.report),
            rollout: child.rollout.or(self.rollout),
        }
    }

    pub fn validate(self, cairn: bool) -> Result<Fleet> {
        if !cairn {
            bail!("[fleet] needs `cairn = true`: the machines run cairn to pull");
        }
        let urls = self.urls.unwrap_or_default();
        if urls.is_empty() {
            bail!("fleet.urls: at least one base URL of the published store");
        }
        for u in &urls {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.len() <= 512
                && u.bytes().all(|b| b.is_ascii_graphic())
                && !u.contains(['"', '\'', '\\', '`', '$']);
            if !ok || crate::mirror::url::RepoUrl::parse(u).is_err() {
                bail!("fleet.urls: {u:?} is not an http:// or https:// URL");
            }
            // Written into every image (world-readable, and served with it).
            let authority = u.split_once("://").map_or("", |(_, r)| {
                r.split(['/', '?', '#']).next().unwrap_or_default()
            });
            if authority.contains('@') {
                bail!(
                    "fleet.urls: {u:?} carries credentials: images are public files; serve the store without them"
                );
            }
        }
        let policy = self.policy.unwrap_or(Policy::Stage);
        match (&self.window, policy) {
            (Some(w), Policy::Window) => {
                parse_window(w)?;
            }
            (None, Policy::Window) => bail!("fleet.policy = \"window\" needs fleet.window"),
            (Some(_), _) => bail!("fleet.window applies to policy = \"window\" only"),
            (None, _) => {}
        }
        let interval = self.interval.unwrap_or_else(|| "6h".into());
        let first = self.first.unwrap_or_else(|| "15min".into());
        let delay = self.delay.unwrap_or_else(|| "30min".into());
        check_span("fleet.interval", &interval)?;
        check_span("fleet.first", &first)?;
        check_span("fleet.delay", &delay)?;
        let keep = self.keep.unwrap_or(3);
        if !(2..=50).contains(&keep) {
            bail!("fleet.keep {keep}: 2 to 50 (the running image and one more at least)");
        }
        let report = self.report.unwrap_or_else(hourly);
        check_span("fleet.report", &report)?;
        if let Some(r) = &self.rollout {
            r.check()?;
        }
        Ok(Fleet {
            urls,
            policy,
            window: self.window,
            interval,
            first,
            delay,
            keep,
            report,
            rollout: self.rollout,
        })
    }
}

impl RawHealth {
    pub(super) fn under(self, child: RawHealth) -> RawHealth {
        RawHealth {
            command: child.command.or(self.command),
            timeout: child.timeout.or(self.timeout),
        }
    }

    pub(super) fn validate(self) -> Result<Health> {
        let command = self.command.unwrap_or_default();
        if command.trim().is_empty() {
            bail!("health.command: the command whose success marks a boot good");
        }
        if command.contains('\0') {
            bail!("health.command has a NUL byte");
        }
        let timeout = self.timeout.unwrap_or(120);
        if !(1..=3600).contains(&timeout) {
            bail!("health.timeout {timeout}: 1 to 3600 seconds");
        }
        Ok(Health { command, timeout })
    }
}

/// What an image carries as `/etc/cairn/fleet.toml`: its profile's name
/// and `[fleet]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FleetFile {
    pub profile: String,
    pub fleet: Fleet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_windows() {
        for ok in ["30s", "15min", "6h", "1h30min", "100"] {
            check_span("x", ok).unwrap();
        }
        for bad in ["", "6 h", "6h\nExecStart=/bin/sh", "h", "-5s", "5y"] {
            assert!(check_span("x", bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_window("02:00-05:30").unwrap(), (120, 330));
        let night = parse_window("23:00-01:00").unwrap();
        assert!(in_window(night, 23 * 60 + 30) && in_window(night, 30));
        assert!(!in_window(night, 12 * 60));
        for bad in [
            "2:00-05:00",
            "02:00-02:00",
            "24:00-01:00",
            "02:00",
            "aa:bb-cc:dd",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fleet_settings_are_checked() {
        let raw = |urls: &[&str]| RawFleet {
            urls: Some(urls.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let f = raw(&["http://build/cairn/"]).validate(true).unwrap();
        // An @ in the path is not a credential.
        raw(&["http://build/~ops/@v1/"]).validate(true).unwrap();
        assert_eq!((f.policy, f.keep), (Policy::Stage, 3));
        assert!(raw(&["http://build/"]).validate(false).is_err());
        for bad in [
            "file:///srv/cairn",
            "http://a b/",
            "ftp://x/",
            "http://x/$(reboot)",
            "http://admin:secret@build/",
            "https://token@build:8443/cairn/",
        ] {
            assert!(raw(&[bad]).validate(true).is_err(), "{bad}");
        }
        let mut w = raw(&["http://b/"]);
        w.policy = Some(Policy::Window);
        assert!(w.clone().validate(true).is_err());
        w.window = Some("01:00-03:00".into());
        w.clone().validate(true).unwrap();
        w.keep = Some(1);
        assert!(w.validate(true).is_err());
    }
}
