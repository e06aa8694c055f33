//! cairn's GRUB: built with grub-mkimage for BIOS (i386-pc) and UEFI
//! (x86_64-efi) with the signing key embedded — which turns
//! `check_signatures=enforce` on: every file GRUB opens (grub.cfg, kernel,
//! initrd, sums, boot.cfg) needs a valid detached signature — and every
//! module it needs built in (under enforce a module file would need one too).
//! The BIOS boot code is written by cairn itself: grub-bios-setup insists on
//! guessing a root device from its own directory, which fails on disk images
//! (measured: BOOT-FACTS.md).

use fs_err as fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::tool::{GRUB_MKIMAGE, SBSIGN};
use crate::cmd::{Cmd, require};

pub const BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
pub const EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// Built into both images. `pgp`, `gcry_rsa`, `gcry_sha*`: signature checks;
/// `hashsum`: the kernel/initrd hashes; `loadenv`: boot counting; `smbios` +
/// `regexp`: entry choice from a VM's SMBIOS serial (`regexp` also holds
/// image names to the name rule); `probe`: the boot partition's UUID for the
/// initramfs; `loopback` + `iso9660`: ISO entries. A test holds every
/// command cairn's GRUB scripts use to this list (an unknown command in an
/// `if` would be *true* in GRUB 2.06).
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
    "probe",
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
pub fn early_cfg(boot_uuid: &str) -> Result<String> {
    // Built into GRUB, run line by line: a UUID and nothing else.
    let parts: Vec<&str> = boot_uuid.split('-').collect();
    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    if lens != [8, 4, 4, 4, 12]
        || !parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("{boot_uuid:?} is not a file system UUID");
    }
    Ok(format!(
        "serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n\
         set superusers=cairn\nexport superusers\n\
         search --no-floppy --fs-uuid --set=root {boot_uuid}\n\
         set prefix=($root)/boot/grub\n\
         echo \"cairn: checking the signature of $prefix/grub.cfg\"\n\
         verify_detached $prefix/grub.cfg $prefix/grub.cfg.sig\n"
    ))
}

/// Where a network-booted GRUB finds everything: the web server
/// (`HOST[:PORT]`, a host name or IPv4 address), from which `/netboot/`
/// holds the signed menu and `/images/` the images.
pub fn check_server(host_port: &str) -> Result<()> {
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host_port, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-']);
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        bail!("{host_port:?}: a web server is HOST or HOST:PORT (a name or an IPv4 address)");
    }
    Ok(())
}

/// The configuration built into a network-booted GRUB: as a disk's, but
/// the root is the web server (`(http,HOST:PORT)`) and the signed menu is
/// its `/netboot/grub.cfg`. GRUB's network is configured from the answer
/// the firmware's PXE got.
pub fn early_cfg_net(host_port: &str, generation: u64) -> Result<String> {
    check_server(host_port)?;
    Ok(format!(
        "serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n\
         set superusers=cairn\nexport superusers\n\
         set cairn_min_generation={generation}\nexport cairn_min_generation\n\
         set root=(http,{host_port})\n\
         set prefix=($root)/netboot\n\
         echo \"cairn: checking the signature of $prefix/grub.cfg\"\n\
         verify_detached $prefix/grub.cfg $prefix/grub.cfg.sig\n"
    ))
}

/// Network modules, besides `MODULES` (the PXE or EFI network driver is
/// the platform's).
const NET_MODULES: &[&str] = &["net", "http", "tftp"];

/// A GRUB that boots from the network: BIOS PXE (`i386-pc-pxe`, served as
/// `core.0`) or UEFI (`x86_64-efi` with the EFI network driver), the key
/// built in, the early configuration pointing at `host_port`.
pub fn mkimage_net(
    platform: Platform,
    out: &Path,
    public_key: &Path,
    host_port: &str,
    generation: u64,
    sbat: Option<&Path>,
) -> Result<()> {
    require_tools()?;
    let cfg = out.with_extension("early.cfg");
    fs::write(&cfg, early_cfg_net(host_port, generation)?)?;
    let (format, driver) = match platform {
        Platform::Bios => ("i386-pc-pxe", "pxe"),
        Platform::Efi => ("x86_64-efi", "efinet"),
    };
    let mut cmd = Cmd::new(GRUB_MKIMAGE.program)
        .arg("-O")
        .arg(format)
        .arg("-d")
        .arg(platform.dir())
        .arg("-o")
        .arg(out)
        .args(["-p", "/netboot", "-c"])
        .arg(&cfg)
        .arg("--pubkey")
        .arg(public_key)
        .arg(driver);
    if platform == Platform::Efi {
        cmd = cmd.arg("--disable-shim-lock").arg("efi_gop");
    }
    if let Some(f) = sbat {
        cmd = cmd.arg("--sbat").arg(f);
    }
    let r = cmd.args(MODULES).args(NET_MODULES).run();
    let _ = fs::remove_file(&cfg);
    r.with_context(|| format!("grub-mkimage for {format}"))?;
    Ok(())
}

/// Debian's shim (signed by Microsoft's UEFI CA: most machines boot it) and
/// its MOK manager (`mokutil --import` is confirmed there).
pub const SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
pub const MOK_MANAGER: &str = "/usr/lib/shim/mmx64.efi.signed";
/// Debian's signed GRUB, built from the same GRUB source as the modules
/// cairn's GRUB is made of: its SBAT metadata (the security generations shim
/// checks) applies to cairn's GRUB too.
pub const DEBIAN_SIGNED_GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";

/// Secure Boot signing of GRUB's EFI binary.
#[derive(Debug, Clone)]
pub struct SecureBoot {
    /// The user's db or MOK key and certificate.
    pub key: PathBuf,
    pub cert: PathBuf,
    /// Boot through Debian's shim, trusting the certificate through shim's
    /// MOK list: GRUB gets SBAT metadata, shim becomes BOOTX64.EFI.
    pub shim: bool,
}

/// The contents of section `name` of a PE file (trailing NULs removed).
pub fn pe_section(pe: &[u8], name: &str) -> Result<Vec<u8>> {
    let u16_at = |o: usize| pe.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        pe.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let bad = || anyhow::anyhow!("not a PE file");
    let pe_at = u32_at(0x3c).ok_or_else(bad)? as usize;
    if pe.get(pe_at..pe_at + 4) != Some(b"PE\0\0") {
        return Err(bad());
    }
    let sections = u16_at(pe_at + 6).ok_or_else(bad)? as usize;
    let optional = u16_at(pe_at + 20).ok_or_else(bad)? as usize;
    let table = pe_at + 24 + optional;
    for i in 0..sections {
        let h = table + 40 * i;
        let n = pe.get(h..h + 8).ok_or_else(bad)?;
        if n.split(|b| *b == 0).next() != Some(name.as_bytes()) {
            continue;
        }
        let size = u32_at(h + 8)
            .ok_or_else(bad)?
            .min(u32_at(h + 16).ok_or_else(bad)?) as usize;
        let at = u32_at(h + 20).ok_or_else(bad)? as usize;
        let mut data = pe.get(at..at + size).ok_or_else(bad)?.to_vec();
        while data.last() == Some(&0) {
            data.pop();
        }
        return Ok(data);
    }
    bail!("no {name} section")
}

/// Debian's GRUB SBAT lines (see DEBIAN_SIGNED_GRUB).
pub(crate) fn sbat_csv() -> Result<Vec<u8>> {
    let pe = fs::read(DEBIAN_SIGNED_GRUB).with_context(|| {
        format!("reading {DEBIAN_SIGNED_GRUB} for GRUB's SBAT metadata (apt-get install grub-efi-amd64-signed)")
    })?;
    let csv = pe_section(&pe, ".sbat")
        .with_context(|| format!("SBAT metadata of {DEBIAN_SIGNED_GRUB}"))?;
    if !csv.starts_with(b"sbat,1,") {
        bail!("{DEBIAN_SIGNED_GRUB}: unexpected SBAT metadata");
    }
    Ok(csv)
}

/// Runs grub-mkimage for `platform` into `out` (with `sbat`: that SBAT CSV
/// built in, for shim).
pub fn mkimage(
    platform: Platform,
    out: &Path,
    public_key: &Path,
    boot_uuid: &str,
    sbat: Option<&Path>,
) -> Result<()> {
    require_tools()?;
    let cfg = out.with_extension("early.cfg");
    fs::write(&cfg, early_cfg(boot_uuid)?)?;
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
    if let Some(f) = sbat {
        cmd = cmd.arg("--sbat").arg(f);
    }
    match platform {
        // Our own signature checks, not shim's verifier (also under shim:
        // shim vouches for GRUB, GRUB checks everything with the OpenPGP key).
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
    /// What goes into the ESP's `/EFI/BOOT/`: (file, name there). GRUB as
    /// BOOTX64.EFI; with shim: shim as BOOTX64.EFI, GRUB as grubx64.efi (shim
    /// loads it from its own directory), MokManager, and the certificate
    /// (`cairn-mok.cer`, DER) to enrol from MokManager's "Enroll key from disk".
    pub efi_files: Vec<(PathBuf, &'static str)>,
}

pub fn build_images(
    work: &Path,
    public_key: &Path,
    boot_uuid: &str,
    secure_boot: Option<&SecureBoot>,
) -> Result<GrubImages> {
    fs::create_dir_all(work)?;
    let bios_core = work.join("core.img");
    let efi = work.join("grubx64.efi");
    mkimage(Platform::Bios, &bios_core, public_key, boot_uuid, None)?;
    let shim = secure_boot.filter(|sb| sb.shim);
    let sbat = work.join("sbat.csv");
    if shim.is_some() {
        for f in [SHIM, MOK_MANAGER] {
            if !Path::new(f).is_file() {
                bail!("{f} not found: apt-get install shim-signed");
            }
        }
        fs::write(&sbat, sbat_csv()?)?;
    }
    mkimage(
        Platform::Efi,
        &efi,
        public_key,
        boot_uuid,
        shim.map(|_| sbat.as_path()),
    )?;
    let mut efi_files = Vec::new();
    if let Some(sb) = secure_boot {
        sbsign(&efi, &sb.key, &sb.cert)?;
    }
    if let Some(sb) = shim {
        let cer = work.join("cairn-mok.cer");
        fs::write(&cer, crate::trust::cert::der(&sb.cert)?)?;
        efi_files.push((PathBuf::from(SHIM), "BOOTX64.EFI"));
        efi_files.push((efi, "grubx64.efi"));
        efi_files.push((PathBuf::from(MOK_MANAGER), "mmx64.efi"));
        efi_files.push((cer, "cairn-mok.cer"));
    } else {
        efi_files.push((efi, "BOOTX64.EFI"));
    }
    Ok(GrubImages {
        bios_core,
        efi_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PE file with sections `.text` and `.sbat` (headers only, as far as
    /// pe_section reads them).
    fn pe(sbat: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        f[0x86..0x88].copy_from_slice(&2u16.to_le_bytes()); // sections
        f[0x94..0x96].copy_from_slice(&0x10u16.to_le_bytes()); // optional header
        let table = 0x80 + 24 + 0x10;
        for (i, (name, at, size)) in [(".text", 0x180u32, 8u32), (".sbat", 0x1a0, 0x40)]
            .into_iter()
            .enumerate()
        {
            let h = table + 40 * i;
            f[h..h + name.len()].copy_from_slice(name.as_bytes());
            f[h + 8..h + 12].copy_from_slice(&(sbat.len() as u32).to_le_bytes());
            f[h + 16..h + 20].copy_from_slice(&size.to_le_bytes());
            f[h + 20..h + 24].copy_from_slice(&at.to_le_bytes());
        }
        f[0x1a0..0x1a0 + sbat.len()].copy_from_slice(sbat);
        f
    }

    /// Every command the early configuration and the menu run is built into
    /// cairn's GRUB (with the modules' own dependencies), per GRUB's own
    /// command and module lists: a missing one would fail at boot, and in an
    /// `if`, GRUB 2.06 would take it as true.
    #[test]
    fn every_command_the_scripts_use_is_built_in() {
        use crate::boot::menu::{MenuImage, MenuIso, MenuOptions, render};
        let m = render(
            &[
                MenuImage {
                    profile: "a".into(),
                    version: "2".into(),
                    dir: "/images/a/2".into(),
                },
                MenuImage {
                    profile: "a".into(),
                    version: "1".into(),
                    dir: "/images/a/1".into(),
                },
            ],
            &[MenuIso {
                path: "/isos/a.iso".into(),
            }],
            &MenuOptions::default(),
        )
        .unwrap();
        let net = crate::boot::menu::render_net(
            &[MenuImage {
                profile: "a".into(),
                version: "2".into(),
                dir: "/images/a/2".into(),
            }],
            &crate::boot::menu::NetMenuOptions {
                timeout: 5,
                default_profile: None,
                server: "http://10.0.2.2:8080".into(),
                machines: vec![("52:54:00:12:34:56".into(), "a".into())],
                generation: 1,
            },
        )
        .unwrap();
        let script = format!(
            "{}\n{}\n{}\n{}",
            early_cfg("c83e030b-d47e-482d-89cb-dbfb68698c10").unwrap(),
            m.cfg,
            early_cfg_net("10.0.2.2:8080", 1).unwrap(),
            net.cfg
        );
        let mut used = std::collections::BTreeSet::new();
        for line in script.lines() {
            let mut rest = line.trim();
            loop {
                let word = rest.split_whitespace().next().unwrap_or("");
                match word {
                    "if" | "elif" | "while" | "then" | "else" | "do" | "!" => {
                        rest = rest[word.len()..].trim_start();
                    }
                    _ => break,
                }
            }
            let word = rest.split_whitespace().next().unwrap_or("");
            let keyword = [
                "", "fi", "done", "}", "function", "for", "set", "unset", "insmod", "#",
            ];
            if keyword.contains(&word)
                || word.starts_with('#')
                || word.starts_with('$')
                || word.ends_with('=')
            {
                continue;
            }
            // Script functions the menu defines itself.
            if script.contains(&format!("function {word} {{")) {
                continue;
            }
            used.insert(word.trim_end_matches(';').to_string());
        }
        for platform in [Platform::Bios, Platform::Efi] {
            let dir = Path::new(platform.dir());
            let (Ok(cmds), Ok(deps)) = (
                fs::read_to_string(dir.join("command.lst")),
                fs::read_to_string(dir.join("moddep.lst")),
            ) else {
                eprintln!(
                    "SKIPPED for {}: GRUB's lists are not installed",
                    platform.format()
                );
                continue;
            };
            let mut have: std::collections::BTreeSet<String> =
                MODULES.iter().map(|m| m.to_string()).collect();
            have.insert(
                if platform == Platform::Bios {
                    "biosdisk"
                } else {
                    "efi_gop"
                }
                .into(),
            );
            loop {
                let more: Vec<String> = deps
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(m, _)| have.contains(*m))
                    .flat_map(|(_, d)| d.split_whitespace().map(String::from))
                    .filter(|d| !have.contains(d))
                    .collect();
                if more.is_empty() {
                    break;
                }
                have.extend(more);
            }
            for cmd in &used {
                let module = cmds.lines().find_map(|l| {
                    let (c, m) = l.split_once(": ")?;
                    (c.trim_start_matches('*') == cmd).then(|| m.trim().to_string())
                });
                match module {
                    Some(m) => assert!(
                        have.contains(&m),
                        "{}: `{cmd}` needs module {m}, not built in",
                        platform.format()
                    ),
                    None => panic!("{}: `{cmd}` is no GRUB command", platform.format()),
                }
            }
        }
        assert!(
            used.contains("probe") && used.contains("verify_detached"),
            "{used:?}"
        );
    }

    /// What goes into GRUB's built-in configuration is a UUID, never a
    /// line of GRUB script.
    #[test]
    fn early_config_takes_only_a_uuid() {
        let ok = early_cfg("c83e030b-d47e-482d-89cb-dbfb68698c10").unwrap();
        assert!(ok.contains("--set=root c83e030b-d47e-482d-89cb-dbfb68698c10\n"));
        for bad in [
            "c83e030b-d47e-482d-89cb-dbfb68698c10\nset check_signatures=no",
            "c83e030b-d47e-482d-89cb-dbfb68698c1",
            "",
            "x; y",
        ] {
            assert!(early_cfg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sbat_section_is_read_from_a_pe_file() {
        let csv = b"sbat,1,SBAT Version\ngrub,5,x\n";
        assert_eq!(pe_section(&pe(csv), ".sbat").unwrap(), csv);
        assert!(pe_section(&pe(csv), ".sig").is_err());
        assert!(pe_section(b"MZ not a PE", ".sbat").is_err());
        // The real one, when Debian's signed GRUB is installed here.
        if let Ok(f) = fs::read(DEBIAN_SIGNED_GRUB) {
            let s = pe_section(&f, ".sbat").unwrap();
            assert!(s.starts_with(b"sbat,1,"), "{}", String::from_utf8_lossy(&s));
            assert!(s.windows(6).any(|w| w == b"\ngrub,"));
        }
    }
}
