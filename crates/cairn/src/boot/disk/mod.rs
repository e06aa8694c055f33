//! Boot disks. GPT: a BIOS boot partition (GRUB's core.img), an EFI system
//! partition (GRUB for UEFI), the boot partition (ext4 labelled
//! `cairn-boot`: grub.cfg, the environment block, `images/<profile>/<version>/`,
//! `isos/`) and a data partition (ext4, label `data` by default) for the
//! profiles' data paths. A disk file is made without loop devices or mounts
//! (mkfs and mtools write at partition offsets), appears under its name only
//! when complete, and can go to a USB stick with `dd`; a block device works
//! the same, after a confirmation. Changing a disk later (images added, menu
//! written again) mounts its boot partition.

pub mod config;
mod create;
mod device;
mod layout;
mod lock;
mod mount;
pub(crate) mod scan;

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::grub;
use super::menu::{self, MenuImage, MenuOptions};
use crate::cmd::tool::{MCOPY, MKFS_EXT4, MKFS_FAT, SFDISK};
use crate::cmd::{Cmd, require};
use crate::image;
use crate::trust::keys;

pub use config::{DiskConfig, MAX_TIMEOUT, MAX_TRIES};
pub use create::{check_disk_file_target, create};
pub use layout::{Layout, Part, find_boot_partition, fs_uuid, plan};
pub use lock::{Access, DiskLock, WAIT as LOCK_WAIT};
pub use mount::MountedBoot;

pub use device::is_block_device;
use layout::find_partition;
use scan::{check_image, refresh, signed_sums};

pub const BOOT_LABEL: &str = "cairn-boot";

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub images: Vec<PathBuf>,
    pub isos: Vec<PathBuf>,
    pub menu: MenuOptions,
    /// Bytes for the data partition (0: none).
    pub data_size: u64,
    pub data_label: String,
    /// Secure Boot: GRUB signed with the user's db or MOK key (and shim).
    pub secure_boot: Option<grub::SecureBoot>,
    /// A block device may be overwritten.
    pub yes: bool,
    pub quiet: bool,
    /// Check everything and say what would be written; write nothing.
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskReport {
    /// Nothing was written (`--dry-run`).
    pub dry_run: bool,
    pub path: PathBuf,
    pub layout: Layout,
    pub images: Vec<String>,
    pub isos: Vec<String>,
    pub menu: menu::Menu,
    pub secure_boot: bool,
    /// The machine the disk makes: its id (the boot partition's UUID) and
    /// public key, enrolled in the store for its reports.
    pub machine: Option<DiskMachine>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskMachine {
    pub id: String,
    pub public_key: String,
    pub profile: Option<String>,
}

pub fn require_tools() -> Result<()> {
    require(&[&SFDISK, &MKFS_EXT4, &MKFS_FAT, &MCOPY])?;
    grub::require_tools()
}

fn new_uuid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_string())
}

/// What `disk add`, `boot install` and `boot menu` would do (`--dry-run`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskPlan {
    pub dry_run: bool,
    pub disk: PathBuf,
    /// Images that would be copied onto the disk.
    pub add: Vec<String>,
    /// The menu as written (or as it would be).
    #[serde(flatten)]
    pub menu: menu::Menu,
}

/// GRUB's EFI binary onto the ESP (mtools, at its offset) and the BIOS boot
/// code into the MBR and the BIOS boot partition.
fn install_loaders(disk: &Path, bios: &Part, esp: &Part, g: &grub::GrubImages) -> Result<()> {
    let img = format!("{}@@{}", disk.display(), esp.offset());
    Cmd::new("mmd")
        .args(["-D", "s", "-i", &img, "::/EFI", "::/EFI/BOOT"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output_any_status()?;
    for (file, name) in &g.efi_files {
        Cmd::new(MCOPY.program)
            .args(["-o", "-i", &img])
            .arg(file)
            .arg(format!("::/EFI/BOOT/{name}"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .run()
            .with_context(|| format!("copying {name} onto the EFI system partition"))?;
    }
    let mut f = fs::OpenOptions::new().read(true).write(true).open(disk)?;
    grub::bios_install(&mut f, bios.start, bios.sectors, &g.bios_core)
}

/// `cairn boot install`: GRUB built again (the store's current key, Secure
/// Boot signing if asked) and written onto an existing cairn disk, its menu
/// signed again. Refused when an image on the disk does not verify with the
/// key: GRUB would never boot it.
pub fn install(
    store: &Path,
    disk: &Path,
    secure_boot: Option<&grub::SecureBoot>,
    dry_run: bool,
) -> Result<menu::Menu> {
    require_tools()?;
    let key = keys::load(store)?;
    // Locked before anything of it is read.
    let access = if dry_run { Access::Read } else { Access::Write };
    let lock = DiskLock::acquire(disk, access, lock::WAIT)?;
    let bios = find_partition(disk, "BIOS boot")?;
    let esp = find_partition(disk, "EFI system")?;
    let boot = find_boot_partition(disk)?;
    if dry_run {
        let mnt = MountedBoot::mount_locked(lock, store)?;
        return scan::preview(&key, &mnt.dir, |_, scanned| refuse_left_out(&key, scanned));
    }
    // Built into GRUB: read from the file system itself, never from a file
    // on the partition (anyone who can write it could put GRUB commands in).
    let boot_uuid = fs_uuid(disk, &boot)?;
    let mnt = MountedBoot::mount_locked(lock, store)?;
    let work = store.join(format!(".grub-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    let mut grub = None;
    let m = refresh(&key, &mnt.dir, |cfg, scanned| {
        if cfg.boot_uuid != boot_uuid {
            tracing::warn!(
                "boot/cairn.json says the boot partition is {}, its file system says {boot_uuid}: using the file system's",
                cfg.boot_uuid
            );
            cfg.boot_uuid = boot_uuid.clone();
        }
        refuse_left_out(&key, scanned)?;
        grub = Some(grub::build_images(
            &work,
            &key.public_key,
            &boot_uuid,
            secure_boot,
        )?);
        Ok(())
    })?;
    let g = grub.context("GRUB was not built")?;
    // GRUB's own partitions are written with the disk still locked.
    let _lock = mnt.unmount();
    install_loaders(disk, &bios, &esp, &g)?;
    Ok(m)
}

/// GRUB gets the key: everything on the disk must verify with it first.
fn refuse_left_out(key: &keys::SigningKey, scanned: &scan::Scanned) -> Result<()> {
    if scanned.left_out.is_empty() {
        return Ok(());
    }
    Err(crate::trust::VerificationFailed::new(format!(
        "these do not verify with key {} (remove them, or re-seal the store's copy with `cairn image sign` and `cairn disk add` it again):\n  {}",
        key.fingerprint,
        scanned
            .left_out
            .iter()
            .map(|l| format!("{}: {}", l.path, l.problem))
            .collect::<Vec<_>>()
            .join("\n  ")
    ))
    .into())
}

/// Removes what a killed cairn left in the store while it made a disk or
/// wrote one (`.disk-PID`, its `.grub`, `.grub-PID`, `.mnt-PID`): the
/// process is gone, its work is not needed. Run by commands that write a
/// disk, never by a dry run. A symlink by such a name is removed, never
/// followed; a mount point is unmounted first and, if it stays mounted (a
/// shell still in it), refused — never emptied; a mount point is only ever
/// removed empty.
pub fn remove_stale_work(store: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(store) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = [".disk-", ".grub-", ".mnt-"].iter().find_map(|p| {
            let rest = name.strip_prefix(p)?;
            rest.strip_suffix(".grub")
                .unwrap_or(rest)
                .parse::<u32>()
                .ok()
        });
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let p = e.path();
        let m = fs::symlink_metadata(&p)?;
        if !m.is_dir() {
            fs::remove_file(&p)
                .with_context(|| format!("removing {}, left by a killed cairn", p.display()))?;
            continue;
        }
        let stale = || format!("{}, left by a killed cairn (pid {pid})", p.display());
        if is_mount_point(&p)? {
            let _ = Cmd::new("umount").arg(&p).output_any_status();
            if is_mount_point(&p)? {
                bail!(
                    "{} is still mounted (in use?): unmount it by hand; nothing was done",
                    stale()
                );
            }
        }
        if name.starts_with(".mnt-") {
            fs::remove_dir(&p).with_context(|| format!("removing {} (not empty)", stale()))?;
        } else {
            crate::fsutil::unmount_below(&p)?;
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", stale()))?;
        }
    }
    Ok(())
}

/// Whether `dir` is a mount point now (the mount table unreadable is an
/// error: nothing is removed then).
fn is_mount_point(dir: &Path) -> Result<bool> {
    let canon = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let info = fs::read_to_string("/proc/self/mountinfo").with_context(|| {
        format!(
            "reading /proc/self/mountinfo: cannot tell whether {} is mounted, so it is left alone",
            dir.display()
        )
    })?;
    Ok(crate::fsutil::mount_points(&info).contains(&canon))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// Copies images onto an existing disk (verified first) and writes its menu
/// again. Returns the new menu.
pub fn add_images(
    store: &Path,
    disk: &Path,
    images: &[PathBuf],
    quiet: bool,
    dry_run: bool,
) -> Result<DiskPlan> {
    let key = keys::load(store)?;
    for i in images {
        check_image(i, &key)?;
    }
    let mnt = if dry_run {
        MountedBoot::mount_ro(disk, store)?
    } else {
        MountedBoot::mount(disk, store)?
    };
    let mut add = Vec::new();
    for i in images {
        let m = image::read_manifest(i)?;
        let dest = mnt.dir.join("images").join(&m.profile).join(&m.version);
        if dest.exists() {
            bail!("{}/{} is on the disk already", m.profile, m.version);
        }
        add.push(format!("{}/{}", m.profile, m.version));
        if dry_run {
            continue;
        }
        let tmp = dest.with_file_name(format!(".{}.new", m.version));
        let _ = fs::remove_dir_all(&tmp);
        // Layers the disk already has (the parent's, same name and signed
        // hash) are hard-linked; the rest is copied.
        fs::create_dir_all(&tmp)?;
        let mine = signed_sums(i);
        let on_disk: Vec<(PathBuf, std::collections::BTreeMap<String, String>)> = m
            .parent
            .iter()
            .map(|p| p.dir_in(&mnt.dir))
            .filter(|d| d.is_dir())
            .map(|d| {
                let s = signed_sums(&d);
                (d, s)
            })
            .collect();
        for e in fs::read_dir(i)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".iso") || n.ends_with(".iso.sig") {
                continue;
            }
            let same = (n.ends_with(".squashfs") || n.ends_with(".squashfs.verity")).then(|| {
                on_disk
                    .iter()
                    .find(|(_, sums)| mine.get(&n).is_some_and(|h| sums.get(&n) == Some(h)))
            });
            if let Some(Some((d, _))) = same
                && fs::hard_link(d.join(&n), tmp.join(&n)).is_ok()
            {
                continue;
            }
            fs::copy(e.path(), tmp.join(&n))
                .with_context(|| format!("copying {} (is the disk full?)", e.path().display()))?;
        }
        fs::rename(&tmp, &dest)?;
        if !quiet {
            crate::progress::note(&format!("added {}/{}", m.profile, m.version));
        }
    }
    let menu = if dry_run {
        scan::preview(&key, &mnt.dir, |_, _| Ok(()))?
    } else {
        refresh(&key, &mnt.dir, |_, _| Ok(()))?
    };
    Ok(DiskPlan {
        dry_run,
        disk: disk.to_path_buf(),
        add,
        menu,
    })
}

/// `cairn boot menu --disk`: the menu written again (after images were copied
/// by hand, removed, or the options changed).
pub fn menu_on_disk(
    store: &Path,
    disk: &Path,
    default_profile: Option<String>,
    tries: Option<u32>,
    timeout: Option<u32>,
    dry_run: bool,
) -> Result<menu::Menu> {
    let key = keys::load(store)?;
    let mnt = if dry_run {
        MountedBoot::mount_ro(disk, store)?
    } else {
        MountedBoot::mount(disk, store)?
    };
    let change = |cfg: &mut config::DiskConfig, _: &scan::Scanned| {
        if default_profile.is_some() {
            cfg.menu.default_profile = default_profile;
        }
        if let Some(t) = tries {
            cfg.menu.tries = t;
        }
        if let Some(t) = timeout {
            cfg.menu.timeout = t;
        }
        // Checked now, before a menu is signed with them.
        cfg.check()
    };
    if dry_run {
        scan::preview(&key, &mnt.dir, change)
    } else {
        refresh(&key, &mnt.dir, change)
    }
}

/// The menu the store's images would get (what `cairn boot menu` prints).
pub fn menu_for_store(store: &Path, opts: &MenuOptions) -> Result<menu::Menu> {
    let images: Vec<MenuImage> = image::list(store)?
        .into_iter()
        .filter(|e| e.path.join(image::BOOT_CFG).exists())
        .map(|e| MenuImage {
            dir: format!("/images/{}/{}", e.profile, e.version),
            profile: e.profile,
            version: e.version,
        })
        .collect();
    menu::render(&images, &[], opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a killed `disk create` or pull left goes; a living cairn's
    /// work, and what is not cairn's, stay.
    #[test]
    fn a_killed_cairns_work_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let dead = 99_999_999u32; // above any pid_max
        let me = std::process::id();
        for n in [
            format!(".disk-{dead}"),
            format!(".disk-{dead}.grub"),
            format!(".grub-{dead}"),
            format!(".disk-{me}"),
            ".disk-notapid".to_string(),
            "images".to_string(),
        ] {
            fs::create_dir_all(d.path().join(&n).join("x")).unwrap();
        }
        remove_stale_work(d.path()).unwrap();
        let mut left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!(".disk-{me}"),
                ".disk-notapid".into(),
                "images".into()
            ]
        );
    }
}
