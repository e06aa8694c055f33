//! The debootstrap route: debootstrap makes the base from the suite's own
//! mirror (it reads one suite, so the mirror must keep every version:
//! `cairn mirror sync --all-versions`), then, in a chroot with /proc, /sys,
//! /dev and the local mirrors mounted, apt brings in the other suites
//! (-updates, -security) and the profile's files and hooks are applied.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::chroot::{ChrootMounts, apt, apt_sources, chroot, inside, inside_link};
use crate::cmd::tool::DEBOOTSTRAP;
use crate::cmd::{Cmd, require};
use crate::profile::Profile;

pub fn bootstrap(
    profile: &Profile,
    packages: &[String],
    inputs: &super::Inputs,
    rootfs: &Path,
    work: &Path,
    epoch: i64,
    profile_arg: &str,
) -> Result<()> {
    require(&[&DEBOOTSTRAP])?;
    let mirrors = &inputs.mirrors;
    let (paths, state, _) = mirrors
        .iter()
        .find(|(_, s, _)| s.repo.suites.iter().any(|x| x == &profile.suite))
        .with_context(|| {
            format!(
                "no local mirror has suite {} itself (debootstrap needs it)",
                profile.suite
            )
        })?;
    if !state.selection.all_versions && !state.selection.full {
        bail!(
            "debootstrap reads suite {} alone, and mirror {} keeps only the newest version of each package: \
             run `cairn mirror sync --profile {profile_arg} --all-versions` (or use bootstrap = \"mmdebstrap\")",
            profile.suite,
            paths.name
        );
    }
    let keyring = state
        .repo
        .keyring
        .first()
        .context("the mirror has no keyring")?;
    // debootstrap itself: the base and the packages, from the suite's own mirror.
    Cmd::new(DEBOOTSTRAP.program)
        .arg(format!(
            "--variant={}",
            if profile.variant == "minbase" {
                "minbase"
            } else {
                "buildd"
            }
        ))
        .arg(format!("--arch={}", profile.architecture))
        .arg(format!("--keyring={}", keyring.display()))
        .arg(format!("--components={}", state.repo.components.join(",")))
        .arg(format!("--include={}", packages.join(",")))
        .arg(&profile.suite)
        .arg(rootfs)
        .arg(format!("file://{}", paths.root.display()))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .progress("debootstrap")
        .run()
        .context("bootstrapping with debootstrap")?;
    // Then apt in the chroot, with every local mirror of the suite family.
    let roots: Vec<PathBuf> = mirrors.iter().map(|(p, _, _)| p.root.clone()).collect();
    let _mounts = ChrootMounts::mount(rootfs, &roots)?;
    let _ = fs::remove_file(inside_link(rootfs, "/etc/apt/sources.list")?);
    let list = apt_sources(rootfs, mirrors)?;
    let pinned = inputs.apt_args();
    let with = |args: &[&'static str]| -> Vec<String> {
        pinned
            .iter()
            .cloned()
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: &[&'static str]| -> Result<String> {
        let a = with(args);
        apt(
            rootfs,
            Some(epoch),
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    run(&["-o", "Acquire::Languages=none", "update"])?;
    run(&["dist-upgrade"])?;
    // cairn's squashfs check in the initramfs, which debootstrap built
    // without it; microcode for every CPU.
    super::customize::live_verify(rootfs)?;
    Cmd::new("chroot")
        .arg(rootfs)
        .args(["sh", "-c", super::customize::MICROCODE_EVERYWHERE, "sh", ""])
        .run()
        .context("microcode settings")?;
    chroot(rootfs, epoch, &["update-initramfs", "-u", "-k", "all"])?;
    // Profile files, then hooks (tree as $1, run on the host, chroot available).
    for f in &profile.files {
        let dest = inside(rootfs, &f.dest)?;
        fs::create_dir_all(dest.parent().unwrap_or(rootfs))?;
        fs::copy(&f.source, &dest)
            .with_context(|| format!("copying {} to {}", f.source.display(), f.dest))?;
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut fs::metadata(&dest)?.permissions(),
            f.mode,
        );
        fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(f.mode))?;
    }
    for (p, h) in super::write_hooks(profile, work)?
        .iter()
        .zip(&profile.hooks)
    {
        Cmd::new("sh")
            .arg(p)
            .arg(rootfs)
            .env("MMDEBSTRAP_MODE", "root")
            .env("MMDEBSTRAP_HOOK", "customize")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .run()
            .with_context(|| format!("hook {}", h.name))?;
    }
    chroot(rootfs, epoch, &["apt-get", "clean"])?;
    fs::remove_file(&list)?;
    Ok(())
}
