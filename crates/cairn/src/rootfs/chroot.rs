//! A root tree as a chroot sees it: paths resolved inside it (its
//! symlinks never lead out), the mounts a chroot phase needs (undone
//! deepest first), apt and other programs run in it. Shared by the build
//! (both bootstrap routes, cairn's own steps), the upgrade and apply-live.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd::Cmd;
use crate::fsutil::unmount_below;
use crate::mirror::state::{MirrorPaths, MirrorState};

/// `abs`, an absolute path in the tree at `root`, as a path on this host,
/// resolved as a chroot would (`fsutil::resolve_in_root`).
pub fn inside(root: &Path, abs: &str) -> Result<PathBuf> {
    crate::fsutil::resolve_in_root(root, abs, true)
}

/// As `inside`, but a symlink at the end is the path itself (to remove or
/// replace the link, not what it points to).
pub fn inside_link(root: &Path, abs: &str) -> Result<PathBuf> {
    crate::fsutil::resolve_in_root(root, abs, false)
}

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
/// closure without them), keeping existing conffiles; in a tree, without
/// an fsync of every unpacked file. Returns its output.
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
    // A tree is packed into squashfs, or thrown away if this fails: dpkg
    // need not fsync every file it unpacks. The running system keeps it.
    if root != Path::new("/") {
        a.extend(["-o", "Dpkg::Options::=--force-unsafe-io"]);
    }
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
