//! `cairn disk create`: a new boot disk — the images checked and staged,
//! the disk sized, the signed menu, cairn's GRUB, the partitions written —
//! in a file made beside the target and renamed over it when complete, or
//! on a block device that nothing uses.

use fs_err as fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::config::{self, DiskConfig};
use super::device::confirm_device;
use super::layout::{ESP_MIB, MIB, sfdisk_script};
use super::scan::{check_image, iso_problem, scan, write_menu};
use super::{
    Access, BOOT_LABEL, DiskLock, DiskOptions, DiskReport, Layout, RemoveOnDrop, install_loaders,
    is_block_device, lock, new_uuid, plan, remove_stale_work, require_tools,
};
use crate::boot::grub;
use crate::boot::menu;
use crate::boot::model::ImageId;
use crate::cmd::Cmd;
use crate::cmd::tool::{MKFS_EXT4, MKFS_FAT, SFDISK};
use crate::image;
use crate::trust::keys;

/// Copies (hard links when it can) an image directory into `dest`, without
/// its ISO: the disk boots the image itself.
fn stage_image(src: &Path, dest: &Path) -> Result<u64> {
    fs::create_dir_all(dest)?;
    let mut bytes = 0;
    for e in fs::read_dir(src)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".iso") || n.ends_with(".iso.sig") || !e.file_type()?.is_file() {
            continue;
        }
        let to = dest.join(&n);
        bytes += e.metadata()?.len();
        fs::hard_link(e.path(), &to)
            .or_else(|_| fs::copy(e.path(), &to).map(|_| ()))
            .with_context(|| format!("copying {}", e.path().display()))?;
    }
    Ok(bytes)
}

fn human(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

/// What a disk is made of: the boot partition's tree staged beside the
/// images (hard links), its size, and the names of what it holds.
struct Staged {
    dir: PathBuf,
    _cleanup: RemoveOnDrop,
    content: u64,
    names: Vec<String>,
    iso_names: Vec<String>,
}

/// Checks every image and ISO against the store's key, then stages them.
fn stage(store: &Path, key: &keys::SigningKey, opts: &DiskOptions) -> Result<Staged> {
    if opts.images.is_empty() {
        bail!("no images for the disk: name at least one (`cairn image list`)");
    }
    for i in &opts.images {
        check_image(i, key)?;
    }
    for iso in &opts.isos {
        if let Some(p) = iso_problem(iso, key) {
            return Err(crate::trust::VerificationFailed::new(format!(
                "{}: only ISOs signed with key {} can go on this disk (its signature {}: {p})",
                iso.display(),
                key.fingerprint,
                iso.with_extension("iso.sig").display()
            ))
            .into());
        }
    }
    let dir = store.join(format!(".disk-{}", std::process::id()));
    let cleanup = RemoveOnDrop(dir.clone());
    let _ = fs::remove_dir_all(&dir);
    let mut content = 0u64;
    let mut names = Vec::new();
    for i in &opts.images {
        let m = image::read_manifest(i)?;
        let id = ImageId::new(&m.profile, &m.version)?;
        content += stage_image(i, &id.dir_in(&dir))?;
        names.push(id.to_string());
    }
    let mut iso_names = Vec::new();
    for iso in &opts.isos {
        let n = iso.file_name().context("ISO without a file name")?;
        fs::create_dir_all(dir.join("isos"))?;
        for (src, dst) in [
            (iso.to_path_buf(), dir.join("isos").join(n)),
            (
                iso.with_extension("iso.sig"),
                dir.join("isos").join(n).with_extension("iso.sig"),
            ),
        ] {
            content += fs::metadata(&src)?.len();
            fs::hard_link(&src, &dst)
                .or_else(|_| fs::copy(&src, &dst).map(|_| ()))
                .with_context(|| format!("copying {}", src.display()))?;
        }
        iso_names.push(n.to_string_lossy().into_owned());
    }
    Ok(Staged {
        dir,
        _cleanup: cleanup,
        content,
        names,
        iso_names,
    })
}

/// The disk's size and partitions: a device's own size, or a file's
/// (`size`, else room for the images twice); refused when the boot
/// partition would be too small for them.
fn size(
    target: &Path,
    device: bool,
    size: Option<u64>,
    content: u64,
    opts: &DiskOptions,
) -> Result<(u64, Layout)> {
    // ext4 overhead, GRUB's files, room for one more image of this size.
    let boot_needed = content + content / 8 + 48 * MIB;
    let fixed = (2 + ESP_MIB) * MIB + opts.data_size + 2 * MIB;
    let bytes = if device {
        let dev_size = confirm_device(target, opts.yes || opts.dry_run)?;
        if size.is_some() {
            bail!(
                "--size applies to disk files; {} has its own size",
                target.display()
            );
        }
        dev_size
    } else {
        size.unwrap_or_else(|| (fixed + boot_needed + content).div_ceil(64 * MIB) * 64 * MIB)
    };
    let layout = plan(bytes, opts.data_size)?;
    if layout.boot.bytes() < boot_needed {
        bail!(
            "the images need a boot partition of {} at least; with {} of disk it gets {}: use --size {}M or more",
            human(boot_needed),
            human(bytes),
            human(layout.boot.bytes()),
            (fixed + boot_needed).div_ceil(MIB)
        );
    }
    Ok((bytes, layout))
}

/// Writes the disk at `out` (a new file or the device): partition table,
/// the boot partition made from the staged tree, the EFI system partition,
/// GRUB, the data partition.
#[allow(clippy::too_many_arguments)]
fn write_disk(
    out: &Path,
    device: bool,
    layout: &Layout,
    staged: &Staged,
    boot_uuid: &str,
    g: &grub::GrubImages,
    opts: &DiskOptions,
    say: &dyn Fn(&str),
) -> Result<()> {
    let mut sf = Cmd::new(SFDISK.program).arg("--quiet").arg("--wipe=always");
    if !device {
        sf = sf.arg("--no-reread").arg("--no-tell-kernel");
    }
    sf.arg(out)
        .stdin_bytes(sfdisk_script(layout, &opts.data_label).into_bytes())
        .run()
        .context("writing the partition table")?;
    say(&format!(
        "boot partition: ext4 {BOOT_LABEL}, {} of {} images{}",
        human(staged.content),
        staged.names.len(),
        if staged.iso_names.is_empty() {
            String::new()
        } else {
            format!(" and {} ISO(s)", staged.iso_names.len())
        }
    ));
    Cmd::new(MKFS_EXT4.program)
        .args(["-q", "-F", "-L", BOOT_LABEL, "-U", boot_uuid, "-d"])
        .arg(&staged.dir)
        .arg("-E")
        .arg(format!("offset={}", layout.boot.offset()))
        .arg(out)
        .arg(format!("{}k", layout.boot.bytes() / 1024))
        .run()
        .context("making the boot partition")?;
    say("EFI system partition");
    Cmd::new(MKFS_FAT.program)
        .args(["-F", "16", "-n", "CAIRN-ESP", "--offset"])
        .arg(layout.esp.start.to_string())
        .arg(out)
        .arg((layout.esp.bytes() / 1024).to_string())
        .run()
        .context("making the EFI system partition")?;
    say("GRUB onto the EFI system partition, BIOS boot code");
    install_loaders(out, &layout.bios, &layout.esp, g)?;
    if let Some(d) = &layout.data {
        say(&format!(
            "data partition: ext4 {}, {}",
            opts.data_label,
            human(d.bytes())
        ));
        Cmd::new(MKFS_EXT4.program)
            .args(["-q", "-F", "-L", &opts.data_label, "-E"])
            .arg(format!("offset={}", d.offset()))
            .arg(out)
            .arg(format!("{}k", d.bytes() / 1024))
            .run()
            .context("making the data partition")?;
    }
    fs::File::open(out)?.sync_all()?;
    Ok(())
}

/// Makes a boot disk at `target` (a file, created or replaced when
/// complete; or a block device) holding `opts.images`: stage, size, menu
/// (a dry run stops there, signing nothing), GRUB, the disk.
pub fn create(
    store: &Path,
    target: &Path,
    size_given: Option<u64>,
    opts: &DiskOptions,
) -> Result<DiskReport> {
    let steps = crate::progress::Steps::start(opts.quiet);
    let say = |m: &str| steps.say(m);
    let device = is_block_device(target)?;
    if !device {
        check_disk_file_target(target)?;
    }
    require_tools()?;
    let key = keys::load(store)?;
    let staged = stage(store, &key, opts)?;
    let (bytes, layout) = size(target, device, size_given, staged.content, opts)?;
    let boot_uuid = new_uuid()?;
    let scanned = scan(&staged.dir, &key)?;
    let mut report = DiskReport {
        dry_run: opts.dry_run,
        path: target.to_path_buf(),
        layout,
        images: staged.names.clone(),
        isos: staged.iso_names.clone(),
        menu: menu::render(&scanned.images, &scanned.isos, &opts.menu)?,
        secure_boot: opts.secure_boot.is_some(),
        machine: None,
        seconds: 0.0,
    };
    if opts.dry_run {
        // The menu it would get: rendered, never signed (a dry run uses
        // no key and writes nothing).
        report.menu.left_out = scanned.left_out;
        report.seconds = steps.seconds();
        return Ok(report);
    }
    // What is there now is replaced: not while another cairn uses it.
    let _lock = if device || fs::symlink_metadata(target).is_ok() {
        Some(DiskLock::acquire(target, Access::Write, lock::WAIT)?)
    } else {
        None
    };
    remove_stale_work(store)?;
    report.menu = write_menu(&staged.dir, &key, &opts.menu, None, scanned)?;
    let cfg = DiskConfig {
        menu: opts.menu.clone(),
        data_label: (opts.data_size > 0).then(|| opts.data_label.clone()),
        default_entry: report.menu.default.clone(),
        signed_by: key.fingerprint.clone(),
        boot_uuid: boot_uuid.clone(),
    };
    fs::write(
        staged.dir.join(config::PATH),
        serde_json::to_vec_pretty(&cfg)?,
    )?;
    // The machine's own key (its reports' signatures; 0600): the caller
    // enrols its public half once the disk is whole.
    let machine_key = crate::trust::machine::MachineKey::generate()?;
    machine_key.save(&staged.dir)?;
    say(&format!(
        "GRUB for BIOS and UEFI with key {} built in",
        key.fingerprint
    ));
    // Beside the staging tree, not in it (it becomes the partition).
    let gwork = staged.dir.with_extension("grub");
    let _c2 = RemoveOnDrop(gwork.clone());
    let g = grub::build_images(
        &gwork,
        &key.public_key,
        &boot_uuid,
        opts.secure_boot.as_ref(),
    )?;
    // The disk itself: a hidden sibling for files, renamed when complete.
    let out = if device {
        target.to_path_buf()
    } else {
        let (f, tmp) = crate::fsutil::new_sibling(target)?;
        f.set_len(bytes)
            .with_context(|| format!("sizing {}", tmp.display()))?;
        tmp
    };
    let c4 = (!device).then(|| RemoveOnDrop(out.clone()));
    say(&format!("GPT on {} ({})", target.display(), human(bytes)));
    write_disk(
        &out,
        device,
        &report.layout,
        &staged,
        &boot_uuid,
        &g,
        opts,
        &say,
    )?;
    if !device {
        fs::rename(&out, target)
            .with_context(|| format!("moving the disk to {}", target.display()))?;
        std::mem::forget(c4);
        if let Some(d) = target.parent() {
            let _ = crate::fsutil::sync_dir(if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            });
        }
    }
    say(&format!(
        "{}: {} menu entries, default {}",
        target.display(),
        report.menu.entries.len(),
        report.menu.default
    ));
    report.machine = Some(disk_machine(&boot_uuid, &machine_key, &staged.names));
    report.seconds = steps.seconds();
    Ok(report)
}

/// The machine a disk makes: the boot partition's UUID, the public half
/// of its key, the profile of its first image.
fn disk_machine(
    boot_uuid: &str,
    key: &crate::trust::machine::MachineKey,
    names: &[String],
) -> crate::boot::disk::DiskMachine {
    crate::boot::disk::DiskMachine {
        id: boot_uuid.to_ascii_lowercase(),
        public_key: key.public(),
        profile: names
            .first()
            .and_then(|n| n.split('/').next())
            .map(String::from),
    }
}

/// A disk file's place, checked before any work: its directory exists and
/// it is not a directory itself — named as the user wrote it, not as a
/// temporary file minutes later.
pub fn check_disk_file_target(target: &Path) -> Result<()> {
    if target.as_os_str().is_empty() {
        bail!("the disk to write is an empty path: name a file or a block device");
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match fs::metadata(parent) {
        // The disk file is handed by name to sfdisk, mkfs and mcopy for
        // minutes: in a directory others may write (without the sticky
        // bit), it could be swapped for a link to a block device.
        Ok(m) if m.is_dir() && m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 => bail!(
            "{}: writable by group or others without the sticky bit (mode {:o}): the disk file could be swapped while it is written; choose another directory",
            parent.display(),
            m.mode() & 0o7777
        ),
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(
            "{}: not a directory, so the disk file {} cannot be made there",
            parent.display(),
            target.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{}: no such directory (for the disk file {}): create it first, or name another place",
            parent.display(),
            target.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("looking at {}", parent.display())),
    }
    if target.is_dir() {
        bail!(
            "{} is a directory: name the disk file to write (e.g. {}/disk.img)",
            target.display(),
            target.display()
        );
    }
    Ok(())
}
