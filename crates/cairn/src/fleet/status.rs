//! `cairn status`: where a machine stands — the image it runs and how it
//! booted, what GRUB boots next and why (trial, tries left, last good, a
//! refusal), the images on its boot disk, its last pull and live apply.

use fs_err as fs;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::pull::{PullReport, PullState};
use crate::boot::{env, menu};

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

/// Where booted.sh leaves this boot's health verdict.
pub const HEALTH_FILE: &str = "/run/cairn/health";

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
        schema_version: 1,
        booted,
        next_boot: None,
        on_trial: None,
        tries_left: None,
        trial_passed: false,
        last_good: None,
        refused: None,
        health: fs::read_to_string(HEALTH_FILE)
            .ok()
            .filter(|_| cmdline.is_some())
            .map(|t| t.trim().to_string()),
        images: Vec::new(),
        last_pull: None,
        last_apply_live: fs::read(crate::live::APPLIED_LOG)
            .ok()
            .filter(|_| cmdline.is_some())
            .and_then(|b| serde_json::from_slice(&b).ok()),
    };
    let Some(root) = root else {
        return Ok(s);
    };
    let vars = fs::read(root.join("boot/grub/grubenv"))
        .ok()
        .and_then(|b| env::parse(&b).ok())
        .unwrap_or_default();
    let get = |k: &str| {
        vars.iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    s.last_good = get("cairn_good");
    s.on_trial = get("cairn_trial");
    s.tries_left = get("cairn_left").and_then(|l| l.parse().ok());
    s.refused = get("cairn_bad");
    s.trial_passed = s.on_trial.is_some() && s.on_trial == s.last_good;
    // As the menu decides: a one-shot next entry, a trial with tries (or
    // one that passed), else the last good.
    s.next_boot = get("next_entry").or_else(|| match (&s.on_trial, s.tries_left) {
        (Some(t), _) if s.trial_passed => Some(t.clone()),
        (Some(t), Some(n)) if n > 0 => Some(t.clone()),
        (Some(_), _) => s.last_good.clone(),
        (None, _) => None,
    });
    let work = tempfile::Builder::new().prefix("cairn-status-").tempdir()?;
    let is = |sel: &Option<String>, p: &str, v: &str| {
        let dir = format!("/images/{p}/{v}");
        sel.as_ref().is_some_and(|e| {
            [false, true].iter().any(|&ram| {
                *e == menu::found_selector(&dir, ram)
                    || e.trim_start_matches("rollback>") == menu::entry_id(p, v, ram)
            })
        })
    };
    for p in fs::read_dir(root.join("images"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let pn = p.file_name().to_string_lossy().into_owned();
        if !crate::names::is_safe(&pn) {
            continue;
        }
        for v in fs::read_dir(p.path()).into_iter().flatten().flatten() {
            let vn = v.file_name().to_string_lossy().into_owned();
            if !crate::names::is_safe(&vn) || !v.path().is_dir() {
                continue;
            }
            let signed = crate::image::verify::signed_manifest(&v.path(), key, work.path())
                .is_ok_and(|m| m.profile == pn && m.version == vn);
            s.images.push(DiskImage {
                booted: s
                    .booted
                    .as_ref()
                    .is_some_and(|b| b.image == format!("{pn}/{vn}")),
                last_good: is(&s.last_good, &pn, &vn),
                on_trial: is(&s.on_trial, &pn, &vn),
                dir: format!("/images/{pn}/{vn}"),
                profile: pn.clone(),
                version: vn,
                signed,
            });
        }
    }
    s.images.sort_by(|a, b| {
        a.profile
            .cmp(&b.profile)
            .then_with(|| b.version.cmp(&a.version))
    });
    s.last_pull = PullState::load(root).ok().and_then(|st| st.last);
    Ok(s)
}
