//! Delivery: one build host, many machines. The build host publishes a
//! signed index per profile beside its images (`index`); a web server
//! serves the store read-only; each machine pulls what its boot disk lacks,
//! stages it as the default on trial, and acts by its profile's policy
//! (`pull`); `status` says where a machine stands.

pub mod cycle;
pub mod inbox;
pub mod index;
pub mod machine;
pub mod overview;
pub mod pull;
pub mod report;
pub mod reporter;
pub mod rollout;
pub mod serve;
pub mod status;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::mirror::fetch::RetryPolicy;
use crate::mirror::url::RepoUrl;
use pull::{BootRoot, Outcome, PullOptions, PullReport};

pub use crate::span::parse_duration;

/// Which boot partition a pull writes.
pub enum Target {
    /// The running machine's (live-boot's medium, remounted read-write
    /// while cairn writes): the policy acts afterwards.
    Running,
    /// A directory holding a boot partition's tree (mounted elsewhere).
    Dir(PathBuf),
    /// The boot partition of a cairn disk image or device, mounted here.
    Disk { disk: PathBuf, store: PathBuf },
}

/// `cairn pull` as asked on the command line; unset values come from the
/// machine's settings.
pub struct PullRequest {
    pub target: Target,
    pub urls: Vec<RepoUrl>,
    pub profile: Option<String>,
    pub key: Option<PathBuf>,
    pub machine_id: Option<String>,
    pub policy: Option<crate::profile::Policy>,
    pub jobs: usize,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct PullResult {
    #[serde(flatten)]
    pub report: PullReport,
    /// What the policy did (a running machine only).
    pub action: Option<machine::Action>,
    /// What the policy is to act on (`act` does it).
    #[serde(skip)]
    pub pending: Option<Pending>,
}

/// A staged image the policy acts on.
#[derive(Debug)]
pub struct Pending {
    pub fleet: crate::profile::Fleet,
    /// `PROFILE/VERSION`.
    pub image: String,
    pub key: PathBuf,
}

/// Acts on a pull's result by the machine's policy (stage, reboot, kexec,
/// window). Call it once what the pull did has been said: a switch ends
/// this system, so `announce` is given the result as it will be (its
/// action the switch about to happen) right before one.
pub fn act(r: &mut PullResult, announce: impl FnMut(&PullResult)) -> Result<()> {
    act_with(r, announce, switch)
}

/// `act` with the switch itself given (`switch`: the pending image, how).
fn act_with(
    r: &mut PullResult,
    mut announce: impl FnMut(&PullResult),
    switch: impl FnOnce(&Pending, machine::Switch) -> Result<String>,
) -> Result<()> {
    let Some(p) = r.pending.take() else {
        return Ok(());
    };
    let policy = p.fleet.policy.name();
    let report = &r.report;
    let action = machine::act(&p.fleet, &p.image, None, |how| {
        if how != machine::Switch::ApplyLive {
            announce(&PullResult {
                report: report.clone(),
                action: Some(machine::Action {
                    policy,
                    did: match how {
                        machine::Switch::Kexec => "kexec",
                        machine::Switch::Soft => "soft-reboot",
                        _ => "reboot",
                    }
                    .into(),
                    detail: Some(format!("switching to {} now", p.image)),
                }),
                pending: None,
            });
        }
        switch(&p, how)
    })?;
    r.action = Some(action);
    Ok(())
}

/// Moves this system to the pending image: its packages applied live, or
/// a reboot or kexec into it (which ends this system).
fn switch(p: &Pending, how: machine::Switch) -> Result<String> {
    let policy = p.fleet.policy.name();
    if how == machine::Switch::ApplyLive {
        crate::progress::note(&format!(
            "cairn: policy {policy}: applying {}'s packages live",
            p.image
        ));
        let a = crate::live::apply_live(&crate::live::ApplyOptions {
            store: Path::new("/nonexistent"),
            image: Some(&p.image),
            key: Some(&p.key),
            dry_run: false,
            apt: crate::live::AptFrom::System,
        })?;
        return Ok(format!(
            "{} package change(s) applied in {:.0}s; {} boots at the next reboot (on trial){}",
            a.changes.len(),
            a.seconds,
            p.image,
            if a.differs.is_empty() {
                String::new()
            } else {
                format!("; differs from the image: {}", a.differs.join(", "))
            }
        ));
    }
    let kexec = how == machine::Switch::Kexec;
    let soft = how == machine::Switch::Soft;
    crate::progress::note(&format!(
        "cairn: policy {policy}: switching to {}{}",
        p.image,
        match how {
            machine::Switch::Kexec => " with kexec",
            machine::Switch::Soft => " with a soft reboot (else kexec)",
            _ => " (reboot)",
        }
    ));
    let plan = crate::live::reboot(&crate::live::RebootOptions {
        store: Path::new("/nonexistent"),
        image: Some(&p.image),
        kexec,
        soft: soft.then_some(crate::live::SoftMode::Auto),
        ram: false,
        key: Some(&p.key),
        dry_run: false,
    })?;
    Ok(format!(
        "{} into {} ({})",
        plan.method, plan.image, plan.entry
    ))
}

/// Runs a pull: the settings, the boot partition, the pull, the policy.
pub fn run_pull(r: &PullRequest) -> Result<PullResult> {
    let running = matches!(r.target, Target::Running);
    let settings = if running || r.urls.is_empty() || r.profile.is_none() {
        Some(machine::settings(
            Path::new(machine::FLEET_FILE),
            &std::env::var_os(crate::config::CONFIG_ENV)
                .map_or_else(|| PathBuf::from(crate::config::MAIN), PathBuf::from),
        )?)
    } else {
        None
    };
    let (profile, urls, keep) = what_to_pull(r, settings.as_ref())?;
    let key = machine::machine_key(
        r.key.as_deref(),
        match &r.target {
            Target::Disk { store, .. } => Some(store.as_path()),
            _ => None,
        },
    );
    let t = open_target(r, &profile)?;
    let machine_id = match (&r.machine_id, t.default_id) {
        (Some(m), _) => m.clone(),
        (None, Some(d)) => d,
        (None, None) => bail!("--machine-id: this machine's id for staged rollouts"),
    };
    if machine_id.is_empty() {
        bail!("--machine-id: an empty id");
    }
    let b = BootRoot {
        root: t.root,
        writable: t.medium.as_ref(),
        booted_dir: t.booted_dir,
    };
    let o = PullOptions {
        profile: profile.clone(),
        urls,
        key: key.clone(),
        machine_id,
        running: t.running_version,
        keep,
        jobs: r.jobs,
        retry: RetryPolicy::default(),
        now: crate::unix_now(),
        dry_run: r.dry_run,
    };
    let report = pull::pull(&b, &o)?;
    // The disk is unlocked, the medium let go, before any switch.
    drop(t.mounted);
    drop(b);
    drop(t.medium);
    let mut result = PullResult {
        report,
        action: None,
        pending: None,
    };
    if running && !r.dry_run {
        result.pending = pending(r, settings.as_ref(), &result.report, &profile, key)?;
    }
    Ok(result)
}

/// The profile, the URLs and how many images to keep: the request's,
/// else the machine's settings.
fn what_to_pull(
    r: &PullRequest,
    settings: Option<&crate::profile::FleetFile>,
) -> Result<(String, Vec<RepoUrl>, u32)> {
    let profile = match (&r.profile, settings) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s.profile.clone(),
        (None, None) => bail!("--profile: which profile to pull"),
    };
    let urls = if !r.urls.is_empty() {
        r.urls.clone()
    } else {
        settings
            .map(|s| s.fleet.urls.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|u| RepoUrl::parse(u).with_context(|| format!("fleet.urls: {u}")))
            .collect::<Result<Vec<_>>>()?
    };
    let keep = settings.map_or(3, |s| s.fleet.keep);
    Ok((profile, urls, keep))
}

/// The boot partition a pull writes, opened.
struct Opened {
    root: PathBuf,
    /// Directories never removed to make room (the running image's).
    booted_dir: Vec<String>,
    /// The version of the profile this system runs, if it runs one.
    running_version: Option<String>,
    /// The machine id when none is given: /etc/machine-id, or the disk's
    /// file system UUID.
    default_id: Option<String>,
    medium: Option<crate::live::BootMedium>,
    /// A disk's boot partition, mounted under its lock.
    mounted: Option<crate::boot::disk::MountedBoot>,
}

fn open_target(r: &PullRequest, profile: &str) -> Result<Opened> {
    Ok(match &r.target {
        Target::Running => {
            let id = crate::live::booted()?;
            let medium = crate::live::BootMedium::find()?;
            let running = (id.profile() == profile).then(|| id.version().to_string());
            // The directory booted from (live-media-path=) and the one its
            // name says, and after a soft reboot also the directory of the
            // kernel that still runs: none is removed to make room.
            let mut booted = vec![id.dir()];
            let cmdline = crate::image::boot_cmdline()?
                + " "
                + &std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            booted.extend(
                cmdline
                    .split_whitespace()
                    .filter_map(|a| a.strip_prefix("live-media-path="))
                    .map(|d| d.trim_end_matches('/').to_string()),
            );
            Opened {
                root: medium.root.clone(),
                booted_dir: booted,
                running_version: running,
                default_id: machine::machine_id().ok(),
                medium: Some(medium),
                mounted: None,
            }
        }
        Target::Dir(d) => Opened {
            root: d.clone(),
            booted_dir: Vec::new(),
            running_version: None,
            default_id: None,
            medium: None,
            mounted: None,
        },
        Target::Disk { disk, store } => {
            // Locked before anything of it is read. A dry run changes no
            // byte of the disk: read-only, under a reader's share of the
            // lock.
            use crate::boot::disk::{Access, DiskLock};
            let access = if r.dry_run {
                Access::Read
            } else {
                Access::Write
            };
            let lock = DiskLock::acquire(disk, access, crate::boot::disk::LOCK_WAIT)?;
            let part = crate::boot::disk::find_boot_partition(disk)?;
            let uuid = crate::boot::disk::fs_uuid(disk, &part)?;
            let m = crate::boot::disk::MountedBoot::mount_locked(lock, store)?;
            Opened {
                root: m.dir.clone(),
                booted_dir: Vec::new(),
                running_version: None,
                default_id: Some(uuid),
                medium: None,
                mounted: Some(m),
            }
        }
    })
}

/// What the machine's policy does with a staged image, if anything.
fn pending(
    r: &PullRequest,
    settings: Option<&crate::profile::FleetFile>,
    report: &PullReport,
    profile: &str,
    key: PathBuf,
) -> Result<Option<Pending>> {
    let (Some(s), Some(version)) = (settings, &report.version) else {
        return Ok(None);
    };
    if !matches!(report.outcome, Outcome::Staged | Outcome::AlreadyThere) {
        return Ok(None);
    }
    let mut fleet = s.fleet.clone();
    if let Some(p) = r.policy {
        fleet.policy = p;
        if p == crate::profile::Policy::Window && fleet.window.is_none() {
            bail!("--policy window: the machine's settings name no window");
        }
    }
    Ok(Some(Pending {
        fleet,
        image: format!("{profile}/{version}"),
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(policy: crate::profile::Policy) -> PullResult {
        let report: PullReport = serde_json::from_value(serde_json::json!({
            "schema-version": 1, "profile": "web", "outcome": "staged", "url": null,
            "serial": 1, "newest": "V2", "version": "V2", "files-fetched": 1,
            "bytes-fetched": 1, "files-reused": 0, "bytes-reused": 0, "entry": "web-V2",
            "tries": 3, "removed": [], "passed-over": [], "at": 0, "seconds": 0.0
        }))
        .unwrap();
        PullResult {
            report,
            action: None,
            pending: Some(Pending {
                fleet: crate::profile::Fleet {
                    urls: vec!["http://b/".into()],
                    policy,
                    window: None,
                    interval: "6h".into(),
                    first: "15min".into(),
                    delay: "30min".into(),
                    keep: 3,
                    report: "1h".into(),
                    rollout: None,
                },
                image: "web/V2".into(),
                key: PathBuf::from("/k"),
            }),
        }
    }

    /// A switch ends this system: what the pull did is announced (the
    /// `--json` document) before it, with the switch as its action; a
    /// policy that does not switch announces nothing.
    #[test]
    fn a_switch_is_announced_before_it_happens() {
        use crate::profile::Policy;
        let mut r = result(Policy::Kexec);
        let seen = std::cell::RefCell::new(Vec::new());
        act_with(
            &mut r,
            |a| seen.borrow_mut().push(serde_json::to_value(a).unwrap()),
            |_, how| {
                assert_eq!(how, machine::Switch::Kexec);
                assert_eq!(seen.borrow().len(), 1, "switched before announcing");
                Ok("kexec into web/V2".into())
            },
        )
        .unwrap();
        let seen = seen.into_inner();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["action"]["did"], "kexec");
        assert_eq!(seen[0]["version"], "V2");
        assert_eq!(r.action.as_ref().unwrap().did, "kexec");

        let mut r = result(Policy::Stage);
        let mut announced = false;
        act_with(&mut r, |_| announced = true, |_, _| panic!("no switch")).unwrap();
        assert!(!announced);
        assert_eq!(r.action.as_ref().unwrap().did, "none");
    }
}
