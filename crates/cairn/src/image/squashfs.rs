//! Packing a tree into squashfs with mksquashfs (xattrs kept, every core).

use std::path::Path;

use anyhow::{Result, bail};

use crate::cmd::tool::{MKSQUASHFS, UNSQUASHFS};
use crate::cmd::{Cmd, require};
use crate::profile::Compression;

/// mksquashfs arguments for a compressor and optional level.
pub fn compressor_args(c: Compression, level: Option<u32>) -> Vec<String> {
    let mut v = vec!["-comp".to_string(), c.name().to_string()];
    match (c, level) {
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
    v
}

/// Packs `tree` into `out` (replaced). `SOURCE_DATE_EPOCH`, when set, pins
/// every timestamp (mksquashfs reads it).
pub fn pack(
    tree: &Path,
    out: &Path,
    c: Compression,
    level: Option<u32>,
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
        .args(compressor_args(c, level));
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
