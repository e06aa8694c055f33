//! A boot partition mounted for a change (images added, the menu written
//! again): its content is not trusted, so nothing on it is followed,
//! executed or opened as a device.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::layout::find_boot_partition;
use crate::cmd::Cmd;

/// The boot partition mounted read-write for the life of the value.
pub struct MountedBoot {
    pub dir: PathBuf,
}

impl MountedBoot {
    pub fn mount(disk: &Path, store: &Path) -> Result<MountedBoot> {
        MountedBoot::mount_with(disk, store, false)
    }

    /// Read-only (`--dry-run`: the partition is looked at, not changed).
    pub fn mount_ro(disk: &Path, store: &Path) -> Result<MountedBoot> {
        MountedBoot::mount_with(disk, store, true)
    }

    fn mount_with(disk: &Path, store: &Path, ro: bool) -> Result<MountedBoot> {
        // A second, loop mount of a mounted file system's blocks corrupts it.
        if super::is_block_device(disk)?
            && let Some(why) = super::device::device_in_use(
                disk,
                Path::new("/proc/self/mountinfo"),
                Path::new("/proc/swaps"),
                Path::new("/sys"),
            )?
        {
            bail!("{} is in use: {why}; nothing was done", disk.display());
        }
        let p = find_boot_partition(disk)?;
        let dir = store.join(format!(".mnt-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Cmd::new("mount")
            .arg("-o")
            // What is on the partition is not trusted: no symlink on it is
            // followed (a link to the build host's /etc would be written
            // through), no device node or setuid file is honoured.
            .arg(format!(
                "{}loop,offset={},sizelimit={},nosymfollow,nodev,nosuid,noexec",
                // Read-only: not even a journal replay.
                if ro { "ro,noload," } else { "" },
                p.offset(),
                p.bytes()
            ))
            .arg(disk)
            .arg(&dir)
            .run()
            .with_context(|| {
                format!(
                    "mounting the boot partition of {} (needs root)",
                    disk.display()
                )
            })?;
        Ok(MountedBoot { dir })
    }
}

impl Drop for MountedBoot {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(&self.dir).run();
        let _ = fs::remove_dir(&self.dir);
    }
}
