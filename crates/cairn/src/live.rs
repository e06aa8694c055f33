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

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::boot::{env, menu};
use crate::build::customize::KEY_IN_IMAGE;
use crate::cmd::{Cmd, which};
use crate::image::{self, BOOT_CFG, BOOT_SUMS, Manifest};
use crate::trust::keys::verify_file;

/// Where live-boot mounts the medium it booted from.
const LIVE_MEDIUM: &str = "/run/live/medium";
/// How the boot partition is mounted on a running system (as the initramfs
/// mounts it): nothing on it runs, opens as a device, or is followed as a
/// symlink — whoever can write the partition is not trusted.
const MEDIUM_OPTS: &str = "nosuid,nodev,noexec,nosymfollow";
/// cairn's scratch space on the running system (a tmpfs).
const RUN_DIR: &str = "/run/cairn";
/// What `apply-live` applied, kept with the running system (the overlay).
pub const APPLIED_LOG: &str = "/var/lib/cairn/applied-live.json";

/// The image this system runs: `(profile, version)` from `cairn.image=`.
pub fn booted() -> Result<(String, String)> {
    let img = image::booted_image().context(
        "not a running cairn image (no cairn.image= on the kernel command line): apply-live and reboot work on a booted cairn system",
    )?;
    let (p, v) = img
        .split_once('/')
        .with_context(|| format!("cairn.image={img}: expected PROFILE/VERSION"))?;
    Ok((p.to_string(), v.to_string()))
}

/// The boot partition, as live-boot mounted it (disk mode) or mounted here
/// by its label (toram: the medium is a copy in RAM).
pub struct BootMedium {
    pub root: PathBuf,
    mounted: bool,
}

impl BootMedium {
    pub fn find() -> Result<BootMedium> {
        let mounts = fs::read_to_string("/proc/mounts")
            .context("reading /proc/mounts: cannot tell what is mounted")?;
        let live = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == LIVE_MEDIUM).then(|| f[2].to_string())
        });
        if let Some(fs_type) = live
            && fs_type != "tmpfs"
            && fs_type != "iso9660"
            && Path::new(LIVE_MEDIUM).join("images").is_dir()
        {
            return Ok(BootMedium {
                root: LIVE_MEDIUM.into(),
                mounted: false,
            });
        }
        // In RAM (toram): the partition GRUB booted from, by the UUID it
        // passed — the one device that carries it, never a look-alike.
        let uuid = boot_uuid()?;
        let out = Cmd::new("blkid")
            .args(["-c", "/dev/null", "-o", "device", "-t"])
            .arg(format!("UUID={uuid}"))
            .output_any_status()?;
        let devs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let dev = match devs.as_slice() {
            [one] => one.clone(),
            [] => bail!("no boot medium mounted and no partition with UUID {uuid} (cairn.boot=)"),
            many => bail!(
                "{} devices carry the boot partition's UUID {uuid} ({}): refusing to guess which one GRUB booted from",
                many.len(),
                many.join(", ")
            ),
        };
        let root = Path::new(RUN_DIR).join("boot");
        fs::create_dir_all(&root)?;
        Cmd::new("mount")
            .args(["-o", &format!("ro,{MEDIUM_OPTS}"), &dev])
            .arg(&root)
            .run()?;
        Ok(BootMedium {
            root,
            mounted: true,
        })
    }

    /// Runs `f` with the medium writable (for the GRUB environment block).
    fn writable<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        Cmd::new("mount")
            .args(["-o", &format!("remount,rw,{MEDIUM_OPTS}")])
            .arg(&self.root)
            .run()?;
        let r = f();
        let _ = Cmd::new("sync").run();
        Cmd::new("mount")
            .args(["-o", &format!("remount,ro,{MEDIUM_OPTS}")])
            .arg(&self.root)
            .run()?;
        r
    }
}

impl Drop for BootMedium {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Cmd::new("umount").arg(&self.root).run();
        }
    }
}

/// The boot partition's UUID GRUB passed (`cairn.boot=` on this system's
/// command line, checked by the initramfs).
pub fn boot_uuid() -> Result<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let all: Vec<&str> = cmdline
        .split_whitespace()
        .filter_map(|p| p.strip_prefix("cairn.boot="))
        .collect();
    match all.as_slice() {
        [u] if !u.is_empty() && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
            Ok(u.to_string())
        }
        _ => bail!(
            "no single well-formed cairn.boot= on the kernel command line: not booted by cairn's menu"
        ),
    }
}

/// The manifest of the image in `dir`, read once and trusted only if its
/// bytes are the ones the image's signed SHA256SUMS lists.
pub fn signed_manifest(dir: &Path, key: &Path, work: &Path) -> Result<Manifest> {
    fs::create_dir_all(work)?;
    let sums = fs::read(dir.join("SHA256SUMS"))
        .with_context(|| format!("{}: SHA256SUMS missing", dir.display()))?;
    let sig = fs::read(dir.join("SHA256SUMS.sig"))
        .with_context(|| format!("{}: SHA256SUMS.sig missing", dir.display()))?;
    // The copies are checked and read: what was checked is what is used.
    fs::write(work.join("SHA256SUMS"), &sums)?;
    fs::write(work.join("SHA256SUMS.sig"), &sig)?;
    verify_file(key, &work.join("SHA256SUMS"), work)
        .with_context(|| format!("{}: SHA256SUMS: signature missing or bad", dir.display()))?;
    let want = String::from_utf8_lossy(&sums)
        .lines()
        .find_map(|l| {
            l.strip_suffix(&format!("  {}", image::MANIFEST))
                .map(String::from)
        })
        .with_context(|| format!("{}: SHA256SUMS does not list the manifest", dir.display()))?;
    let data = fs::read(dir.join(image::MANIFEST))
        .with_context(|| format!("{}: manifest missing", dir.display()))?;
    if crate::trust::hash::sha256_hex(&data) != want {
        bail!(
            "{}: the manifest differs from the signed SHA256SUMS",
            dir.display()
        );
    }
    serde_json::from_slice(&data)
        .with_context(|| format!("{}: reading the manifest", dir.display()))
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
    let scratch = tempfile::Builder::new()
        .prefix("cairn-manifests-")
        .tempdir()
        .context("a private temporary directory")?;
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

/// What cairn's menu entry would boot, checked the way the menu checks it,
/// in copies under `work` (what is loaded is what was checked).
#[derive(Debug, Serialize)]
pub struct CheckedBoot {
    pub image: PathBuf,
    pub signed_by: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// boot.cfg's arguments (boot=live, module, console, cairn.sha256=…).
    pub args: String,
}

pub fn check_boot_files(dir: &Path, key: &Path, work: &Path) -> Result<CheckedBoot> {
    fs::create_dir_all(work)?;
    let names = ["SHA256SUMS", BOOT_SUMS, BOOT_CFG, "vmlinuz", "initrd.img"];
    for n in names {
        for f in [n.to_string(), format!("{n}.sig")] {
            fs::copy(dir.join(&f), work.join(&f))
                .with_context(|| format!("{}: {f} missing", dir.display()))?;
        }
    }
    let gpg_work = work.join(".gpg");
    fs::create_dir_all(&gpg_work)?;
    let mut signed_by = String::new();
    for n in names {
        signed_by = verify_file(key, &work.join(n), &gpg_work).with_context(|| {
            format!("REFUSING {}: {n}: signature missing or bad", dir.display())
        })?;
    }
    // BOOTSUMS is this image's: the image's signed SHA256SUMS lists it (a
    // BOOTSUMS of another signed image, with that image's kernel, would
    // pass its own signature).
    let all = fs::read_to_string(work.join("SHA256SUMS"))?;
    let want = all
        .lines()
        .find_map(|l| l.strip_suffix(&format!("  {BOOT_SUMS}")))
        .with_context(|| {
            format!(
                "REFUSING {}: SHA256SUMS does not list {BOOT_SUMS}",
                dir.display()
            )
        })?;
    if crate::trust::hash::sha256_file(&work.join(BOOT_SUMS))?.1 != want {
        bail!(
            "REFUSING {}: {BOOT_SUMS} is not the one the image's SHA256SUMS lists",
            dir.display()
        );
    }
    let sums = fs::read_to_string(work.join(BOOT_SUMS))?;
    let mut listed = 0;
    for line in sums.lines() {
        let (h, n) = line
            .split_once("  ")
            .with_context(|| format!("{BOOT_SUMS}: unreadable line {line:?}"))?;
        if !["vmlinuz", "initrd.img", BOOT_CFG].contains(&n) {
            bail!("{BOOT_SUMS} lists {n:?}");
        }
        let (_, got) = crate::trust::hash::sha256_file(&work.join(n))?;
        if got != h {
            bail!(
                "REFUSING {}: {n} differs from the signed {BOOT_SUMS}",
                dir.display()
            );
        }
        listed += 1;
    }
    if listed != 3 {
        bail!(
            "REFUSING {}: {BOOT_SUMS} does not list kernel, initrd and boot.cfg",
            dir.display()
        );
    }
    let cfg = fs::read_to_string(work.join(BOOT_CFG))?;
    let args = image::boot_cfg_args(&cfg).with_context(|| {
        format!(
            "REFUSING {}: boot.cfg gives no kernel arguments",
            dir.display()
        )
    })?;
    Ok(CheckedBoot {
        image: dir.to_path_buf(),
        signed_by,
        kernel: work.join("vmlinuz"),
        initrd: work.join("initrd.img"),
        args,
    })
}

/// The selector of the menu entry that boots `rel` (`/images/P/V` on the
/// medium), in RAM or not, read from the menu on the medium — once its
/// signature is checked (an unsigned grub.cfg says nothing).
pub fn menu_selector(medium: &Path, rel: &str, ram: bool, key: &Path) -> Result<Option<String>> {
    let scratch = tempfile::Builder::new()
        .prefix("cairn-menu-")
        .tempdir()
        .context("a private temporary directory")?;
    let work = scratch.path();
    let grub = medium.join("boot/grub");
    for f in ["grub.cfg", "grub.cfg.sig"] {
        fs::copy(grub.join(f), work.join(f))
            .with_context(|| format!("{}: {f} missing", grub.display()))?;
    }
    verify_file(key, &work.join("grub.cfg"), work)
        .with_context(|| format!("{}: grub.cfg: signature missing or bad", grub.display()))?;
    let cfg = fs::read_to_string(work.join("grub.cfg"))?;
    Ok(selector_in(&cfg, rel, ram))
}

/// The selector a (checked) menu gives the entry that boots `rel`.
fn selector_in(cfg: &str, rel: &str, ram: bool) -> Option<String> {
    // The call with an empty selector, less its closing quote.
    let call = menu::boot_call(rel, ram, "");
    let needle = &call[..call.len() - 1];
    cfg.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(needle)?;
        rest.split('"').next().map(String::from)
    })
}

/// The kernel command line the menu entry gives: boot.cfg's arguments, the
/// image's directory on the medium, the boot partition, `toram` for the
/// in-RAM entry, the entry that booted (for boot counting).
pub fn command_line(args: &str, rel: &str, uuid: &str, ram: bool, selector: &str) -> String {
    format!(
        "{args} live-media-path={rel} cairn.boot={uuid}{} cairn.entry={selector}",
        if ram { " toram" } else { "" }
    )
}

#[derive(Debug, Serialize)]
pub struct RebootPlan {
    pub image: String,
    pub entry: String,
    pub method: String,
    pub command_line: Option<String>,
    pub signed_by: Option<String>,
    /// Why kexec was not used, when it was asked for.
    pub kexec_fallback: Option<String>,
}

pub struct RebootOptions<'a> {
    pub store: &'a Path,
    pub image: Option<&'a str>,
    pub kexec: bool,
    pub ram: bool,
    pub key: Option<&'a Path>,
    /// Check and load, but do not reboot.
    pub dry_run: bool,
}

/// `cairn reboot [--kexec] [IMAGE]`.
pub fn reboot(o: &RebootOptions) -> Result<RebootPlan> {
    let (profile, _) = booted()?;
    let key = public_key(o.key, o.store)?;
    let uuid = boot_uuid()?;
    let medium = BootMedium::find()?;
    let (dir, _) = find_image(&[&medium.root], o.image, &profile, &key)?;
    let rel = format!(
        "/{}",
        dir.strip_prefix(&medium.root)
            .with_context(|| format!(
                "{} is not on the boot disk: `cairn disk add` it first",
                dir.display()
            ))?
            .display()
    );
    let (p, v) = rel
        .trim_start_matches("/images/")
        .split_once('/')
        .context("an image directory is images/PROFILE/VERSION")?;
    // Both reach the kernel command line (live-media-path=, cairn.entry=),
    // also when the image was named by its path.
    crate::names::check("profile directory", p)?;
    crate::names::check("version directory", v)?;
    // Not in the written menu: an image copied onto the disk by hand, which
    // the menu's "found now" loop offers.
    let entry = menu_selector(&medium.root, &rel, o.ram, &key)?
        .unwrap_or_else(|| menu::found_selector(&rel, o.ram));
    let mut plan = RebootPlan {
        image: format!("{p}/{v}"),
        entry: entry.clone(),
        method: "reboot".into(),
        command_line: None,
        signed_by: None,
        kexec_fallback: None,
    };
    if o.kexec {
        // A refused image is an error: no reboot. Only loading may fall back.
        let work = Path::new(RUN_DIR).join("kexec");
        let _ = fs::remove_dir_all(&work);
        let checked = check_boot_files(&dir, &key, &work)?;
        let cmdline = command_line(&checked.args, &rel, &uuid, o.ram, &entry);
        match kexec_load(&checked, &cmdline) {
            Ok(()) => {
                plan.method = "kexec".into();
                plan.command_line = Some(cmdline);
                plan.signed_by = Some(checked.signed_by);
            }
            Err(e) => {
                tracing::warn!("kexec unavailable, rebooting through the firmware: {e:#}");
                eprintln!("cairn: kexec unavailable ({e:#}): a normal reboot instead");
                plan.kexec_fallback = Some(format!("{e:#}"));
            }
        }
    }
    if plan.method == "reboot" {
        // GRUB's one-shot next_entry picks the image on the next boot.
        let envp = medium.root.join("boot/grub/grubenv");
        if envp.is_file() && !o.dry_run {
            medium.writable(|| {
                let mut vars = env::parse(&fs::read(&envp)?)?;
                env::update(&mut vars, &[("next_entry", &entry)]);
                env::save(&envp, &vars)
            })?;
        }
    }
    drop(medium);
    if o.dry_run {
        if plan.method == "kexec" {
            let _ = Cmd::new("kexec").arg("-u").run();
        }
        return Ok(plan);
    }
    let systemd = Path::new("/run/systemd/system").is_dir();
    match (plan.method.as_str(), systemd) {
        ("kexec", true) => Cmd::new("systemctl").args(["--no-block", "kexec"]).run()?,
        ("kexec", false) => Cmd::new("kexec").arg("-e").run()?,
        (_, true) => Cmd::new("systemctl").args(["--no-block", "reboot"]).run()?,
        _ => Cmd::new("reboot").run()?,
    };
    Ok(plan)
}

/// Loads the checked copies with kexec_file_load (what a kernel locked
/// down under Secure Boot accepts, signed kernels only), else kexec_load.
fn kexec_load(c: &CheckedBoot, cmdline: &str) -> Result<()> {
    if which("kexec").is_none() {
        bail!("kexec not found (apt-get install kexec-tools, or `cairn = true` in the profile)");
    }
    if !Path::new("/sys/kernel/kexec_loaded").exists() {
        bail!("this kernel has no kexec support");
    }
    let load = |file_load: bool| {
        let mut k = Cmd::new("kexec");
        if file_load {
            k = k.arg("-s");
        }
        k.arg("-l")
            .arg(&c.kernel)
            .arg(format!("--initrd={}", c.initrd.display()))
            .arg(format!("--command-line={cmdline}"))
            .run()
    };
    if let Err(e) = load(true) {
        // Locked down (Secure Boot), kexec_load is refused outright, and
        // kexec_file_load takes only kernels signed by a key this kernel
        // trusts: its own, the firmware's db, shim's MOK list and certificate.
        let lockdown = fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
        if lockdown.contains("[integrity]") || lockdown.contains("[confidentiality]") {
            return Err(e).context(
                "this kernel is locked down (Secure Boot) and refused the image's kernel: it \
                 loads only kernels signed by a key it trusts (Debian's kernels are trusted \
                 behind shim — disks made with --shim — not with only your own key in db)",
            );
        }
        tracing::info!("kexec_file_load refused ({e:#}), trying kexec_load");
        load(false).context("loading the kernel with kexec")?;
    }
    if fs::read_to_string("/sys/kernel/kexec_loaded").is_ok_and(|s| s.trim() != "1") {
        bail!("kexec reported success but no kernel is loaded");
    }
    Ok(())
}

/// A package as dpkg or a manifest has it.
type Packages = BTreeMap<String, String>;

fn installed_now() -> Result<Packages> {
    let out = Cmd::new("dpkg-query")
        .args(["-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"])
        .run()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3 && f[2].starts_with("ii")).then(|| (f[0].to_string(), f[1].to_string()))
        })
        .collect())
}

fn of_manifest(m: &Manifest) -> Packages {
    m.packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect()
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    pub package: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What moves the running package set to the target's.
pub fn plan_changes(now: &Packages, target: &Packages) -> Vec<Change> {
    let mut out = Vec::new();
    for (n, v) in target {
        if now.get(n) != Some(v) {
            out.push(Change {
                package: n.clone(),
                from: now.get(n).cloned(),
                to: Some(v.clone()),
            });
        }
    }
    for (n, v) in now {
        if !target.contains_key(n) {
            out.push(Change {
                package: n.clone(),
                from: Some(v.clone()),
                to: None,
            });
        }
    }
    out
}

/// Changes that cannot run without booting: the kernel.
pub fn needs_boot(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| {
            c.package.starts_with("linux-image-") || c.package.starts_with("linux-modules-")
        })
        .map(|c| {
            format!(
                "{} {} → {}",
                c.package,
                c.from.as_deref().unwrap_or("(none)"),
                c.to.as_deref().unwrap_or("(removed)")
            )
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub from: String,
    pub to: String,
    pub image: PathBuf,
    pub changes: Vec<Change>,
    /// What the image changes besides packages (profile files, hooks):
    /// running with the new image's boot.
    pub deferred: Vec<String>,
    /// Packages that differ from the image after apt (should be none).
    pub differs: Vec<String>,
    pub applied_at: i64,
    pub seconds: f64,
    pub dry_run: bool,
}

pub struct ApplyOptions<'a> {
    pub store: &'a Path,
    pub image: Option<&'a str>,
    pub key: Option<&'a Path>,
    pub dry_run: bool,
}

/// `cairn apply-live [IMAGE]`.
pub fn apply_live(o: &ApplyOptions) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let (profile, version) = booted()?;
    let medium = BootMedium::find().ok();
    let mut roots: Vec<&Path> = vec![o.store];
    if let Some(m) = &medium {
        roots.push(&m.root);
    }
    let key = public_key(o.key, o.store)?;
    let (dir, target) = find_image(&roots, o.image, &profile, &key)?;
    let v = image::verify_with(&dir, &key, true)?;
    if !v.ok {
        bail!(
            "REFUSING {}: it does not verify:\n  {}",
            dir.display(),
            v.problems.join("\n  ")
        );
    }
    if target.profile != profile {
        bail!(
            "{} is an image of {}, this system runs {profile}: boot it instead (`cairn reboot --kexec {}/{}`)",
            dir.display(),
            target.profile,
            target.profile,
            target.version
        );
    }
    if target.version == version {
        bail!("this system already runs {profile} {version}");
    }
    if target.version < version {
        bail!(
            "{profile} {} is older than the running {version}: going back is a boot (`cairn reboot --kexec {profile}/{}`)",
            target.version,
            target.version
        );
    }
    let now = installed_now()?;
    let changes = plan_changes(&now, &of_manifest(&target));
    let kernel = needs_boot(&changes);
    if !kernel.is_empty() {
        bail!(
            "the kernel changes ({}): a running kernel cannot be replaced; boot the new image: `cairn reboot --kexec {profile}/{}`",
            kernel.join(", "),
            target.version
        );
    }
    let mut deferred = Vec::new();
    let running = medium
        .as_ref()
        .and_then(|m| {
            image::read_manifest(&m.root.join("images").join(&profile).join(&version)).ok()
        })
        .or_else(|| {
            image::read_manifest(&image::images_dir(o.store).join(&profile).join(&version)).ok()
        });
    match &running {
        Some(r) if r.profile_hash != target.profile_hash => deferred.push(
            "the profile changed (files, hooks, settings): those changes come with the image's next boot".into(),
        ),
        Some(_) => {}
        None => deferred.push(
            "the running image's manifest was not found: files and hooks are not compared".into(),
        ),
    }
    let mut report = ApplyReport {
        from: format!("{profile}/{version}"),
        to: format!("{profile}/{}", target.version),
        image: dir.clone(),
        changes,
        deferred,
        differs: Vec::new(),
        applied_at: crate::unix_now(),
        seconds: 0.0,
        dry_run: o.dry_run,
    };
    if o.dry_run || report.changes.is_empty() {
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    apt_apply(o.store, &target, &report.changes)?;
    let after = installed_now()?;
    report.differs = plan_changes(&after, &of_manifest(&target))
        .iter()
        .map(|c| {
            format!(
                "{}: {} (image: {})",
                c.package,
                c.from.as_deref().unwrap_or("not installed"),
                c.to.as_deref().unwrap_or("not in the image")
            )
        })
        .collect();
    report.seconds = t0.elapsed().as_secs_f64();
    record(&report)?;
    Ok(report)
}

/// apt-get against the local mirror only (its own source list, lists and
/// caches under /run/cairn), one transaction: exact versions in, removed
/// packages purged.
fn apt_apply(store: &Path, target: &Manifest, changes: &[Change]) -> Result<()> {
    let mirrors = crate::build::mirror_sources(store, &target.suite)?;
    // The store reached this machine on a disk or a share that others may
    // write: its mirror state is no authority on keys. Each keyring apt is
    // to trust must be a file of this (signed) image, under the system's
    // keyring directories; the mirror's names follow the name rule.
    for (paths, state, _) in &mirrors {
        crate::mirror::config::validate_repo(&state.repo)
            .with_context(|| format!("mirror {}", paths.name))?;
        for k in &state.repo.keyring {
            trusted_keyring(k).with_context(|| format!("mirror {}", paths.name))?;
        }
    }
    let base = Path::new(RUN_DIR).join("apt");
    let _ = fs::remove_dir_all(&base);
    for d in ["parts", "lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(base.join(d))?;
    }
    let lines: Vec<String> = mirrors.iter().flat_map(|(_, _, l)| l.clone()).collect();
    fs::write(base.join("sources.list"), lines.join("\n") + "\n")?;
    let dirs = [
        ("Dir::Etc::SourceList", base.join("sources.list")),
        ("Dir::Etc::SourceParts", base.join("parts")),
        ("Dir::State::Lists", base.join("lists")),
        ("Dir::Cache", base.join("cache")),
    ];
    let opts: Vec<String> = dirs
        .iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={}", v.display())])
        .collect();
    let apt = |args: &[String]| {
        let a: Vec<&str> = opts.iter().chain(args).map(String::as_str).collect();
        crate::build::debootstrap::apt(Path::new("/"), &a)
    };
    apt(&["update".into()])?;
    let mut args: Vec<String> = vec![
        "install".into(),
        "--purge".into(),
        "--allow-downgrades".into(),
    ];
    for c in changes {
        match &c.to {
            Some(v) => args.push(format!("{}={v}", c.package)),
            None => args.push(format!("{}-", c.package)),
        }
    }
    apt(&args)?;
    let _ = fs::remove_dir_all(&base);
    Ok(())
}

/// A keyring the running image itself holds in a system keyring directory
/// (a regular file, reached without a symlink).
fn trusted_keyring(k: &Path) -> Result<()> {
    const DIRS: [&str; 3] = [
        "/usr/share/keyrings/",
        "/etc/apt/keyrings/",
        "/etc/apt/trusted.gpg.d/",
    ];
    let s = k.to_str().unwrap_or("");
    let name = s.rsplit('/').next().unwrap_or("");
    let under = DIRS.iter().any(|d| s.strip_prefix(d) == Some(name));
    if !under || !crate::names::is_safe(name) {
        bail!(
            "keyring {}: only a file of this image in {} is trusted for apply-live",
            k.display(),
            DIRS.join(", ")
        );
    }
    let m = fs::symlink_metadata(k).with_context(|| format!("keyring {}", k.display()))?;
    if !m.file_type().is_file() {
        bail!("keyring {}: not a regular file of this image", k.display());
    }
    Ok(())
}

/// Appends the report to the record of what was applied to this system.
fn record(r: &ApplyReport) -> Result<()> {
    let p = Path::new(APPLIED_LOG);
    let mut all: Vec<serde_json::Value> = fs::read(p)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    all.push(serde_json::to_value(r)?);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    crate::fsutil::write_atomic(p, &serde_json::to_vec_pretty(&all)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(l: &[(&str, &str)]) -> Packages {
        l.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn changes_and_the_kernel_rule() {
        let now = pk(&[
            ("bash", "5.2-1"),
            ("nano", "7.2-1"),
            ("linux-image-amd64", "6.1.1"),
        ]);
        let target = pk(&[
            ("bash", "5.2-2"),
            ("less", "590-2"),
            ("linux-image-amd64", "6.1.1"),
        ]);
        let c = plan_changes(&now, &target);
        assert_eq!(
            c,
            vec![
                Change {
                    package: "bash".into(),
                    from: Some("5.2-1".into()),
                    to: Some("5.2-2".into())
                },
                Change {
                    package: "less".into(),
                    from: None,
                    to: Some("590-2".into())
                },
                Change {
                    package: "nano".into(),
                    from: Some("7.2-1".into()),
                    to: None
                },
            ]
        );
        assert!(needs_boot(&c).is_empty());
        let k = plan_changes(&now, &pk(&[("linux-image-amd64", "6.1.2")]));
        assert_eq!(needs_boot(&k), ["linux-image-amd64 6.1.1 → 6.1.2"]);
    }

    /// apply-live trusts only keyrings of the running image, by a plain
    /// path in a system keyring directory.
    #[test]
    fn keyrings_come_from_the_image_only() {
        let ok = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
        if ok.is_file() {
            trusted_keyring(ok).unwrap();
        }
        for bad in [
            "/srv/cairn/keys/evil.gpg",
            "/usr/share/keyrings/../../../srv/evil.gpg",
            "/usr/share/keyrings/x trusted=yes",
            "/usr/share/keyrings/sub/k.gpg",
            "relative.gpg",
        ] {
            assert!(trusted_keyring(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_menu_entry_and_its_command_line() {
        let cfg = format!(
            "menuentry x {{\n    {}\n}}\nmenuentry y {{\n    {}\n}}\n",
            menu::boot_call("/images/web/2", false, "web-2"),
            menu::boot_call("/images/web/1", true, "rollback>web-1-ram")
        );
        assert_eq!(
            selector_in(&cfg, "/images/web/2", false).as_deref(),
            Some("web-2")
        );
        assert_eq!(
            selector_in(&cfg, "/images/web/1", true).as_deref(),
            Some("rollback>web-1-ram")
        );
        assert_eq!(selector_in(&cfg, "/images/web/1", false), None);
        assert_eq!(
            command_line(
                "boot=live quiet",
                "/images/web/1",
                "1234-abcd",
                true,
                "rollback>web-1-ram"
            ),
            "boot=live quiet live-media-path=/images/web/1 cairn.boot=1234-abcd toram cairn.entry=rollback>web-1-ram"
        );
    }
}
