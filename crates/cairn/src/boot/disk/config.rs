//! `boot/cairn.json`: what a disk records about itself (menu options, data
//! label, default entry, key). Written by cairn, but on a partition others
//! may write: read back, every value is bounded before it is used.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::boot::menu::MenuOptions;

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

/// Where the record is on a boot partition.
pub const PATH: &str = "boot/cairn.json";

impl DiskConfig {
    /// `boot/cairn.json` of a mounted boot partition. Whoever can write the
    /// partition wrote this file: every value is checked before cairn signs
    /// a menu with it, and the partition's UUID is never taken from it (see
    /// `fs_uuid`).
    pub fn read(root: &Path) -> Result<DiskConfig> {
        let p = root.join(PATH);
        // Not a link, a FIFO or a device; small.
        let data = crate::fsutil::small_file(&p, 1 << 16)?;
        let c: DiskConfig =
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))?;
        c.check()
            .with_context(|| format!("{} (on the disk, unsigned)", p.display()))?;
        Ok(c)
    }

    /// Reads the file of a mounted boot partition, lets `change` change it
    /// (nothing is written when it fails), checks and writes it back
    /// atomically: the one read-modify-write of a disk's record.
    pub(super) fn update<T>(
        root: &Path,
        change: impl FnOnce(&mut DiskConfig) -> Result<T>,
    ) -> Result<T> {
        let mut c = DiskConfig::read(root)?;
        let r = change(&mut c)?;
        c.check()?;
        crate::fsutil::write_atomic(&root.join(PATH), &serde_json::to_vec_pretty(&c)?)?;
        Ok(r)
    }

    pub(super) fn check(&self) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
