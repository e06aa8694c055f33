//! cairn on a running cairn system (an image built with `cairn = true`):
//!
//! - `apply-live`: bring the running system (its RAM overlay) to a newer
//!   image's package set now, from the local mirror, with apt; the image
//!   itself boots next time. A kernel change is refused: that needs a boot.
//! - `reboot [--kexec]`: into a chosen image of the boot disk. With `--kexec`
//!   the image is checked as cairn's GRUB menu checks it (signed SHA256SUMS
//!   and BOOTSUMS, kernel, initrd and boot.cfg by hash and signature), the
//!   checked copies are loaded with that entry's command line, and systemd
//!   switches to them without firmware or boot loader; when kexec cannot be
//!   used, a normal reboot with GRUB's `next_entry` set to the image.

mod apply;
pub(crate) mod medium;
mod reboot;
pub mod soft;

use std::path::{Path, PathBuf};

use fs_err as fs;

use anyhow::{Context, Result, bail};

use crate::boot::model::ImageId;
use crate::image::paths::SIGNING_KEY as KEY_IN_IMAGE;
use crate::image::verify::signed_manifest;
use crate::image::{self, Manifest};

pub use apply::{
    APPLIED_LOG, ApplyOptions, ApplyReport, AptFrom, Change, apply_live, needs_boot, plan_changes,
};
pub use medium::{BootMedium, boot_uuid};
pub use reboot::{RebootOptions, RebootPlan, command_line, menu_selector, reboot};
pub use soft::SoftMode;

/// Where live-boot mounts the medium it booted from.
const LIVE_MEDIUM: &str = "/run/live/medium";

/// How the boot partition is mounted on a running system (as the initramfs
/// mounts it): nothing on it runs, opens as a device, or is followed as a
/// symlink — whoever can write the partition is not trusted.
const MEDIUM_OPTS: &str = "nosuid,nodev,noexec,nosymfollow";

/// cairn's scratch space on the running system (a tmpfs).
use crate::image::paths::RUN_DIR;

/// The image this system runs, from `cairn.image=`.
pub fn booted() -> Result<ImageId> {
    let img = image::booted_image().context(
        "not a running cairn image (no cairn.image= on the kernel command line): apply-live and reboot work on a booted cairn system",
    )?;
    ImageId::parse(&img).with_context(|| format!("cairn.image={img}"))
}

/// The image `spec` names (`PROFILE/VERSION`, a version of the booted
/// profile, or a path), or the newest image of the booted profile, looked
/// for under each of `roots` (`<root>/images/<profile>/<version>`). Only
/// directories whose names pass the name rule, whose signed manifest says
/// they are that profile and version, count; the newest is the greatest
/// signed version, whatever else the directory holds.
pub fn find_image(
    roots: &[&Path],
    spec: Option<&str>,
    profile: &str,
    key: &Path,
) -> Result<(PathBuf, Manifest)> {
    let scratch = scratch("cairn-manifests-")?;
    let work = scratch.path();
    if let Some(s) = spec {
        let p = Path::new(s);
        if p.is_absolute() || s.starts_with('.') {
            if !p.join(image::MANIFEST).is_file() {
                bail!("{s} is not an image directory");
            }
            let m = signed_manifest(p, key, work)?;
            return Ok((p.to_path_buf(), m));
        }
    }
    let (want_p, want_v) = match spec {
        Some(s) => match s.split_once('/') {
            Some((p, v)) => (p.to_string(), Some(v.to_string())),
            None => (profile.to_string(), Some(s.to_string())),
        },
        None => (profile.to_string(), None),
    };
    crate::names::check("profile", &want_p)?;
    if let Some(v) = &want_v {
        crate::names::check("version", v)?;
    }
    let mut found: Vec<(String, PathBuf, Manifest)> = Vec::new();
    for r in roots {
        let d = r.join("images").join(&want_p);
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let v = e.file_name().to_string_lossy().into_owned();
            if !crate::names::is_safe(&v) || want_v.as_ref().is_some_and(|w| *w != v) {
                continue;
            }
            match signed_manifest(&e.path(), key, work) {
                Ok(m) if m.profile == want_p && m.version == v => found.push((v, e.path(), m)),
                Ok(m) => tracing::warn!(
                    "{}: its signed manifest says {}/{}: not taken",
                    e.path().display(),
                    m.profile,
                    m.version
                ),
                Err(err) => tracing::warn!("{}: not taken: {err:#}", e.path().display()),
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.pop().map(|(_, p, m)| (p, m)).with_context(|| {
        let places: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        match &want_v {
            Some(v) => format!("no signed image {want_p}/{v} in {}", places.join(" or ")),
            None => format!("no signed image of {want_p} in {}", places.join(" or ")),
        }
    })
}

/// A private directory for copies that are checked and then used. As root,
/// in /run/cairn (root's alone): never in a TMPDIR that a root shell may
/// have inherited from a user (`su` without `-`), where that user could
/// swap a checked copy before it is used.
pub(crate) fn scratch(prefix: &str) -> Result<tempfile::TempDir> {
    let mut t = tempfile::Builder::new();
    t.prefix(prefix);
    if crate::fsutil::is_root() {
        fs::create_dir_all(RUN_DIR)?;
        t.tempdir_in(RUN_DIR)
    } else {
        t.tempdir()
    }
    .context("a private temporary directory")
}

/// The public key images are checked against: `--key`, else the one the
/// running image carries, else the store's.
pub fn public_key(explicit: Option<&Path>, store: &Path) -> Result<PathBuf> {
    if let Some(k) = explicit {
        return Ok(k.to_path_buf());
    }
    if Path::new(KEY_IN_IMAGE).is_file() {
        return Ok(KEY_IN_IMAGE.into());
    }
    crate::trust::keys::load(store)
        .map(|k| k.public_key)
        .with_context(|| {
            format!("no {KEY_IN_IMAGE} in this system and no key in the store: pass --key")
        })
}
