//! A boot partition mounted for a change (images added, the menu written
//! again): its content is not trusted, so nothing on it is followed,
//! executed or opened as a device.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::layout::find_boot_partition;
use super::lock::{Access, DiskLock, WAIT};
use crate::cmd::Cmd;

/// The boot partition mounted for the life of the value, under the disk's
/// lock (`lock`): read-write under a writer's lock, read-only under a
/// reader's.
pub struct MountedBoot {
    pub dir: PathBuf,
    lock: Option<DiskLock>,
}

impl MountedBoot {
    /// Read-write, the disk locked for it first (waiting for another
    /// cairn's lock up to `lock::WAIT`).
    pub fn mount(disk: &Path, store: &Path) -> Result<MountedBoot> {
        MountedBoot::mount_locked(DiskLock::acquire(disk, Access::Write, WAIT)?, store)
    }

    /// Read-only (`--dry-run`, `status`: the partition is looked at, not
    /// changed — not a byte of the disk), sharing the disk's lock with
    /// other readers.
    pub fn mount_ro(disk: &Path, store: &Path) -> Result<MountedBoot> {
        MountedBoot::mount_locked(DiskLock::acquire(disk, Access::Read, WAIT)?, store)
    }

    /// Mounted under `lock`: read-write if it is a writer's.
    pub fn mount_locked(lock: DiskLock, store: &Path) -> Result<MountedBoot> {
        let dir = MountedBoot::mount_with(&lock.disk, store, !lock.writable())?;
        Ok(MountedBoot {
            dir,
            lock: Some(lock),
        })
    }

    /// Unmounts it and gives back the disk's lock (a command that writes
    /// the disk outside the partition next: GRUB's own partitions).
    pub fn unmount(mut self) -> DiskLock {
        let lock = self
            .lock
            .take()
            .expect("a mounted boot partition is locked");
        drop(self);
        lock
    }

    fn mount_with(disk: &Path, store: &Path, ro: bool) -> Result<PathBuf> {
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
        if !ro {
            super::remove_stale_work(store)?;
        }
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
        Ok(dir)
    }
}

impl Drop for MountedBoot {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(&self.dir).run();
        let _ = fs::remove_dir(&self.dir);
    }
}
