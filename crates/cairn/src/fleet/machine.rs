//! A machine's side of delivery: its settings (the profile's `[fleet]`
//! written into the image, overridden by /etc/cairn/cairn.toml), its place
//! in rollouts, and what it does after a pull (its policy).

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::profile::{Fleet, Policy, RawFleet, in_window, parse_window};

pub use crate::image::paths::FLEET_FILE;
pub use crate::profile::FleetFile;

/// This machine's profile and settings: the image's, then the `[fleet]`
/// overrides of the host's configuration (`config_file` and its drop-ins),
/// checked again as a profile's are.
pub fn settings(fleet_file: &Path, config_file: &Path) -> Result<FleetFile> {
    let text = fs::read_to_string(fleet_file).with_context(|| {
        format!("this image has no [fleet] settings ({}): its profile says where to pull from, or give --url and --profile",
            fleet_file.display())
    })?;
    let mut f: FleetFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", fleet_file.display()))?;
    crate::names::check("profile", &f.profile)?;
    let config =
        crate::config::Config::load(config_file).context("reading the machine's configuration")?;
    if let Some(over) = config.settings.fleet {
        f.fleet = RawFleet::from(f.fleet)
            .under(over)
            .validate(true)
            .with_context(|| {
                format!(
                    "[fleet] of {}",
                    config
                        .files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
    }
    Ok(f)
}

/// The minute of the day, local time (the machine's time zone).
fn local_minute() -> Result<u32> {
    let out = crate::cmd::Cmd::new("date")
        .arg("+%H %M")
        .local_time()
        .run()?;
    let t = String::from_utf8_lossy(&out.stdout);
    let mut it = t.split_whitespace().map(|x| x.parse::<u32>());
    match (it.next(), it.next()) {
        (Some(Ok(h)), Some(Ok(m))) if h < 24 && m < 60 => Ok(h * 60 + m),
        _ => bail!("date: no time of day in {t:?}"),
    }
}

/// What the policy did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Action {
    pub policy: &'static str,
    /// `none`, `wait-for-window`, `reboot`, `kexec`, `soft-reboot`, `apply-live`.
    pub did: String,
    pub detail: Option<String>,
}

/// How a policy moves the running system to a staged image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Reboot,
    Kexec,
    /// Userspace only (systemd's soft-reboot), else kexec, else a reboot.
    Soft,
    /// The new package set applied to the running system (no boot).
    ApplyLive,
}

/// After a pull that left `image` (`P/V`) on trial: acts by `fleet`'s
/// policy. `switch` does the switch and is not called for `stage` or
/// outside the window. An apply-live that fails leaves the image staged
/// (said in the action), never an error of the pull.
pub fn act(
    fleet: &Fleet,
    image: &str,
    minute_now: Option<u32>,
    switch: impl FnOnce(Switch) -> Result<String>,
) -> Result<Action> {
    let mut a = Action {
        policy: fleet.policy.name(),
        did: "none".into(),
        detail: None,
    };
    match fleet.policy {
        Policy::Stage => {
            a.detail = Some(format!("{image} boots at the next reboot (on trial)"));
        }
        Policy::Reboot => {
            a.did = "reboot".into();
            a.detail = Some(switch(Switch::Reboot)?);
        }
        Policy::Kexec => {
            a.did = "kexec".into();
            a.detail = Some(switch(Switch::Kexec)?);
        }
        Policy::SoftReboot => {
            a.did = "soft-reboot".into();
            a.detail = Some(switch(Switch::Soft)?);
        }
        Policy::ApplyLive => match switch(Switch::ApplyLive) {
            Ok(d) => {
                a.did = "apply-live".into();
                a.detail = Some(d);
            }
            Err(e) => {
                a.detail = Some(format!(
                    "not applied live ({e:#}); {image} boots at the next reboot (on trial)"
                ));
            }
        },
        Policy::Window => {
            let w = parse_window(fleet.window.as_deref().unwrap_or_default())?;
            let now = match minute_now {
                Some(m) => m,
                None => local_minute()?,
            };
            if in_window(w, now) {
                a.did = "kexec".into();
                a.detail = Some(switch(Switch::Kexec)?);
            } else {
                a.did = "wait-for-window".into();
                a.detail = Some(format!(
                    "{image} is staged; it boots inside the window {}",
                    fleet.window.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    Ok(a)
}

/// This machine's id for rollouts: stable for a boot disk (its boot
/// partition's file-system UUID, which GRUB passes as cairn.boot=).
pub fn machine_id() -> Result<String> {
    crate::live::boot_uuid().map(|u| u.to_ascii_lowercase())
}

/// The public key images must be signed by: the one given; for another
/// disk than this machine's (`store`: a disk or a boot partition's tree
/// looked at from the build host), the store's own key where it has one;
/// else the key the running image carries.
pub fn machine_key(given: Option<&Path>, store: Option<&Path>) -> PathBuf {
    if let Some(k) = given {
        return k.to_path_buf();
    }
    if let Some(k) = store.and_then(|s| crate::trust::keys::load(s).ok())
        && k.public_key.is_file()
    {
        return k.public_key;
    }
    PathBuf::from(crate::image::paths::SIGNING_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(policy: Policy, window: Option<&str>) -> Fleet {
        Fleet {
            urls: vec!["http://b/".into()],
            policy,
            window: window.map(String::from),
            interval: "6h".into(),
            first: "15min".into(),
            delay: "30min".into(),
            keep: 3,
            report: "1h".into(),
            rollout: None,
        }
    }

    #[test]
    fn the_policy_decides_whether_to_switch() {
        let never = |_| -> Result<String> { panic!("must not switch") };
        let a = act(&fleet(Policy::Stage, None), "web/2", None, never).unwrap();
        assert_eq!(a.did, "none");
        let a = act(&fleet(Policy::Kexec, None), "web/2", None, |k| {
            assert_eq!(k, Switch::Kexec);
            Ok("kexec loaded".into())
        })
        .unwrap();
        assert_eq!(a.did, "kexec");
        let a = act(&fleet(Policy::Reboot, None), "web/2", None, |k| {
            assert_eq!(k, Switch::Reboot);
            Ok("rebooting".into())
        })
        .unwrap();
        assert_eq!(a.did, "reboot");
        let a = act(&fleet(Policy::SoftReboot, None), "web/2", None, |k| {
            assert_eq!(k, Switch::Soft);
            Ok("soft-reboot into web/2".into())
        })
        .unwrap();
        assert_eq!(a.did, "soft-reboot");
        assert_eq!(
            serde_json::to_value(Policy::SoftReboot).unwrap(),
            "soft-reboot"
        );
        let a = act(&fleet(Policy::ApplyLive, None), "web/2", None, |k| {
            assert_eq!(k, Switch::ApplyLive);
            Ok("3 package(s)".into())
        })
        .unwrap();
        assert_eq!(a.did, "apply-live");
        // A kernel change (or apt failing) leaves the image staged.
        let a = act(&fleet(Policy::ApplyLive, None), "web/2", None, |_| {
            anyhow::bail!("the kernel changes")
        })
        .unwrap();
        assert_eq!(a.did, "none");
        assert!(a.detail.unwrap().contains("the kernel changes"));
        let w = fleet(Policy::Window, Some("02:00-04:00"));
        let a = act(&w, "web/2", Some(12 * 60), never).unwrap();
        assert_eq!(a.did, "wait-for-window");
        let a = act(&w, "web/2", Some(3 * 60), |_| Ok("in".into())).unwrap();
        assert_eq!(a.did, "kexec");
    }

    #[test]
    fn overrides_are_checked_like_the_profile() {
        let d = tempfile::tempdir().unwrap();
        let ff = d.path().join("fleet.toml");
        let cf = d.path().join("cairn.toml");
        let file = FleetFile {
            profile: "web".into(),
            fleet: fleet(Policy::Stage, None),
        };
        fs::write(&ff, toml::to_string(&file).unwrap()).unwrap();
        let s = settings(&ff, &cf).unwrap();
        assert_eq!(s.fleet.policy, Policy::Stage);
        fs::write(
            &cf,
            "schema-version = 1\n[fleet]\npolicy = \"kexec\"\nkeep = 4\n",
        )
        .unwrap();
        let s = settings(&ff, &cf).unwrap();
        assert_eq!((s.fleet.policy, s.fleet.keep), (Policy::Kexec, 4));
        fs::write(&cf, "schema-version = 1\n[fleet]\npolicy = \"window\"\n").unwrap();
        assert!(
            settings(&ff, &cf).is_err(),
            "a window policy without a window"
        );
        fs::write(
            &cf,
            "schema-version = 1\n[fleet]\nurls = [\"http://x/$(id)\"]\n",
        )
        .unwrap();
        assert!(settings(&ff, &cf).is_err());
    }
}
