//! The debootstrap route: debootstrap makes the base from the suite's own
//! mirror (it reads one suite, so the mirror must keep every version:
//! `cairn mirror sync --all-versions`), then, in a chroot with /proc, /sys,
//! /dev and the local mirrors mounted, apt brings in the other suites
//! (-updates, -security) and the profile's files and hooks are applied.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::customize::{inside, inside_link};
use super::unmount_below;
use crate::cmd::tool::DEBOOTSTRAP;
use crate::cmd::{Cmd, require};
use crate::mirror::state::{MirrorPaths, MirrorState};
use crate::profile::Profile;

/// Mounts made for the chroot phase; all undone on drop, deepest first,
/// and the directories made for them in the tree removed (the build host's
/// paths are no part of an image).
pub(crate) struct ChrootMounts(PathBuf, Vec<PathBuf>);

impl ChrootMounts {
    pub(crate) fn mount(root: &Path, mirrors: &[PathBuf]) -> Result<ChrootMounts> {
        let mut guard = ChrootMounts(root.to_path_buf(), Vec::new());
        mount_at(&["-t", "proc", "proc"], &root.join("proc"))?;
        mount_at(&["--rbind", "/sys"], &root.join("sys"))?;
        mount_at(&["--rbind", "/dev"], &root.join("dev"))?;
        for dir in mirrors {
            // Read-only, at the same path, so file:// sources work inside.
            let target = inside(root, &dir.display().to_string())?;
            let mut missing: Vec<PathBuf> = target
                .ancestors()
                .take_while(|a| a.starts_with(root) && *a != root)
                .take_while(|a| fs::symlink_metadata(a).is_err())
                .map(Path::to_path_buf)
                .collect();
            fs::create_dir_all(&target)?;
            guard.1.append(&mut missing);
            Cmd::new("mount")
                .arg("--bind")
                .arg(dir)
                .arg(&target)
                .run()?;
            Cmd::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(&target)
                .run()?;
        }
        Ok(guard)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        if let Err(e) = unmount_below(&self.0) {
            tracing::warn!("{e:#}");
            return;
        }
        // Only what this made, only if empty (never through a mount: all are
        // gone).
        self.1
            .sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &self.1 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The local mirrors as an apt source list in the tree (and the keyring files
/// the lines name, at the same paths); returns the list's path.
pub(crate) fn apt_sources(
    rootfs: &Path,
    mirrors: &[(MirrorPaths, MirrorState, Vec<String>)],
) -> Result<PathBuf> {
    let list = inside(rootfs, "/etc/apt/sources.list.d/cairn-build.list")?;
    let lines: Vec<String> = mirrors.iter().flat_map(|(_, _, l)| l.clone()).collect();
    fs::write(&list, lines.join("\n") + "\n")?;
    for (_, s, _) in mirrors {
        for k in &s.repo.keyring {
            let target = inside(rootfs, &k.display().to_string())?;
            if !target.exists() {
                fs::create_dir_all(target.parent().unwrap_or(rootfs))?;
                fs::copy(k, &target).with_context(|| format!("copying keyring {}", k.display()))?;
            }
        }
    }
    Ok(list)
}

/// `mount ARGS TARGET`, the target made first.
pub(crate) fn mount_at<S: AsRef<std::ffi::OsStr>>(args: &[S], target: &Path) -> Result<()> {
    fs::create_dir_all(target)?;
    Cmd::new("mount").args(args).arg(target).run().map(|_| ())
}

/// apt-get in the tree (through chroot; `/` is the running system),
/// non-interactive, without Recommends (as mmdebstrap: the mirror holds the
/// closure without them), keeping existing conffiles. Returns its output.
/// `epoch` is SOURCE_DATE_EPOCH for everything it runs (the initramfs,
/// caches that record times).
pub(crate) fn apt(root: &Path, epoch: Option<i64>, args: &[&str]) -> Result<String> {
    let mut a = vec![
        "apt-get",
        "-y",
        "-o",
        "APT::Install-Recommends=false",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    a.extend(args);
    let cmd = if root == Path::new("/") {
        Cmd::new(a.remove(0))
    } else {
        Cmd::new("chroot").arg(root)
    };
    let mut cmd = cmd.args(&a).env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(e) = epoch {
        cmd = cmd.env("SOURCE_DATE_EPOCH", e.to_string());
    }
    let out = cmd
        .progress(&format!("apt-get {}", args.first().copied().unwrap_or("")))
        .run()
        .with_context(|| format!("apt-get {} in {}", args.join(" "), root.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command in the tree, with SOURCE_DATE_EPOCH `epoch`.
pub(crate) fn chroot(root: &Path, epoch: i64, args: &[&str]) -> Result<()> {
    Cmd::new("chroot")
        .arg(root)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .progress(args.first().copied().unwrap_or("chroot"))
        .run()
        .map(|_| ())
}

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
