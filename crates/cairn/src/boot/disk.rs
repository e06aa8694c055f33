//! Boot disks. GPT: a BIOS boot partition (GRUB's core.img), an EFI system
//! partition (GRUB for UEFI), the boot partition (ext4 labelled
//! `cairn-boot`: grub.cfg, the environment block, `images/<profile>/<version>/`,
//! `isos/`) and a data partition (ext4, label `data` by default) for the
//! profiles' data paths. A disk file is made without loop devices or mounts
//! (mkfs and mtools write at partition offsets), appears under its name only
//! when complete, and can go to a USB stick with `dd`; a block device works
//! the same, after a confirmation. Changing a disk later (images added, menu
//! written again) mounts its boot partition.

use std::fs;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::env;
use super::grub;
use super::menu::{self, LeftOut, MenuImage, MenuIso, MenuOptions};
use crate::cmd::{Cmd, Tool, require};
use crate::image;
use crate::trust::keys::{self, SigningKey, sign_file};

pub const BOOT_LABEL: &str = "cairn-boot";
const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const ESP_MIB: u64 = 64;

pub const SFDISK: Tool = Tool {
    program: "sfdisk",
    package: "fdisk",
};
pub const MKFS_EXT4: Tool = Tool {
    program: "mkfs.ext4",
    package: "e2fsprogs",
};
pub const MKFS_FAT: Tool = Tool {
    program: "mkfs.fat",
    package: "dosfstools",
};
pub const MCOPY: Tool = Tool {
    program: "mcopy",
    package: "mtools",
};

const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// A partition in 512-byte sectors.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Part {
    pub start: u64,
    pub sectors: u64,
}

impl Part {
    pub fn offset(&self) -> u64 {
        self.start * SECTOR
    }
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub bytes: u64,
    pub bios: Part,
    pub esp: Part,
    pub boot: Part,
    pub data: Option<Part>,
}

/// BIOS boot at 1 MiB (1 MiB), ESP (64 MiB), boot partition, data partition
/// at the end (`data` bytes, none if 0); MiB-aligned, room for the backup GPT.
pub fn plan(bytes: u64, data: u64) -> Result<Layout> {
    let mib = |m: u64| m * MIB / SECTOR;
    let usable_end = (bytes.saturating_sub(34 * SECTOR)) / MIB;
    let data_mib = data.div_ceil(MIB);
    let boot_start = 2 + ESP_MIB;
    let boot_end = usable_end.saturating_sub(data_mib);
    if boot_end < boot_start + 32 {
        bail!(
            "{} MiB is too small: the boot partition needs 32 MiB at least after {} MiB of BIOS boot and EFI partitions{}",
            bytes / MIB,
            boot_start,
            if data_mib > 0 {
                format!(" and {data_mib} MiB of data")
            } else {
                String::new()
            }
        );
    }
    Ok(Layout {
        bytes,
        bios: Part {
            start: mib(1),
            sectors: mib(1),
        },
        esp: Part {
            start: mib(2),
            sectors: mib(ESP_MIB),
        },
        boot: Part {
            start: mib(boot_start),
            sectors: mib(boot_end - boot_start),
        },
        data: (data_mib > 0).then(|| Part {
            start: mib(boot_end),
            sectors: mib(data_mib),
        }),
    })
}

fn sfdisk_script(l: &Layout, data_label: &str) -> String {
    let mut s = String::from("label: gpt\nunit: sectors\n");
    let mut part = |p: &Part, ty: &str, name: &str| {
        s.push_str(&format!(
            "start={}, size={}, type={ty}, name=\"{name}\"\n",
            p.start, p.sectors
        ))
    };
    part(&l.bios, BIOS_BOOT_TYPE, "BIOS boot");
    part(&l.esp, ESP_TYPE, "EFI system");
    part(&l.boot, LINUX_TYPE, BOOT_LABEL);
    if let Some(d) = &l.data {
        part(d, LINUX_TYPE, data_label);
    }
    s
}

/// What a disk's boot partition records about it (`boot/cairn.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskConfig {
    pub menu: MenuOptions,
    pub data_label: Option<String>,
    /// The entry the menu boots by default, as last written.
    pub default_entry: String,
    pub signed_by: String,
    pub boot_uuid: String,
}

impl DiskConfig {
    /// `boot/cairn.json` of a mounted boot partition. Whoever can write the
    /// partition wrote this file: every value is checked before cairn signs
    /// a menu with it, and the partition's UUID is never taken from it (see
    /// `fs_uuid`).
    fn read(root: &Path) -> Result<DiskConfig> {
        let p = root.join("boot/cairn.json");
        let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let c: DiskConfig =
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))?;
        c.check()
            .with_context(|| format!("{} (on the disk, unsigned)", p.display()))?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        let m = &self.menu;
        if !(1..=MAX_TRIES).contains(&m.tries) {
            bail!("tries {}: 1 to {MAX_TRIES}", m.tries);
        }
        if m.timeout > MAX_TIMEOUT {
            bail!("timeout {}: at most {MAX_TIMEOUT} seconds", m.timeout);
        }
        if let Some(p) = &m.default_profile {
            crate::names::check("default profile", p)?;
        }
        if let Some(l) = &self.data_label {
            crate::names::check("data label", l)?;
        }
        Ok(())
    }
}

/// Bounds of the menu options a disk records (GRUB unrolls the tries).
pub const MAX_TRIES: u32 = 20;
pub const MAX_TIMEOUT: u32 = 3600;

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
}

#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub path: PathBuf,
    pub layout: Layout,
    pub images: Vec<String>,
    pub isos: Vec<String>,
    pub menu: menu::Menu,
    pub secure_boot: bool,
    pub seconds: f64,
}

pub fn require_tools() -> Result<()> {
    require(&[&SFDISK, &MKFS_EXT4, &MKFS_FAT, &MCOPY])?;
    grub::require_tools()
}

/// Whether `p` is a block device: the path itself, never through a symlink
/// (a link somebody placed in a shared directory must not turn a disk file
/// into a device to erase).
fn is_block_device(p: &Path) -> Result<bool> {
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
fn device_in_use(dev: &Path, mountinfo: &Path, swaps: &Path, sys: &Path) -> Result<Option<String>> {
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

/// Refuses a device that is in use (`device_in_use`) and, unless `yes`,
/// asks for its name to be typed.
fn confirm_device(dev: &Path, yes: bool) -> Result<u64> {
    let name = dev.display().to_string();
    if let Some(why) = device_in_use(
        dev,
        Path::new("/proc/self/mountinfo"),
        Path::new("/proc/swaps"),
        Path::new("/sys"),
    )? {
        bail!("{name} is in use: {why}; nothing was written");
    }
    let size = Cmd::new("blockdev")
        .arg("--getsize64")
        .arg(dev)
        .run()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("{name} would be erased: confirm with --yes (no terminal to ask on)");
        }
        eprint!(
            "This erases everything on {name} ({} MiB). Type {name} to go on: ",
            size / MIB
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != name {
            bail!("not confirmed; {name} is untouched");
        }
    }
    Ok(size)
}

fn new_uuid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_string())
}

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

/// Checks an image (or an ISO beside its image) against the signing key
/// before it goes on a disk.
fn check_image(dir: &Path, key: &SigningKey) -> Result<()> {
    let p = image_problems(dir, key, false);
    if !p.is_empty() {
        bail!(
            "{} does not verify, it would not boot:\n  {}",
            dir.display(),
            p.join("\n  ")
        );
    }
    Ok(())
}

/// Why an image directory would not boot with this key (its signatures and
/// every hash; `iso_optional`: as on a disk, without its ISO); empty if it would.
fn image_problems(dir: &Path, key: &SigningKey, iso_optional: bool) -> Vec<String> {
    match image::verify_with(dir, &key.public_key, iso_optional) {
        Ok(r) if r.ok => Vec::new(),
        Ok(r) => r.problems,
        Err(e) => vec![format!("{e:#}")],
    }
}

/// Why an ISO file's signature does not verify with this key, if it does not.
fn iso_problem(iso: &Path, key: &SigningKey) -> Option<String> {
    let work = match tempfile::Builder::new().prefix("cairn-iso-").tempdir() {
        Ok(w) => w,
        Err(e) => return Some(format!("a private temporary directory: {e}")),
    };
    keys::verify_file(&key.public_key, iso, work.path())
        .err()
        .map(|e| format!("{e:#}"))
}

/// What a boot partition holds, checked against the signing key: images
/// (`images/P/V` with a boot.cfg) and ISOs (`isos/*.iso`) that pass go into
/// the menu; the rest are left out, with why (copied by hand, damaged, or
/// signed by another key: GRUB would refuse them anyway).
struct Scanned {
    images: Vec<MenuImage>,
    isos: Vec<MenuIso>,
    left_out: Vec<LeftOut>,
}

fn scan(root: &Path, key: &SigningKey) -> Result<Scanned> {
    let mut s = Scanned {
        images: Vec::new(),
        isos: Vec::new(),
        left_out: Vec::new(),
    };
    if let Ok(rd) = fs::read_dir(root.join("images")) {
        for p in rd.flatten() {
            for v in fs::read_dir(p.path())?.flatten() {
                let (pn, vn) = (
                    p.file_name().to_string_lossy().into_owned(),
                    v.file_name().to_string_lossy().into_owned(),
                );
                if vn.starts_with('.') || !v.path().join(image::BOOT_CFG).exists() {
                    continue;
                }
                let dir = format!("/images/{pn}/{vn}");
                if !crate::names::is_safe(&pn) || !crate::names::is_safe(&vn) {
                    s.left_out.push(LeftOut {
                        path: dir,
                        problem: "its name has characters a kernel command line cannot carry"
                            .into(),
                    });
                    continue;
                }
                let problems = image_problems(&v.path(), key, true);
                if problems.is_empty() {
                    s.images.push(MenuImage {
                        dir,
                        profile: pn,
                        version: vn,
                    });
                } else {
                    s.left_out.push(LeftOut {
                        path: dir,
                        problem: problems.join("; "),
                    });
                }
            }
        }
    }
    if let Ok(rd) = fs::read_dir(root.join("isos")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.ends_with(".iso") {
                continue;
            }
            let path = format!("/isos/{n}");
            if !crate::names::is_safe(n.trim_end_matches(".iso")) {
                s.left_out.push(LeftOut {
                    path,
                    problem: "its name has characters a menu entry cannot carry".into(),
                });
                continue;
            }
            match iso_problem(&e.path(), key) {
                None => s.isos.push(MenuIso { path }),
                Some(p) => s.left_out.push(LeftOut {
                    path,
                    problem: format!("signature: {p}"),
                }),
            }
        }
    }
    s.isos.sort_by(|a, b| a.path.cmp(&b.path));
    s.left_out.sort_by(|a, b| a.path.cmp(&b.path));
    for l in &s.left_out {
        tracing::warn!("left out of the menu: {}: {}", l.path, l.problem);
    }
    Ok(s)
}

/// Writes grub.cfg (+ .sig) and guard.sig for the boot tree at `root`, and
/// updates the environment block: a new default entry starts a trial.
fn write_menu(
    root: &Path,
    key: &SigningKey,
    opts: &MenuOptions,
    previous_default: Option<&str>,
    scanned: Scanned,
) -> Result<menu::Menu> {
    let mut m = menu::render(&scanned.images, &scanned.isos, opts)?;
    m.left_out = scanned.left_out;
    let gdir = root.join("boot/grub");
    fs::create_dir_all(&gdir)?;
    // Signed in a private directory, from the bytes cairn wrote — never
    // from bytes read back from the partition (a device may answer other
    // bytes than it was given) — then copied on.
    let private = tempfile::Builder::new()
        .prefix("cairn-menu-")
        .tempdir()
        .context("a private temporary directory")?;
    // A signature that must not verify grub.cfg (the menu checks this).
    let guard = private.path().join("guard");
    fs::write(&guard, "cairn: this signature is for no other file\n")?;
    let guard_sig = sign_file(key, &guard)?;
    let cfg = private.path().join("grub.cfg");
    fs::write(&cfg, &m.cfg)?;
    let cfg_sig = sign_file(key, &cfg)?;
    for (from, name) in [
        (&guard_sig, "guard.sig"),
        (&cfg_sig, "grub.cfg.sig"),
        (&cfg, "grub.cfg"),
    ] {
        let tmp = gdir.join(format!(".{name}.new"));
        let _ = fs::remove_file(&tmp);
        fs::copy(from, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, gdir.join(name))?;
    }
    // The environment block, rewritten in place when it exists.
    let envp = gdir.join("grubenv");
    let mut vars = match fs::read(&envp) {
        Ok(d) => env::parse(&d).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    // The menu was written from what verifies now: an earlier refusal by
    // the initramfs no longer holds.
    env::update(&mut vars, &[("cairn_bad", "")]);
    if previous_default != Some(m.default.as_str()) {
        let left = opts.tries.max(1).to_string();
        env::update(
            &mut vars,
            &[("cairn_trial", m.default.as_str()), ("cairn_left", &left)],
        );
    }
    env::save(&envp, &vars)?;
    Ok(m)
}

fn human(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

/// Makes a boot disk at `target` (a file, created or replaced; or a block
/// device) holding `opts.images`.
pub fn create(
    store: &Path,
    target: &Path,
    size: Option<u64>,
    opts: &DiskOptions,
) -> Result<DiskReport> {
    let t0 = std::time::Instant::now();
    let say = |m: &str| {
        if !opts.quiet {
            eprintln!("[{:>6.1}s] {m}", t0.elapsed().as_secs_f64())
        }
    };
    require_tools()?;
    let key = keys::load(store)?;
    if opts.images.is_empty() {
        bail!("no images for the disk: name at least one (`cairn image list`)");
    }
    for i in &opts.images {
        check_image(i, &key)?;
    }
    for iso in &opts.isos {
        if let Some(p) = iso_problem(iso, &key) {
            bail!(
                "{}: only ISOs signed with key {} can go on this disk (its signature {}: {p})",
                iso.display(),
                key.fingerprint,
                iso.with_extension("iso.sig").display()
            );
        }
    }
    let device = is_block_device(target)?;

    // The boot partition's tree, staged next to the images (hard links).
    let staging = store.join(format!(".disk-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(staging.clone());
    let _ = fs::remove_dir_all(&staging);
    let mut content = 0u64;
    let mut names = Vec::new();
    for i in &opts.images {
        let m = image::read_manifest(i)?;
        content += stage_image(i, &staging.join("images").join(&m.profile).join(&m.version))?;
        names.push(format!("{}/{}", m.profile, m.version));
    }
    let mut iso_names = Vec::new();
    for iso in &opts.isos {
        let n = iso.file_name().context("ISO without a file name")?;
        fs::create_dir_all(staging.join("isos"))?;
        for (src, dst) in [
            (iso.to_path_buf(), staging.join("isos").join(n)),
            (
                iso.with_extension("iso.sig"),
                staging.join("isos").join(n).with_extension("iso.sig"),
            ),
        ] {
            content += fs::metadata(&src)?.len();
            fs::hard_link(&src, &dst)
                .or_else(|_| fs::copy(&src, &dst).map(|_| ()))
                .with_context(|| format!("copying {}", src.display()))?;
        }
        iso_names.push(n.to_string_lossy().into_owned());
    }
    // ext4 overhead, GRUB's files, room for one more image of this size.
    let boot_needed = content + content / 8 + 48 * MIB;
    let fixed = (2 + ESP_MIB) * MIB + opts.data_size + 2 * MIB;
    let bytes = if device {
        let dev_size = confirm_device(target, opts.yes)?;
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

    let boot_uuid = new_uuid()?;
    let menu_opts = opts.menu.clone();
    let scanned = scan(&staging, &key)?;
    let m = write_menu(&staging, &key, &menu_opts, None, scanned)?;
    let cfg = DiskConfig {
        menu: menu_opts,
        data_label: (opts.data_size > 0).then(|| opts.data_label.clone()),
        default_entry: m.default.clone(),
        signed_by: key.fingerprint.clone(),
        boot_uuid: boot_uuid.clone(),
    };
    fs::write(
        staging.join("boot/cairn.json"),
        serde_json::to_vec_pretty(&cfg)?,
    )?;
    say(&format!(
        "GRUB for BIOS and UEFI with key {} built in",
        key.fingerprint
    ));
    // Beside the staging tree, not in it (it becomes the partition).
    let gwork = staging.with_extension("grub");
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
    let _c4 = (!device).then(|| RemoveOnDrop(out.clone()));
    say(&format!("GPT on {} ({})", target.display(), human(bytes)));
    let mut sf = Cmd::new(SFDISK.program).arg("--quiet").arg("--wipe=always");
    if !device {
        sf = sf.arg("--no-reread").arg("--no-tell-kernel");
    }
    sf.arg(&out)
        .stdin_bytes(sfdisk_script(&layout, &opts.data_label).into_bytes())
        .run()
        .context("writing the partition table")?;

    say(&format!(
        "boot partition: ext4 {BOOT_LABEL}, {} of {} images{}",
        human(content),
        names.len(),
        if iso_names.is_empty() {
            String::new()
        } else {
            format!(" and {} ISO(s)", iso_names.len())
        }
    ));
    Cmd::new(MKFS_EXT4.program)
        .args(["-q", "-F", "-L", BOOT_LABEL, "-U", &boot_uuid, "-d"])
        .arg(&staging)
        .arg("-E")
        .arg(format!("offset={}", layout.boot.offset()))
        .arg(&out)
        .arg(format!("{}k", layout.boot.bytes() / 1024))
        .run()
        .context("making the boot partition")?;

    say("EFI system partition");
    Cmd::new(MKFS_FAT.program)
        .args(["-F", "16", "-n", "CAIRN-ESP", "--offset"])
        .arg(layout.esp.start.to_string())
        .arg(&out)
        .arg((layout.esp.bytes() / 1024).to_string())
        .run()
        .context("making the EFI system partition")?;
    say("GRUB onto the EFI system partition, BIOS boot code");
    install_loaders(&out, &layout.bios, &layout.esp, &g)?;
    if let Some(d) = &layout.data {
        say(&format!(
            "data partition: ext4 {}, {}",
            opts.data_label,
            human(d.bytes())
        ));
        Cmd::new(MKFS_EXT4.program)
            .args(["-q", "-F", "-L", &opts.data_label, "-E"])
            .arg(format!("offset={}", d.offset()))
            .arg(&out)
            .arg(format!("{}k", d.bytes() / 1024))
            .run()
            .context("making the data partition")?;
    }
    fs::File::open(&out)?.sync_all()?;
    if !device {
        fs::rename(&out, target)
            .with_context(|| format!("moving the disk to {}", target.display()))?;
        std::mem::forget(_c4);
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
        m.entries.len(),
        m.default
    ));
    Ok(DiskReport {
        path: target.to_path_buf(),
        layout,
        images: names,
        isos: iso_names,
        menu: m,
        secure_boot: opts.secure_boot.is_some(),
        seconds: t0.elapsed().as_secs_f64(),
    })
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
) -> Result<menu::Menu> {
    require_tools()?;
    let key = keys::load(store)?;
    let bios = find_partition(disk, "BIOS boot")?;
    let esp = find_partition(disk, "EFI system")?;
    let boot = find_boot_partition(disk)?;
    // Built into GRUB: read from the file system itself, never from a file
    // on the partition (anyone who can write it could put GRUB commands in).
    let boot_uuid = fs_uuid(disk, &boot)?;
    let mnt = MountedBoot::mount(disk, store)?;
    let cfgp = mnt.dir.join("boot/cairn.json");
    let mut cfg = DiskConfig::read(&mnt.dir)?;
    if cfg.boot_uuid != boot_uuid {
        tracing::warn!(
            "boot/cairn.json says the boot partition is {}, its file system says {boot_uuid}: using the file system's",
            cfg.boot_uuid
        );
        cfg.boot_uuid = boot_uuid.clone();
    }
    // GRUB gets the key: everything on the disk must verify with it first.
    let scanned = scan(&mnt.dir, &key)?;
    if !scanned.left_out.is_empty() {
        bail!(
            "these do not verify with key {} (remove them, or re-seal the store's copy with `cairn image sign` and `cairn disk add` it again):\n  {}",
            key.fingerprint,
            scanned
                .left_out
                .iter()
                .map(|l| format!("{}: {}", l.path, l.problem))
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    let work = store.join(format!(".grub-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    let g = grub::build_images(&work, &key.public_key, &boot_uuid, secure_boot)?;
    let m = write_menu(&mnt.dir, &key, &cfg.menu, Some(&cfg.default_entry), scanned)?;
    cfg.default_entry = m.default.clone();
    cfg.signed_by = key.fingerprint.clone();
    crate::fsutil::write_atomic(&cfgp, &serde_json::to_vec_pretty(&cfg)?)?;
    drop(mnt);
    install_loaders(disk, &bios, &esp, &g)?;
    Ok(m)
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

/// A disk's partitions as sfdisk reads them.
#[derive(Debug, Deserialize)]
struct SfdiskJson {
    partitiontable: SfTable,
}
#[derive(Debug, Deserialize)]
struct SfTable {
    partitions: Vec<SfPart>,
}
#[derive(Debug, Deserialize)]
struct SfPart {
    start: u64,
    size: u64,
    #[serde(default)]
    name: Option<String>,
}

/// The UUID of the ext4 file system in partition `p` of `disk`, read from
/// its superblock (offset 1024; magic 0xEF53 at 0x38, UUID at 0x68).
pub fn fs_uuid(disk: &Path, p: &Part) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let mut sb = [0u8; 0x78];
    f.seek(SeekFrom::Start(p.offset() + 1024))?;
    f.read_exact(&mut sb).with_context(|| {
        format!(
            "reading the boot partition's superblock on {}",
            disk.display()
        )
    })?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        bail!(
            "{}: the boot partition holds no ext4 file system",
            disk.display()
        );
    }
    let u = crate::trust::hash::hex(&sb[0x68..0x78]);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &u[0..8],
        &u[8..12],
        &u[12..16],
        &u[16..20],
        &u[20..32]
    ))
}

/// The boot partition of a cairn disk.
pub fn find_boot_partition(disk: &Path) -> Result<Part> {
    find_partition(disk, BOOT_LABEL)
}

/// A partition of a cairn disk by its GPT name.
fn find_partition(disk: &Path, name: &str) -> Result<Part> {
    require(&[&SFDISK])?;
    let out = Cmd::new(SFDISK.program).arg("--json").arg(disk).run()?;
    let t: SfdiskJson = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    t.partitiontable
        .partitions
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| Part {
            start: p.start,
            sectors: p.size,
        })
        .with_context(|| {
            format!(
                "{} has no partition named {name:?}: not a cairn disk",
                disk.display()
            )
        })
}

/// The boot partition mounted read-write for the life of the value.
pub struct MountedBoot {
    pub dir: PathBuf,
}

impl MountedBoot {
    pub fn mount(disk: &Path, store: &Path) -> Result<MountedBoot> {
        let p = find_boot_partition(disk)?;
        let dir = store.join(format!(".mnt-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Cmd::new("mount")
            .arg("-o")
            // What is on the partition is not trusted: no symlink on it is
            // followed (a link to the build host's /etc would be written
            // through), no device node or setuid file is honoured.
            .arg(format!(
                "loop,offset={},sizelimit={},nosymfollow,nodev,nosuid,noexec",
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

/// Copies images onto an existing disk (verified first) and writes its menu
/// again. Returns the new menu.
pub fn add_images(
    store: &Path,
    disk: &Path,
    images: &[PathBuf],
    quiet: bool,
) -> Result<menu::Menu> {
    let key = keys::load(store)?;
    for i in images {
        check_image(i, &key)?;
    }
    let mnt = MountedBoot::mount(disk, store)?;
    for i in images {
        let m = image::read_manifest(i)?;
        let dest = mnt.dir.join("images").join(&m.profile).join(&m.version);
        if dest.exists() {
            bail!("{}/{} is on the disk already", m.profile, m.version);
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
            .map(|p| mnt.dir.join("images").join(p))
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
            eprintln!("added {}/{}", m.profile, m.version);
        }
    }
    refresh(&key, &mnt.dir)
}

/// File name → SHA-256 from an image's SHA256SUMS (empty if unreadable).
fn signed_sums(dir: &Path) -> std::collections::BTreeMap<String, String> {
    fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, n)| (n.to_string(), h.to_string()))
        .collect()
}

/// Writes the menu of a mounted boot partition again from what is on it.
fn refresh(key: &SigningKey, root: &Path) -> Result<menu::Menu> {
    let cfgp = root.join("boot/cairn.json");
    let mut cfg = DiskConfig::read(root)?;
    let scanned = scan(root, key)?;
    let m = write_menu(root, key, &cfg.menu, Some(&cfg.default_entry), scanned)?;
    cfg.default_entry = m.default.clone();
    cfg.signed_by = key.fingerprint.clone();
    crate::fsutil::write_atomic(&cfgp, &serde_json::to_vec_pretty(&cfg)?)?;
    Ok(m)
}

/// `cairn boot menu --disk`: the menu written again (after images were copied
/// by hand, removed, or the options changed).
pub fn menu_on_disk(
    store: &Path,
    disk: &Path,
    default_profile: Option<String>,
    tries: Option<u32>,
    timeout: Option<u32>,
) -> Result<menu::Menu> {
    let key = keys::load(store)?;
    let mnt = MountedBoot::mount(disk, store)?;
    let cfgp = mnt.dir.join("boot/cairn.json");
    if default_profile.is_some() || tries.is_some() || timeout.is_some() {
        let mut cfg = DiskConfig::read(&mnt.dir)?;
        if default_profile.is_some() {
            cfg.menu.default_profile = default_profile;
        }
        if let Some(t) = tries {
            cfg.menu.tries = t;
        }
        if let Some(t) = timeout {
            cfg.menu.timeout = t;
        }
        cfg.check()?;
        crate::fsutil::write_atomic(&cfgp, &serde_json::to_vec_pretty(&cfg)?)?;
    }
    refresh(&key, &mnt.dir)
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

    /// The UUID GRUB gets is the file system's own, read from its
    /// superblock at the partition's offset.
    #[test]
    fn the_boot_uuid_comes_from_the_file_system() {
        if crate::cmd::which("mkfs.ext4").is_none() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk");
        fs::File::create(&img).unwrap().set_len(16 * MIB).unwrap();
        let uuid = "c83e030b-d47e-482d-89cb-dbfb68698c10";
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-U", uuid, "-E", "offset=1048576"])
            .arg(&img)
            .arg("8M")
            .status()
            .unwrap();
        assert!(st.success());
        let p = Part {
            start: 2048,
            sectors: 8 * 2048,
        };
        assert_eq!(fs_uuid(&img, &p).unwrap(), uuid);
        let q = Part {
            start: 0,
            sectors: 2048,
        };
        assert!(
            fs_uuid(&img, &q)
                .unwrap_err()
                .to_string()
                .contains("no ext4")
        );
    }

    /// What the partition's cairn.json says is checked before it is signed
    /// into a menu.
    #[test]
    fn disk_config_values_are_bounded() {
        let c = |tries: u32, timeout: u32, p: Option<&str>| DiskConfig {
            menu: MenuOptions {
                timeout,
                tries,
                default_profile: p.map(String::from),
            },
            data_label: Some("data".into()),
            default_entry: "web-1".into(),
            signed_by: "F".into(),
            boot_uuid: "x".into(),
        };
        assert!(c(3, 5, Some("web")).check().is_ok());
        assert!(c(4_294_967_295, 5, None).check().is_err());
        assert!(c(0, 5, None).check().is_err());
        assert!(c(3, 99_999, None).check().is_err());
        assert!(c(3, 5, Some("a\nb")).check().is_err());
    }

    #[test]
    fn layout_is_aligned_and_leaves_room_for_the_backup_gpt() {
        let l = plan(1 << 30, 256 * MIB).unwrap();
        assert_eq!(l.bios.start, 2048);
        assert_eq!(l.esp.start, 4096);
        assert_eq!(l.boot.start, 66 * 2048);
        let d = l.data.unwrap();
        assert_eq!(d.sectors, 256 * 2048);
        assert_eq!(l.boot.start + l.boot.sectors, d.start);
        assert!((d.start + d.sectors) * SECTOR <= (1 << 30) - 34 * SECTOR);
        assert!(plan(90 * MIB, 0).is_err());
        assert!(plan(200 * MIB, 0).unwrap().data.is_none());
        let s = sfdisk_script(&l, "data");
        assert!(s.contains("type=21686148-6449-6E6F-744E-656564454649, name=\"BIOS boot\""));
        assert!(s.contains("name=\"cairn-boot\""));
        assert!(s.ends_with("name=\"data\"\n"));
    }
}
