//! dm-verity hash trees of an image's layers: `<layer>.verity` beside each
//! squashfs, made by `veritysetup format`. The root hash of each goes on the
//! signed kernel command line (`cairn.verity=`); the initramfs mounts a
//! layer only through dm-verity with that root hash, so every block is
//! checked as it is read and nothing is read twice. The hash files need no
//! signature: a changed tree no longer leads to the signed root hash.
//!
//! Reproducible: the salt is the layer's SHA-256 and the superblock's UUID is
//! made from it, so the same layer always gets the same tree and root hash.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::tool::VERITYSETUP;
use crate::cmd::{Cmd, require};

/// dm-verity's data and hash block size, and squashfs's padding.
pub const BLOCK: u64 = 4096;

/// The hash tree file of `layer`.
pub fn tree_of(layer: &Path) -> PathBuf {
    let mut n = layer.as_os_str().to_owned();
    n.push(".verity");
    PathBuf::from(n)
}

/// Writes `<layer>.verity` and returns the layer's root hash (hex).
pub fn format(layer: &Path) -> Result<String> {
    require(&[&VERITYSETUP])?;
    let size = fs::metadata(layer)
        .with_context(|| format!("reading {}", layer.display()))?
        .len();
    if size == 0 || size % BLOCK != 0 {
        bail!(
            "{}: {size} bytes is not a whole number of {BLOCK}-byte blocks (mksquashfs pads to 4 KiB unless -nopad): dm-verity would leave the tail unchecked",
            layer.display()
        );
    }
    let (_, salt) = crate::trust::hash::sha256_file(layer)?;
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &salt[0..8],
        &salt[8..12],
        &salt[12..16],
        &salt[16..20],
        &salt[20..32]
    );
    let tree = tree_of(layer);
    let (_, tmp) = crate::fsutil::new_sibling(&tree)?;
    let out = Cmd::new(VERITYSETUP.program)
        .args([
            "format",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(format!("--salt={salt}"))
        .arg(format!("--uuid={uuid}"))
        .arg(layer)
        .arg(&tmp)
        .run()
        .with_context(|| format!("making the dm-verity hash tree of {}", layer.display()));
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let root = root_hash(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("veritysetup format {}: no root hash", layer.display()))?;
    // Machines fetch it from the store's web server (a worker that is not
    // root): as readable as the layer it checks.
    crate::fsutil::set_mode(&tmp, crate::fsutil::PUBLIC_FILE)?;
    fs::rename(&tmp, &tree).with_context(|| format!("writing {}", tree.display()))?;
    Ok(root)
}

/// The `Root hash:` line of veritysetup's report.
fn root_hash(report: &str) -> Option<String> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_hash_is_read_from_the_report() {
        let r = "VERITY header information for x\nUUID:            \tab\nSalt:            \t00\nRoot hash:      \t0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
        assert_eq!(
            root_hash(r).as_deref(),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(root_hash("Root hash: xyz\n"), None);
    }

    /// The same layer, the same tree; a changed block, another root hash; a
    /// size that is not whole blocks is refused; `veritysetup verify`
    /// accepts the tree with the root hash given.
    #[test]
    fn trees_are_reproducible_and_checkable() {
        if crate::cmd::which("veritysetup").is_none() {
            eprintln!("SKIPPED: veritysetup not installed (apt-get install cryptsetup-bin)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("a.squashfs");
        let data: Vec<u8> = (0..8 * BLOCK as usize).map(|i| (i % 251) as u8).collect();
        fs::write(&l, &data).unwrap();
        let h1 = format(&l).unwrap();
        let t1 = fs::read(tree_of(&l)).unwrap();
        let h2 = format(&l).unwrap();
        assert_eq!(h1, h2);
        assert_eq!(t1, fs::read(tree_of(&l)).unwrap());
        // Served to machines by a web server's unprivileged workers.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(tree_of(&l)).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o644, "{mode:o}");
        let st = std::process::Command::new("veritysetup")
            .arg("verify")
            .arg(&l)
            .arg(tree_of(&l))
            .arg(&h1)
            .status()
            .unwrap();
        assert!(st.success());
        let mut changed = data.clone();
        changed[5 * BLOCK as usize + 7] ^= 1;
        fs::write(&l, &changed).unwrap();
        assert_ne!(format(&l).unwrap(), h1);
        fs::write(&l, &data[..1000]).unwrap();
        assert!(format(&l).unwrap_err().to_string().contains("whole number"));
    }
}
