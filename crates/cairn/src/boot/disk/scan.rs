//! The menu of a boot partition, written from what it holds: each image and
//! ISO checked against the key (what fails is left out, named), grub.cfg
//! rendered and signed in a private directory, the environment block kept.

use fs_err as fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::config::DiskConfig;
use crate::boot::env;
use crate::boot::menu::{self, LeftOut, MenuImage, MenuIso, MenuOptions};
use crate::boot::model::{BootPartition, GRUBENV, IMAGES, ImageId, var};
use crate::image;
use crate::trust::keys::{self, SigningKey, sign_file};

/// Checks an image (or an ISO beside its image) against the signing key
/// before it goes on a disk.
pub(super) fn check_image(dir: &Path, key: &SigningKey) -> Result<()> {
    // An error reading it (missing, unreadable) is an operational one; a
    // report of problems is the data refused.
    let r = image::verify_with(dir, &key.public_key, false)
        .with_context(|| format!("checking {}", dir.display()))?;
    let p = r.problems;
    if !r.ok {
        return Err(crate::trust::VerificationFailed::new(format!(
            "{} does not verify, it would not boot:\n  {}",
            dir.display(),
            p.join("\n  ")
        ))
        .into());
    }
    Ok(())
}

/// Why an image directory would not boot with this key (its signatures and
/// every hash; `iso_optional`: as on a disk, without its ISO); empty if it would.
pub(crate) fn image_problems(dir: &Path, key: &SigningKey, iso_optional: bool) -> Vec<String> {
    match image::verify_with(dir, &key.public_key, iso_optional) {
        Ok(r) if r.ok => Vec::new(),
        Ok(r) => r.problems,
        Err(e) => vec![format!("{e:#}")],
    }
}

/// Why an ISO file's signature does not verify with this key, if it does not.
pub(super) fn iso_problem(iso: &Path, key: &SigningKey) -> Option<String> {
    let work = match tempfile::Builder::new().prefix("cairn-iso-").tempdir() {
        Ok(w) => w,
        Err(e) => return Some(format!("a private temporary directory: {e}")),
    };
    keys::verify_file(&key.public_key, iso, work.path())
        .err()
        .map(|e| format!("{e:#}"))
}

/// What a boot partition holds, checked against the signing key: images
/// (`images/P/V` with a boot.cfg) and ISOs (`isos/*.iso`) that pass go into
/// the menu; the rest are left out, with why (copied by hand, damaged, or
/// signed by another key: GRUB would refuse them anyway).
pub(super) struct Scanned {
    pub(super) images: Vec<MenuImage>,
    pub(super) isos: Vec<MenuIso>,
    pub(super) left_out: Vec<LeftOut>,
}

pub(super) fn scan(root: &Path, key: &SigningKey) -> Result<Scanned> {
    let mut s = Scanned {
        images: Vec::new(),
        isos: Vec::new(),
        left_out: Vec::new(),
    };
    let part = BootPartition::new(root);
    for d in part.image_dirs()? {
        let (pn, vn, path) = (d.profile, d.version, d.path);
        if vn.starts_with('.') || !path.join(image::BOOT_CFG).exists() {
            continue;
        }
        let id = match ImageId::new(&pn, &vn) {
            Ok(id) => id,
            Err(_) => {
                s.left_out.push(LeftOut {
                    path: format!("/{IMAGES}/{pn}/{vn}"),
                    problem: "its name has characters a kernel command line cannot carry".into(),
                });
                continue;
            }
        };
        let problems = image_problems(&path, key, true);
        if problems.is_empty() {
            s.images.push(MenuImage {
                dir: id.dir(),
                profile: pn,
                version: vn,
            });
        } else {
            s.left_out.push(LeftOut {
                path: id.dir(),
                problem: problems.join("; "),
            });
        }
    }
    let isos = root.join("isos");
    if fs::symlink_metadata(&isos).is_ok() {
        for e in fs::read_dir(&isos)? {
            let e = e.with_context(|| format!("listing {}", isos.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.ends_with(".iso") {
                continue;
            }
            let path = format!("/isos/{n}");
            if !crate::names::is_safe(n.trim_end_matches(".iso")) {
                s.left_out.push(LeftOut {
                    path,
                    problem: "its name has characters a menu entry cannot carry".into(),
                });
                continue;
            }
            match iso_problem(&e.path(), key) {
                None => s.isos.push(MenuIso { path }),
                Some(p) => s.left_out.push(LeftOut {
                    path,
                    problem: format!("signature: {p}"),
                }),
            }
        }
    }
    s.isos.sort_by(|a, b| a.path.cmp(&b.path));
    s.left_out.sort_by(|a, b| a.path.cmp(&b.path));
    for l in &s.left_out {
        tracing::warn!("left out of the menu: {}: {}", l.path, l.problem);
    }
    Ok(s)
}

/// Writes grub.cfg (+ .sig) and guard.sig for the boot tree at `root`, and
/// updates the environment block: a new default entry starts a trial.
pub(super) fn write_menu(
    root: &Path,
    key: &SigningKey,
    opts: &MenuOptions,
    previous_default: Option<&str>,
    scanned: Scanned,
) -> Result<menu::Menu> {
    let mut m = menu::render(&scanned.images, &scanned.isos, opts)?;
    m.left_out = scanned.left_out;
    let gdir = root.join("boot/grub");
    write_signed_cfg(&gdir, key, &m.cfg)?;
    // The environment block, rewritten in place when it exists.
    // What is there is kept when it is a block; anything else (gone,
    // damaged, a link or a FIFO, never opened) is replaced by a new one.
    let envp = root.join(GRUBENV);
    let mut vars = BootPartition::new(root).vars().unwrap_or_default();
    // The menu was written from what verifies now: an earlier refusal by
    // the initramfs no longer holds.
    env::update(&mut vars, &[(var::BAD, "")]);
    if previous_default != Some(m.default.as_str()) {
        let left = opts.tries.max(1).to_string();
        env::update(
            &mut vars,
            &[(var::TRIAL, m.default.as_str()), (var::LEFT, &left)],
        );
    }
    env::save(&envp, &vars)?;
    Ok(m)
}

/// File name → SHA-256 from an image's SHA256SUMS (empty if unreadable).
pub(super) fn signed_sums(dir: &Path) -> std::collections::BTreeMap<String, String> {
    fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, n)| (n.to_string(), h.to_string()))
        .collect()
}

/// Writes the menu of a mounted boot partition again from what is on it
/// and records it in the disk's cairn.json. `before_signing` sees what
/// the scan found and may change the record or refuse, before anything is
/// written.
pub(super) fn refresh(
    key: &SigningKey,
    root: &Path,
    before_signing: impl FnOnce(&mut DiskConfig, &Scanned) -> Result<()>,
) -> Result<menu::Menu> {
    DiskConfig::update(root, |cfg| {
        let scanned = scan(root, key)?;
        before_signing(cfg, &scanned)?;
        let m = write_menu(root, key, &cfg.menu, Some(&cfg.default_entry), scanned)?;
        cfg.default_entry = m.default.clone();
        cfg.signed_by = key.fingerprint.clone();
        Ok(m)
    })
}

/// The menu `refresh` would write, written nowhere (`--dry-run`).
pub(super) fn preview(
    key: &SigningKey,
    root: &Path,
    before_signing: impl FnOnce(&mut DiskConfig, &Scanned) -> Result<()>,
) -> Result<menu::Menu> {
    let mut cfg = DiskConfig::read(root)?;
    let scanned = scan(root, key)?;
    before_signing(&mut cfg, &scanned)?;
    let mut m = menu::render(&scanned.images, &scanned.isos, &cfg.menu)?;
    m.left_out = scanned.left_out;
    Ok(m)
}

/// Writes `cfg_text` as `gdir`/grub.cfg with its signature, and guard.sig
/// (a signature of something else, which the menu checks is refused), each
/// renamed into place.
pub(crate) fn write_signed_cfg(gdir: &Path, key: &SigningKey, cfg_text: &str) -> Result<()> {
    fs::create_dir_all(gdir)?;
    // Signed in a private directory, from the bytes cairn wrote — never
    // from bytes read back from the partition (a device may answer other
    // bytes than it was given) — then copied on.
    let private = tempfile::Builder::new()
        .prefix("cairn-menu-")
        .tempdir()
        .context("a private temporary directory")?;
    // A signature that must not verify grub.cfg (the menu checks this).
    let guard = private.path().join("guard");
    fs::write(&guard, "cairn: this signature is for no other file\n")?;
    let guard_sig = sign_file(key, &guard)?;
    let cfg = private.path().join("grub.cfg");
    fs::write(&cfg, cfg_text)?;
    let cfg_sig = sign_file(key, &cfg)?;
    for (from, name) in [
        (&guard_sig, "guard.sig"),
        (&cfg_sig, "grub.cfg.sig"),
        (&cfg, "grub.cfg"),
    ] {
        let tmp = gdir.join(format!(".{name}.new"));
        let _ = fs::remove_file(&tmp);
        fs::copy(from, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, gdir.join(name))?;
    }
    Ok(())
}
