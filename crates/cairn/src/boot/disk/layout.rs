//! A cairn disk's layout: the GPT cairn writes (BIOS boot, EFI system, the
//! boot partition, a data partition), reading it back, and the boot
//! partition's file system UUID from its own superblock.

use fs_err as fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::BOOT_LABEL;
use crate::cmd::tool::SFDISK;
use crate::cmd::{Cmd, require};

pub(super) const MIB: u64 = 1 << 20;

pub(super) const SECTOR: u64 = 512;

pub(super) const ESP_MIB: u64 = 64;

pub(super) const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

pub(super) const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

pub(super) const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

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

pub(super) fn sfdisk_script(l: &Layout, data_label: &str) -> String {
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

/// A disk's partitions as sfdisk reads them.
#[derive(Debug, Deserialize)]
pub(super) struct SfdiskJson {
    partitiontable: SfTable,
}

#[derive(Debug, Deserialize)]
pub(super) struct SfTable {
    partitions: Vec<SfPart>,
}

#[derive(Debug, Deserialize)]
pub(super) struct SfPart {
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
pub(super) fn find_partition(disk: &Path, name: &str) -> Result<Part> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
