//! A block device cairn is to erase: it is the device itself (never a
//! symlink to one), and nothing uses it — checked from the kernel's own
//! tables, and an unreadable table is a refusal, never "not in use".

use fs_err as fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cmd::Cmd;

/// Whether `p` is a block device: the path itself, never through a symlink
/// (a link somebody placed in a shared directory must not turn a disk file
/// into a device to erase).
pub fn is_block_device(p: &Path) -> Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symlink: name the disk file or the device itself",
            p.display()
        ),
        Ok(m) => Ok(m.file_type().is_block_device()),
        Err(_) => Ok(false),
    }
}

/// How `dev` (a block device) is in use, if it is: it or one of its
/// partitions mounted (by device number, whatever name it was mounted by),
/// used as swap, held by device-mapper or RAID, or the backing file of a
/// loop device. Tables that cannot be read are errors, never "unused".
pub(super) fn device_in_use(
    dev: &Path,
    mountinfo: &Path,
    swaps: &Path,
    sys: &Path,
) -> Result<Option<String>> {
    let canon = fs::canonicalize(dev).with_context(|| format!("resolving {}", dev.display()))?;
    let name = canon
        .file_name()
        .context("a device without a name")?
        .to_string_lossy()
        .into_owned();
    let node = sys.join("class/block").join(&name);
    let read = |p: &Path| {
        fs::read_to_string(p).with_context(|| {
            format!(
                "reading {}: cannot tell whether {} is in use",
                p.display(),
                dev.display()
            )
        })
    };
    // The device and its partitions: (name, major:minor).
    let mut parts = vec![(name.clone(), read(&node.join("dev"))?.trim().to_string())];
    for e in fs::read_dir(&node)
        .with_context(|| format!("reading {}", node.display()))?
        .flatten()
    {
        if e.path().join("partition").exists() {
            parts.push((
                e.file_name().to_string_lossy().into_owned(),
                read(&e.path().join("dev"))?.trim().to_string(),
            ));
        }
    }
    for line in read(mountinfo)?.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if let (Some(mm), Some(at)) = (f.get(2), f.get(4))
            && let Some((p, _)) = parts.iter().find(|(_, d)| d == mm)
        {
            return Ok(Some(format!("/dev/{p} is mounted on {at}")));
        }
    }
    for line in read(swaps)?.lines().skip(1) {
        if let Some(s) = line.split_whitespace().next()
            && let Ok(c) = fs::canonicalize(s)
            && let Some(n) = c.file_name()
            && parts.iter().any(|(p, _)| n == p.as_str())
        {
            return Ok(Some(format!("{s} is used as swap")));
        }
    }
    for (p, _) in &parts {
        let holders = sys.join("class/block").join(p).join("holders");
        if let Some(h) = fs::read_dir(&holders)
            .into_iter()
            .flatten()
            .flatten()
            .next()
        {
            return Ok(Some(format!(
                "/dev/{p} is held by {} (device-mapper, RAID or LVM)",
                h.file_name().to_string_lossy()
            )));
        }
    }
    for e in fs::read_dir(sys.join("block"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let backing = e.path().join("loop/backing_file");
        if let Ok(b) = fs::read_to_string(&backing) {
            let b = b.trim();
            if parts.iter().any(|(p, _)| b == format!("/dev/{p}")) {
                return Ok(Some(format!(
                    "loop device /dev/{} reads from {b}",
                    e.file_name().to_string_lossy()
                )));
            }
        }
    }
    Ok(None)
}

/// Refuses a device that is in use (`device_in_use`), and one not confirmed
/// (`yes`); returns its size in bytes.
pub(super) fn confirm_device(dev: &Path, yes: bool) -> Result<u64> {
    let name = dev.display().to_string();
    if let Some(why) = device_in_use(
        dev,
        Path::new("/proc/self/mountinfo"),
        Path::new("/proc/swaps"),
        Path::new("/sys"),
    )? {
        bail!("{name} is in use: {why}; nothing was written");
    }
    let out = Cmd::new("blockdev").arg("--getsize64").arg(dev).run()?;
    let size: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the size of {name}"))?;
    // The question on a terminal is the command line's (`cairn disk
    // create` asks, then passes yes).
    if !yes {
        bail!("{name} would be erased: confirm with --yes");
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a device is in use is never guessed: unreadable tables are
    /// errors; a partition mounted, swap, a holder, a loop device on it are
    /// each found (a fake /sys and tables, the same code).
    #[test]
    fn device_use_is_found_and_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let dev = p.join("sdz");
        fs::write(&dev, "").unwrap();
        let sys = p.join("sys");
        let node = sys.join("class/block/sdz");
        fs::create_dir_all(node.join("sdz1")).unwrap();
        fs::create_dir_all(sys.join("class/block/sdz1/holders")).unwrap();
        fs::create_dir_all(sys.join("block")).unwrap();
        fs::write(node.join("dev"), "8:0\n").unwrap();
        fs::write(node.join("sdz1/partition"), "1\n").unwrap();
        fs::write(node.join("sdz1/dev"), "8:1\n").unwrap();
        let (mi, sw) = (p.join("mountinfo"), p.join("swaps"));
        let check = || device_in_use(&dev, &mi, &sw, &sys);
        let err = check().unwrap_err();
        assert!(
            format!("{err:#}").contains("mountinfo: cannot tell whether"),
            "{err:#}"
        );
        fs::write(&mi, "22 1 0:5 / /proc rw - proc proc rw\n").unwrap();
        assert!(format!("{:#}", check().unwrap_err()).contains("swaps"));
        fs::write(&sw, "Filename Type Size Used Priority\n").unwrap();
        assert_eq!(check().unwrap(), None);
        fs::write(
            &mi,
            "36 35 8:1 / /srv/x rw - ext4 /dev/disk/by-label/x rw\n",
        )
        .unwrap();
        assert_eq!(check().unwrap().unwrap(), "/dev/sdz1 is mounted on /srv/x");
        fs::write(&mi, "").unwrap();
        fs::create_dir_all(sys.join("class/block/sdz1/holders/dm-0")).unwrap();
        assert!(check().unwrap().unwrap().contains("held by dm-0"));
        fs::remove_dir(sys.join("class/block/sdz1/holders/dm-0")).unwrap();
        fs::create_dir_all(sys.join("block/loop3/loop")).unwrap();
        fs::write(sys.join("block/loop3/loop/backing_file"), "/dev/sdz\n").unwrap();
        assert_eq!(
            check().unwrap().unwrap(),
            "loop device /dev/loop3 reads from /dev/sdz"
        );
    }

    /// A disk target that is a symlink (one a local user placed in /var/tmp,
    /// say, pointing at a device) is refused, not followed.
    #[test]
    fn a_symlinked_target_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("web.img");
        std::os::unix::fs::symlink("/dev/null", &l).unwrap();
        assert!(
            is_block_device(&l)
                .unwrap_err()
                .to_string()
                .contains("is a symlink")
        );
        assert!(!is_block_device(&d.path().join("new.img")).unwrap());
    }
}
