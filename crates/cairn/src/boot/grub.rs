//! cairn's GRUB: built with grub-mkimage for BIOS (i386-pc) and UEFI
//! (x86_64-efi) with the signing key embedded — which turns
//! `check_signatures=enforce` on: every file GRUB opens (grub.cfg, kernel,
//! initrd, sums, boot.cfg) needs a valid detached signature — and every
//! module it needs built in (under enforce a module file would need one too).
//! The BIOS boot code is written by cairn itself: grub-bios-setup insists on
//! guessing a root device from its own directory, which fails on disk images
//! (measured: BOOT-FACTS.md).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::{Cmd, Tool, require};

pub const GRUB_MKIMAGE: Tool = Tool {
    program: "grub-mkimage",
    package: "grub-common",
};
pub const SBSIGN: Tool = Tool {
    program: "sbsign",
    package: "sbsigntool",
};
pub const BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
pub const EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// Built into both images. `pgp`, `gcry_rsa`, `gcry_sha*`: signature checks;
/// `hashsum`: the kernel/initrd hashes; `loadenv`: boot counting; `smbios` +
/// `regexp`: entry choice from a VM's SMBIOS serial; `loopback` + `iso9660`:
/// ISO entries.
const MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "iso9660",
    "search",
    "search_fs_uuid",
    "search_label",
    "normal",
    "configfile",
    "echo",
    "test",
    "true",
    "sleep",
    "halt",
    "reboot",
    "pgp",
    "gcry_rsa",
    "gcry_sha256",
    "gcry_sha512",
    "hashsum",
    "loadenv",
    "linux",
    "serial",
    "terminal",
    "regexp",
    "smbios",
    "loopback",
    "minicmd",
    "password_pbkdf2",
    "gzio",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Bios,
    Efi,
}

impl Platform {
    fn format(self) -> &'static str {
        match self {
            Platform::Bios => "i386-pc",
            Platform::Efi => "x86_64-efi",
        }
    }
    fn dir(self) -> &'static str {
        match self {
            Platform::Bios => BIOS_DIR,
            Platform::Efi => EFI_DIR,
        }
    }
    fn package(self) -> &'static str {
        match self {
            Platform::Bios => "grub-pc-bin",
            Platform::Efi => "grub-efi-amd64-bin",
        }
    }
}

pub fn require_tools() -> Result<()> {
    require(&[&GRUB_MKIMAGE])?;
    for p in [Platform::Bios, Platform::Efi] {
        if !Path::new(p.dir()).is_dir() {
            bail!("{} not found: apt-get install {}", p.dir(), p.package());
        }
    }
    Ok(())
}

/// The configuration built into the image: console on screen and first
/// serial port (so a refused grub.cfg is seen), lock the console (superusers
/// without a password: nobody can edit an entry or reach a prompt where
/// `set check_signatures=no` would work — also when grub.cfg fails its
/// check), find the boot partition by its UUID, and hand over to the
/// signed grub.cfg — checked here first, so that a refused one is named on
/// the console (this file runs in GRUB's rescue parser: no `if`).
pub fn early_cfg(boot_uuid: &str) -> String {
    format!(
        "serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n\
         set superusers=cairn\nexport superusers\n\
         search --no-floppy --fs-uuid --set=root {boot_uuid}\n\
         set prefix=($root)/boot/grub\n\
         echo \"cairn: checking the signature of $prefix/grub.cfg\"\n\
         verify_detached $prefix/grub.cfg $prefix/grub.cfg.sig\n"
    )
}

/// Runs grub-mkimage for `platform` into `out`.
pub fn mkimage(platform: Platform, out: &Path, public_key: &Path, boot_uuid: &str) -> Result<()> {
    require_tools()?;
    let cfg = out.with_extension("early.cfg");
    fs::write(&cfg, early_cfg(boot_uuid))?;
    let mut cmd = Cmd::new(GRUB_MKIMAGE.program)
        .arg("-O")
        .arg(platform.format())
        .arg("-d")
        .arg(platform.dir())
        .arg("-o")
        .arg(out)
        .args(["-p", "/boot/grub", "-c"])
        .arg(&cfg)
        .arg("--pubkey")
        .arg(public_key);
    match platform {
        // Without shim: our own signature checks, not shim's verifier.
        Platform::Efi => cmd = cmd.arg("--disable-shim-lock").arg("efi_gop"),
        Platform::Bios => cmd = cmd.arg("biosdisk"),
    }
    let r = cmd.args(MODULES).run();
    let _ = fs::remove_file(&cfg);
    r.with_context(|| format!("grub-mkimage for {}", platform.format()))?;
    Ok(())
}

/// Signs the EFI binary for Secure Boot with the user's db or MOK key.
pub fn sbsign(efi: &Path, key: &Path, cert: &Path) -> Result<()> {
    require(&[&SBSIGN])?;
    let signed = efi.with_extension("signed");
    Cmd::new(SBSIGN.program)
        .arg("--key")
        .arg(key)
        .arg("--cert")
        .arg(cert)
        .arg("--output")
        .arg(&signed)
        .arg(efi)
        .run()
        .context("signing GRUB for Secure Boot")?;
    fs::rename(&signed, efi)?;
    Ok(())
}

/// Offsets in boot.img and core.img (GRUB 2, i386-pc): where boot.img finds
/// core.img, the BIOS drive check, the protective MBR's partition area; and
/// diskboot's block list (start LBA, sector count) at the end of core.img's
/// first sector.
const KERNEL_SECTOR: usize = 0x5c;
const DRIVE_CHECK: usize = 0x66;
const MBR_TABLE: std::ops::Range<usize> = 0x1b8..0x1fe;
const BLOCKLIST_START: usize = 0x1f4;
const BLOCKLIST_LEN: usize = 0x1fc;

/// Writes the BIOS boot code: core.img into the BIOS boot partition
/// (`start`, `sectors` in 512-byte sectors) and boot.img into the MBR,
/// keeping the protective MBR's partition entries.
pub fn bios_install(disk: &mut fs::File, start: u64, sectors: u64, core: &Path) -> Result<()> {
    let mut boot = fs::read(Path::new(BIOS_DIR).join("boot.img"))
        .with_context(|| format!("reading {BIOS_DIR}/boot.img (apt-get install grub-pc-bin)"))?;
    if boot.len() != 512 {
        bail!("{BIOS_DIR}/boot.img is not 512 bytes");
    }
    let mut core = fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let nsec = core.len().div_ceil(512);
    core.resize(nsec * 512, 0);
    if nsec as u64 > sectors {
        bail!("core.img needs {nsec} sectors, the BIOS boot partition has {sectors}");
    }
    let len = u16::from_le_bytes([core[BLOCKLIST_LEN], core[BLOCKLIST_LEN + 1]]) as usize;
    if len != nsec - 1 {
        bail!("unexpected core.img layout (block list length {len}, image {nsec} sectors)");
    }
    core[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(start + 1).to_le_bytes());
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    boot[MBR_TABLE].copy_from_slice(&mbr[MBR_TABLE]);
    boot[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&start.to_le_bytes());
    // A hard disk: skip boot.img's check of the drive number some BIOSes get wrong.
    boot[DRIVE_CHECK] = 0x90;
    boot[DRIVE_CHECK + 1] = 0x90;
    disk.seek(SeekFrom::Start(start * 512))?;
    disk.write_all(&core)?;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&boot)?;
    disk.sync_all()?;
    Ok(())
}

/// Both GRUB images for a boot partition, made in `work`.
pub struct GrubImages {
    pub bios_core: PathBuf,
    pub efi: PathBuf,
}

pub fn build_images(
    work: &Path,
    public_key: &Path,
    boot_uuid: &str,
    secure_boot: Option<(&Path, &Path)>,
) -> Result<GrubImages> {
    fs::create_dir_all(work)?;
    let bios_core = work.join("core.img");
    let efi = work.join("grubx64.efi");
    mkimage(Platform::Bios, &bios_core, public_key, boot_uuid)?;
    mkimage(Platform::Efi, &efi, public_key, boot_uuid)?;
    if let Some((key, cert)) = secure_boot {
        sbsign(&efi, key, cert)?;
    }
    Ok(GrubImages { bios_core, efi })
}
