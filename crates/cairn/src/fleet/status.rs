//! `cairn status`: where a machine stands — the image it runs and how it
//! booted, what GRUB boots next and why (trial, tries left, last good, a
//! refusal), the images on its boot disk, its last pull and live apply.

use fs_err as fs;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::pull::{PullReport, PullState};
use crate::boot::model::{BootPartition, ImageId};

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Booted {
    /// `PROFILE/VERSION`.
    pub image: String,
    /// The menu entry that booted it (`cairn.entry=`).
    pub entry: Option<String>,
    /// `disk`, `ram` (toram), `iso` (an ISO file on the disk).
    pub from: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskImage {
    pub profile: String,
    pub version: String,
    pub dir: String,
    /// Its signed manifest checks out with the machine's key.
    pub signed: bool,
    pub booted: bool,
    pub last_good: bool,
    pub on_trial: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub schema_version: u32,
    pub booted: Option<Booted>,
    /// What GRUB boots next, by the environment block (None: the signed
    /// menu's own default).
    pub next_boot: Option<String>,
    pub on_trial: Option<String>,
    pub tries_left: Option<u32>,
    /// The trial entry has booted fine: it stays the default.
    pub trial_passed: bool,
    pub last_good: Option<String>,
    /// An entry the initramfs refused at its last boot.
    pub refused: Option<String>,
    /// `passed` or `failed: …` for this boot's health check, when it ran.
    pub health: Option<String>,
    pub images: Vec<DiskImage>,
    pub last_pull: Option<PullReport>,
    pub last_apply_live: Option<serde_json::Value>,
}

impl Status {
    /// Nothing known (no boot partition, not on a machine).
    pub fn empty() -> Status {
        Status {
            schema_version: 1,
            booted: None,
            next_boot: None,
            on_trial: None,
            tries_left: None,
            trial_passed: false,
            last_good: None,
            refused: None,
            health: None,
            images: Vec::new(),
            last_pull: None,
            last_apply_live: None,
        }
    }
}

/// Where booted.sh leaves this boot's health verdict.
pub use crate::image::paths::HEALTH_FILE;

/// The status of the boot partition at `root`; `cmdline` is the running
/// kernel's (None off the machine).
pub fn status(root: Option<&Path>, cmdline: Option<&str>, key: &Path) -> Result<Status> {
    let arg = |k: &str| {
        cmdline.and_then(|c| {
            c.split_whitespace()
                .find_map(|p| p.strip_prefix(k).map(String::from))
        })
    };
    let booted = arg("cairn.image=").map(|image| Booted {
        image,
        entry: arg("cairn.entry="),
        from: match cmdline {
            Some(c)
                if c.split_whitespace()
                    .any(|p| p == "toram" || p.starts_with("toram=")) =>
            {
                "ram".into()
            }
            Some(c) if c.contains(" findiso=") => "iso".into(),
            _ => "disk".into(),
        },
    });
    let mut s = Status {
        booted,
        health: fs::read_to_string(HEALTH_FILE)
            .ok()
            .filter(|_| cmdline.is_some())
            .map(|t| t.trim().to_string()),
        last_apply_live: fs::read(crate::live::APPLIED_LOG)
            .ok()
            .filter(|_| cmdline.is_some())
            .and_then(|b| serde_json::from_slice(&b).ok()),
        ..Status::empty()
    };
    let Some(root) = root else {
        return Ok(s);
    };
    let part = BootPartition::new(root);
    let c = part.counter().unwrap_or_default();
    s.trial_passed = c.trial_passed();
    s.next_boot = c.next_boot();
    s.last_good = c.good.clone();
    s.on_trial = c.trial.clone();
    s.tries_left = c.left;
    s.refused = c.bad.clone();
    let work = tempfile::Builder::new().prefix("cairn-status-").tempdir()?;
    let is =
        |sel: &Option<String>, id: &ImageId| sel.as_ref().is_some_and(|e| id.is_selected_by(e));
    for id in part.images()? {
        let signed = crate::image::verify::signed_manifest(&part.image_dir(&id), key, work.path())
            .is_ok_and(|m| m.profile == id.profile() && m.version == id.version());
        s.images.push(DiskImage {
            booted: s.booted.as_ref().is_some_and(|b| b.image == id.to_string()),
            last_good: is(&s.last_good, &id),
            on_trial: is(&s.on_trial, &id),
            dir: id.dir(),
            profile: id.profile().to_string(),
            version: id.version().to_string(),
            signed,
        });
    }
    s.images.sort_by(|a, b| {
        a.profile
            .cmp(&b.profile)
            .then_with(|| b.version.cmp(&a.version))
    });
    s.last_pull = PullState::load(root).ok().and_then(|st| st.last);
    Ok(s)
}
