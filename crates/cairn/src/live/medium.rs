//! The boot partition on a running cairn system: live-boot's medium, or
//! after an in-RAM boot the one partition with the UUID GRUB booted from.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{LIVE_MEDIUM, MEDIUM_OPTS, RUN_DIR};
use crate::cmd::Cmd;

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
            // A device that never answers (a failing stick) is not waited
            // for forever.
            .timeout(std::time::Duration::from_secs(120))
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
    pub fn writable<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
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
    let cmdline = crate::image::boot_cmdline()?;
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
