//! The parent image's layers, mounted read-only and stacked with overlayfs
//! under a fresh upper directory: the tree an upgrade changes, and the
//! upper directory that becomes its delta.

use fs_err as fs;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::Cmd;
use crate::fsutil::WorkDir;
use crate::image::Manifest;
use crate::rootfs::chroot::mount_at;

/// The stacked tree: `root` (the overlay), `upper` (what changed), all in
/// `work`, which unmounts everything below it when dropped.
pub(super) struct Stack {
    pub work: WorkDir,
    pub root: PathBuf,
    pub upper: PathBuf,
}

/// A path for an overlayfs mount option: its bytes, unless they hold one of
/// the option separators (`,` `:` `\\`), which overlayfs would split on.
fn overlay_path(p: &Path) -> Result<&OsStr> {
    use std::os::unix::ffi::OsStrExt;
    if p.as_os_str().as_bytes().iter().any(|b| b",:\\".contains(b)) {
        bail!(
            "{}: a work path with `,`, `:` or `\\` cannot be an overlayfs layer; choose another --store",
            p.display()
        );
    }
    Ok(p.as_os_str())
}

/// Stacks `parent`'s layers (in `parent_dir`) in a private work directory
/// `work`, lowest first, read-only, under a fresh upper directory.
pub(super) fn stack(work: PathBuf, parent_dir: &Path, parent: &Manifest) -> Result<Stack> {
    let work = WorkDir(work);
    let _ = crate::fsutil::unmount_below(&work.0);
    let _ = fs::remove_dir_all(&work.0);
    crate::fsutil::private_dir(&work.0)?;
    let root = work.0.join("root");
    let upper = work.0.join("upper");
    let ovl = work.0.join("ovl-work");
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&ovl)?;
    // overlayfs wants the topmost first.
    let mut lowers = Vec::new();
    for (i, l) in parent.layers.iter().enumerate() {
        let m = work.0.join(format!("lower{i}"));
        let layer = parent_dir.join(l);
        mount_at(
            &[
                OsStr::new("-t"),
                OsStr::new("squashfs"),
                OsStr::new("-o"),
                OsStr::new("loop,ro"),
                layer.as_os_str(),
            ],
            &m,
        )
        .with_context(|| format!("mounting layer {l}"))?;
        lowers.push(m);
    }
    // overlayfs options: the paths as they are (any bytes but its separators).
    let mut opt = OsString::from("lowerdir=");
    for (i, p) in lowers.iter().rev().enumerate() {
        if i > 0 {
            opt.push(":");
        }
        opt.push(overlay_path(p)?);
    }
    opt.push(",upperdir=");
    opt.push(overlay_path(&upper)?);
    opt.push(",workdir=");
    opt.push(overlay_path(&ovl)?);
    // uuid=off: no random identity (Linux 6.6+ stores one in an xattr
    // of the upper directory) would make every delta's bytes differ.
    opt.push(",redirect_dir=off,metacopy=off,index=off,uuid=off");
    mount_at(
        &[
            OsStr::new("-t"),
            OsStr::new("overlay"),
            OsStr::new("overlay"),
            OsStr::new("-o"),
            &opt,
        ],
        &root,
    )
    .context("stacking the layers with overlayfs")?;
    Ok(Stack { work, root, upper })
}

impl Stack {
    /// Unmounts the overlay: the upper directory is complete only then
    /// (before it is packed as a delta).
    pub(super) fn unmount_root(&self) -> Result<()> {
        Cmd::new("umount").arg(&self.root).run()?;
        Ok(())
    }
}
