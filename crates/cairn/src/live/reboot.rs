//! `cairn reboot [--kexec]`: into a chosen image of the boot disk, checked as
//! cairn's menu checks it, loaded from checked copies in RAM.

use crate::boot::model::{BootCounter, BootPartition, GRUBENV, var};
use fs_err as fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::soft::{self, NextRoot, SoftMode};
use super::{BootMedium, boot_uuid, booted, find_image, public_key};
use crate::boot::{env, menu};
use crate::cmd::{Cmd, which};
use crate::image::paths::{HEALTH_FILE, REPORTED};
use crate::image::verify::{CheckedBoot, check_boot_files, check_boot_in_place};

/// The selector of the menu entry that boots `rel` (`/images/P/V` on the
/// medium), in RAM or not, read from the menu on the medium — once its
/// signature is checked (an unsigned grub.cfg says nothing).
pub fn menu_selector(medium: &Path, rel: &str, ram: bool, key: &Path) -> Result<Option<String>> {
    let scratch = super::scratch("cairn-menu-")?;
    let work = scratch.path();
    let grub = medium.join("boot/grub");
    let cfg = crate::image::verify::signed_small_file(&grub, "grub.cfg", key, work)?;
    let cfg = String::from_utf8_lossy(&cfg);
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
    /// Why the soft switch was not used, when it was asked for.
    pub soft_fallback: Option<String>,
}

pub struct RebootOptions<'a> {
    pub store: &'a Path,
    pub image: Option<&'a str>,
    pub kexec: bool,
    /// Switch userspace only (systemd's soft-reboot), when the image has
    /// the running kernel; else as the mode says.
    pub soft: Option<SoftMode>,
    pub ram: bool,
    pub key: Option<&'a Path>,
    /// Check and load, but do not reboot.
    pub dry_run: bool,
}

/// `cairn reboot [--kexec] [IMAGE]`.
pub fn reboot(o: &RebootOptions) -> Result<RebootPlan> {
    let profile = booted()?.profile().to_string();
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
        soft_fallback: None,
    };
    let mut next_root = None;
    let mut kexec = o.kexec;
    if let Some(mode) = o.soft {
        let id = crate::boot::model::ImageId::new(p, v)?;
        match soft_switch(o, &dir, &id, &rel, &uuid, &entry, &key)? {
            Ok(s) => {
                plan.method = "soft-reboot".into();
                plan.command_line = Some(s.cmdline.clone());
                plan.signed_by = Some(s.signed_by.clone());
                next_root = Some(s);
            }
            Err(why) if mode == SoftMode::Required => {
                bail!("no soft reboot into {p}/{v}: {why} (--soft=required: nothing done)")
            }
            Err(why) => {
                tracing::warn!("no soft reboot ({why}): trying kexec");
                plan.soft_fallback = Some(why);
                kexec = true;
            }
        }
    }
    if kexec && plan.method == "reboot" {
        load_kexec(o, &medium, &dir, &rel, &uuid, &key, &mut plan)?;
    }
    if plan.method == "reboot" {
        // GRUB's one-shot next_entry picks the image on the next boot.
        let envp = medium.root.join(GRUBENV);
        if envp.is_file() && !o.dry_run {
            medium.writable(|| {
                let mut vars = BootPartition::new(&medium.root).vars()?;
                env::update(&mut vars, &[(var::NEXT, &entry)]);
                env::save(&envp, &vars)
            })?;
        }
    }
    if let Some(s) = next_root {
        if !o.dry_run {
            switch_softly(s, &medium, &entry)?;
        }
        return Ok(plan);
    }
    drop(medium);
    if o.dry_run {
        if plan.method == "kexec" {
            let _ = Cmd::new("kexec").arg("-u").run();
        }
        return Ok(plan);
    }
    restart(&plan.method)?;
    Ok(plan)
}

/// Loads the image's checked kernel for kexec, counting the try as GRUB
/// would; when kexec cannot be used the plan says why and stays a reboot.
/// A refused image is an error: no reboot. Only loading may fall back.
fn load_kexec(
    o: &RebootOptions,
    medium: &BootMedium,
    dir: &Path,
    rel: &str,
    uuid: &str,
    key: &Path,
    plan: &mut RebootPlan,
) -> Result<()> {
    // This call's own copies (another cairn reboot cannot swap them before
    // they are loaded), gone once loaded.
    let scratch = super::scratch("cairn-kexec-")?;
    let checked = check_boot_files(dir, key, scratch.path())?;
    let cmdline = command_line(&checked.args, rel, uuid, o.ram, &plan.entry);
    match kexec_load(&checked, &cmdline) {
        Ok(()) => {
            // GRUB counts a boot of the entry on trial as it loads it;
            // kexec passes GRUB by, so the try is counted here.
            if !o.dry_run
                && let Err(e) = count_try_on(medium, &plan.entry)
            {
                let _ = Cmd::new("kexec").arg("-u").run();
                return Err(e);
            }
            plan.method = "kexec".into();
            plan.command_line = Some(cmdline);
            plan.signed_by = Some(checked.signed_by);
        }
        Err(e) => {
            tracing::warn!("kexec unavailable, rebooting through the firmware: {e:#}");
            plan.kexec_fallback = Some(format!("{e:#}"));
        }
    }
    Ok(())
}

/// Ends this system: `systemctl kexec` into the loaded kernel, or a reboot
/// through the firmware (without systemd: `kexec -e`, `reboot`).
fn restart(method: &str) -> Result<()> {
    let systemd = Path::new("/run/systemd/system").is_dir();
    // (A /run/nextroot that some other tool left would turn systemctl's
    // reboot and kexec into a soft reboot: cairn's mean what they say.)
    let (k, v) = soft::SKIP_AUTO_SOFT;
    match (method, systemd) {
        ("kexec", true) => Cmd::new("systemctl")
            .args(["--no-block", "kexec"])
            .env(k, v)
            .run()?,
        ("kexec", false) => Cmd::new("kexec").arg("-e").run()?,
        (_, true) => Cmd::new("systemctl")
            .args(["--no-block", "reboot"])
            .env(k, v)
            .run()?,
        _ => Cmd::new("reboot").run()?,
    };
    Ok(())
}

/// A soft switch, prepared and checked: its root, the command line left in
/// it, the lock that keeps other switches out until systemd takes it.
struct SoftSwitch {
    root: NextRoot,
    cmdline: String,
    signed_by: String,
    _lock: std::fs::File,
}

/// The point of no return: the root at /run/nextroot, the try counted,
/// systemd's soft-reboot queued. A failure before the end takes back what
/// was done (the root unmounted, the try given back).
fn switch_softly(mut s: SoftSwitch, medium: &BootMedium, entry: &str) -> Result<()> {
    s.root.activate()?;
    let counted = count_try_on(medium, entry)?;
    // The unit that names the running image runs again in the next root
    // (images before soft reboots did not stop it at a shutdown).
    let _ = Cmd::new("systemctl")
        .args(["stop", "cairn-image.service"])
        .run();
    let queued = Cmd::new("systemctl")
        .args(["--no-block", "soft-reboot"])
        .run();
    if let Err(e) = queued {
        if let Some(left) = counted {
            give_back_try(medium, entry, &left);
        }
        return Err(e);
    }
    // What this boot found out is not the next image's: it says again.
    for f in [HEALTH_FILE, "/run/cairn/health.log", REPORTED] {
        let _ = fs::remove_file(f);
    }
    s.root.keep();
    Ok(())
}

/// The try [`count_try`] counted, given back — only while the counter is
/// still as that left it (a pull may have set another trial since).
fn give_back_try(medium: &BootMedium, entry: &str, left: &str) {
    let r = BootPartition::new(&medium.root).lock().and_then(|_l| {
        medium.writable(|| {
            let part = BootPartition::new(&medium.root);
            let mut vars = part.vars()?;
            let c = BootCounter::from_vars(&vars);
            let counted = left.parse::<u32>().ok().and_then(|l| l.checked_sub(1));
            if c.trial.as_deref() != Some(entry) || c.left != counted {
                bail!("the boot counter changed since: left as it is");
            }
            env::update(&mut vars, &[(var::LEFT, left)]);
            env::save(&part.grubenv(), &vars)
        })
    });
    if let Err(e) = r {
        tracing::warn!("the try counted for {entry} is not given back: {e:#}");
    }
}

/// A switch through systemd's soft-reboot, prepared: the image's boot files
/// checked as the menu checks them (and its boot.cfg its own) — the kernel
/// and initrd, which it does not load, read once where they lie for their
/// hashes and signatures —, the host, the kernel and its arguments fit for it,
/// the next root mounted and the command line left in it. `Err` inside:
/// why this host cannot switch softly into it (the caller falls back); a
/// refused image is the outer error.
fn soft_switch(
    o: &RebootOptions,
    dir: &Path,
    id: &crate::boot::model::ImageId,
    rel: &str,
    uuid: &str,
    entry: &str,
    key: &Path,
) -> Result<std::result::Result<SoftSwitch, String>> {
    let lock = soft::lock()?;
    soft::take_down_stale()?;
    soft::check_entry(entry)?;
    let work = super::scratch("cairn-soft-check-")?;
    // (What the running systemd is asked meanwhile: the checks take the
    // longest, under emulation seconds.)
    let (host_unfit, checked) = std::thread::scope(|s| {
        let host = s.spawn(soft::host_unfit);
        let checked = check_boot_in_place(dir, key, work.path());
        (host.join(), checked)
    });
    let checked = checked?;
    let host_unfit =
        host_unfit.unwrap_or_else(|_| Some("asking systemd its version failed".into()));
    soft::check_image_arg(&checked.args, id)?;
    let layers = soft::signed_layers(&checked.args).map_err(|e| {
        crate::trust::VerificationFailed::new(format!("REFUSING {}: {e:#}", dir.display()))
    })?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let version = fs::read_to_string("/proc/sys/kernel/version")?;
    let kernel_cmdline = fs::read_to_string("/proc/cmdline")?;
    if let Some(why) = host_unfit
        .or_else(|| soft::kernel_unfit(&checked.kernel_head, release.trim(), version.trim()))
        .or_else(|| soft::args_unfit(&checked.args, &kernel_cmdline))
    {
        return Ok(Err(why));
    }
    let tag = format!(
        "soft{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let root = NextRoot::prepare(dir, &layers, &tag, o.ram)?;
    if let Some(why) = root.unfit(release.trim()) {
        return Ok(Err(why));
    }
    let cmdline = command_line(&checked.args, rel, uuid, o.ram, entry);
    root.leave_cmdline(&cmdline)?;
    Ok(Ok(SoftSwitch {
        root,
        cmdline,
        signed_by: checked.signed_by,
        _lock: lock,
    }))
}

/// [`count_try`] on the boot disk, locked and writable for that moment:
/// the tries left before, when one was counted.
fn count_try_on(medium: &BootMedium, entry: &str) -> Result<Option<String>> {
    if !medium.root.join(GRUBENV).is_file() {
        return Ok(None);
    }
    BootPartition::new(&medium.root)
        .lock()
        .and_then(|_lock| medium.writable(|| count_try(&medium.root, entry)))
}

/// Counts one boot of `entry` when it is on trial and not yet good, as
/// GRUB's menu does; refuses when it has no tries left (GRUB would not
/// boot it either).
fn count_try(root: &Path, entry: &str) -> Result<Option<String>> {
    let part = BootPartition::new(root);
    let envp = part.grubenv();
    let mut vars = part.vars()?;
    let c = BootCounter::from_vars(&vars);
    if c.trial.as_deref() != Some(entry) || c.good.as_deref() == Some(entry) {
        return Ok(None);
    }
    let left = c.left.unwrap_or(0);
    if left == 0 {
        bail!(
            "{entry} is on trial with no boot tries left: GRUB boots the last good image instead"
        );
    }
    let l = (left - 1).to_string();
    env::update(&mut vars, &[(var::LEFT, &l)]);
    env::save(&envp, &vars)?;
    Ok(Some(left.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kexec_counts_a_try_of_the_trial() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let p = r.join(GRUBENV);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let set = |vars: &[(&str, &str)]| {
            let mut v = Vec::new();
            env::update(&mut v, vars);
            env::save(&p, &v).unwrap();
        };
        let left = || {
            env::parse(&fs::read(&p).unwrap())
                .unwrap()
                .into_iter()
                .find(|(k, _)| k == "cairn_left")
                .map(|(_, v)| v)
        };
        set(&[("cairn_trial", "found>/images/w/2"), ("cairn_left", "2")]);
        count_try(r, "found>/images/w/2").unwrap();
        assert_eq!(left().as_deref(), Some("1"));
        // Another entry, or a trial that passed: nothing counted.
        count_try(r, "w-1").unwrap();
        assert_eq!(left().as_deref(), Some("1"));
        count_try(r, "found>/images/w/2").unwrap();
        assert!(count_try(r, "found>/images/w/2").is_err(), "no tries left");
        set(&[
            ("cairn_trial", "w-2"),
            ("cairn_left", "0"),
            ("cairn_good", "w-2"),
        ]);
        count_try(r, "w-2").unwrap();
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
