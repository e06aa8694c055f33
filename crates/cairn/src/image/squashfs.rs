//! Packing a tree into squashfs with mksquashfs (xattrs kept, every core).

use std::path::Path;

use anyhow::{Result, bail};

use crate::cmd::tool::{MKSQUASHFS, UNSQUASHFS};
use crate::cmd::{Cmd, require};
use crate::profile::Compression;

/// The block size cairn packs with: 1 MiB, mksquashfs's largest. Larger
/// blocks give the compressor more to work with, so a lower level makes
/// an image as small (zstd: level 9 at 1 MiB is smaller than level 15 at
/// 128 KiB, in a sixth of the time: docs/bench/build.txt).
pub const BLOCK_SIZE: u32 = 1 << 20;

/// zstd's level when a profile names none (mksquashfs's own is 15).
pub const ZSTD_LEVEL: u32 = 9;

/// How a layer is packed: the compressor, its level and the block size.
/// `None` is mksquashfs's own default, as older images were packed (their
/// manifests name no block size): a rebuild packs as the image records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    pub compression: Compression,
    pub level: Option<u32>,
    pub block: Option<u32>,
}

impl Packing {
    /// What cairn packs with when it chooses: the level asked for, else
    /// its own for zstd ([`ZSTD_LEVEL`]), in [`BLOCK_SIZE`] blocks.
    pub fn chosen(compression: Compression, level: Option<u32>) -> Packing {
        let default = match compression {
            Compression::Zstd => Some(ZSTD_LEVEL),
            _ => None,
        };
        Packing {
            compression,
            level: level.or(default),
            block: Some(BLOCK_SIZE),
        }
    }

    /// As an image's manifest records it (an older image: mksquashfs's
    /// defaults where it names nothing), refused unless mksquashfs could
    /// pack so: a level the compressor has, a block size that is a power
    /// of two from 4 KiB to 1 MiB. (A rebuild checks an image signed by
    /// whoever `--public-key` names: refused before any work, not after a
    /// bootstrap.)
    pub fn recorded(m: &super::Manifest) -> Result<Packing> {
        let c = m.compression;
        match (m.level, c.levels()) {
            (Some(l), Some(r)) if !r.contains(&l) => {
                bail!(
                    "the manifest's level {l} is out of range for {} ({}..={})",
                    c.name(),
                    r.start(),
                    r.end()
                )
            }
            (Some(l), None) => bail!("the manifest's level {l}: {} has no level", c.name()),
            _ => {}
        }
        if let Some(b) = m.block_size
            && !(b.is_power_of_two() && (4096..=BLOCK_SIZE).contains(&b))
        {
            bail!("the manifest's block size {b} is not a power of two from 4096 to {BLOCK_SIZE}");
        }
        Ok(Packing {
            compression: c,
            level: m.level,
            block: m.block_size,
        })
    }

    /// mksquashfs's arguments for it.
    pub fn args(&self) -> Vec<String> {
        let mut v = vec!["-comp".to_string(), self.compression.name().to_string()];
        match (self.compression, self.level) {
            (Compression::Gzip | Compression::Lzo | Compression::Zstd, Some(l)) => {
                v.push("-Xcompression-level".into());
                v.push(l.to_string());
            }
            // x86 BCJ filter: smaller images of x86 binaries at no cost.
            (Compression::Xz, _) => v.extend(["-Xbcj".to_string(), "x86".to_string()]),
            // lz4's high-compression mode: slower to make, as fast to read.
            (Compression::Lz4, _) => v.push("-Xhc".into()),
            _ => {}
        }
        if let Some(b) = self.block {
            v.extend(["-b".to_string(), b.to_string()]);
        }
        v
    }
}

/// Packs `tree` into `out` (replaced). `SOURCE_DATE_EPOCH`, when set, pins
/// every timestamp (mksquashfs reads it).
pub fn pack(
    tree: &Path,
    out: &Path,
    packing: Packing,
    processors: usize,
    epoch: Option<i64>,
) -> Result<()> {
    require(&[&MKSQUASHFS])?;
    if !tree.is_dir() {
        bail!("{} is not a directory", tree.display());
    }
    // The tree's top is the image's `/` (a delta's, too: the top layer's
    // root is what the machine sees): 0755, whoever made the directory.
    crate::fsutil::set_mode(tree, crate::fsutil::PUBLIC_DIR)?;
    let mut cmd = Cmd::new(MKSQUASHFS.program)
        .arg(tree)
        .arg(out)
        // Its progress bar (to stdout, with -quiet nothing else) is what
        // cairn shows while it packs.
        .args(["-noappend", "-progress", "-quiet", "-xattrs", "-processors"])
        .arg(processors.max(1).to_string())
        .args(packing.args());
    if let Some(e) = epoch {
        cmd = cmd.env("SOURCE_DATE_EPOCH", e.to_string());
    }
    cmd.progress("mksquashfs").run()?;
    Ok(())
}

/// The compressor recorded in a squashfs superblock.
pub fn compressor_of(file: &Path) -> Result<String> {
    require(&[&UNSQUASHFS])?;
    let out = Cmd::new(UNSQUASHFS.program).arg("-s").arg(file).run()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Compression "))
        .map(|s| s.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("unsquashfs -s {}: no compression line", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cairn's choice: zstd at its level in 1 MiB blocks; a level asked
    /// for wins; a compressor without levels gets none.
    #[test]
    fn cairn_chooses_large_blocks_and_zstd_level_9() {
        let z = Packing::chosen(Compression::Zstd, None);
        assert_eq!(
            z.args(),
            ["-comp", "zstd", "-Xcompression-level", "9", "-b", "1048576"]
        );
        assert_eq!(Packing::chosen(Compression::Zstd, Some(19)).level, Some(19));
        assert_eq!(Packing::chosen(Compression::Gzip, None).level, None);
        assert_eq!(
            Packing::chosen(Compression::Xz, None).args(),
            ["-comp", "xz", "-Xbcj", "x86", "-b", "1048576"]
        );
    }

    /// An image of an older cairn names no block size and maybe no level:
    /// a rebuild packs it with mksquashfs's own defaults, as it was packed.
    #[test]
    fn an_older_image_is_repacked_with_mksquashfs_defaults() {
        let m = crate::image::test_manifest("1", &[]);
        assert_eq!((m.level, m.block_size), (None, None));
        assert_eq!(Packing::recorded(&m).unwrap().args(), ["-comp", "zstd"]);
        let mut new = m.clone();
        new.level = Some(9);
        new.block_size = Some(BLOCK_SIZE);
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains(r#""block-size":1048576"#), "{json}");
        let back: crate::image::Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(
            Packing::recorded(&back).unwrap(),
            Packing::chosen(Compression::Zstd, None)
        );
    }

    /// A manifest (signed by whoever a rebuild is told to trust) cannot
    /// hand mksquashfs a block size or level it was never packed with.
    #[test]
    fn a_recorded_packing_mksquashfs_could_not_make_is_refused() {
        let m = crate::image::test_manifest("1", &[]);
        for (level, block) in [
            (Some(23), None),
            (Some(0), None),
            (None, Some(0)),
            (None, Some(3000)),
            (None, Some(2 << 20)),
            (None, Some(u32::MAX)),
        ] {
            let mut bad = m.clone();
            bad.level = level;
            bad.block_size = block;
            assert!(Packing::recorded(&bad).is_err(), "{level:?} {block:?}");
        }
        let mut xz = m.clone();
        xz.compression = Compression::Xz;
        xz.level = Some(3);
        assert!(Packing::recorded(&xz).is_err());
        xz.level = None;
        xz.block_size = Some(1 << 17);
        assert!(Packing::recorded(&xz).is_ok());
    }
}
