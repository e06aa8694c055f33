//! SHA-256 (CPU-accelerated by sha2 where the CPU has SHA instructions) and
//! hex helpers.

use fs_err::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The block a file is read in: small enough to stay in the core's cache
/// between the read that fills it and the hash that reads it (a larger
/// one was slower, measured with scripts/bench-verify), large enough that
/// the calls cost nothing.
const BLOCK: usize = 256 << 10;

thread_local! {
    /// Each thread's block, reused from file to file.
    static BLOCKS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Feeds the bytes of the file at `path` to `each`, in large blocks;
/// returns how many there were. The file is read once, front to back
/// (the kernel is told so: it reads ahead further).
pub fn for_each_block(path: &Path, each: impl FnMut(&[u8])) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    blocks_of(&mut f, path, each)
}

fn blocks_of(f: &mut File, path: &Path, mut each: impl FnMut(&[u8])) -> Result<u64> {
    let _ = rustix::fs::fadvise(f.file(), 0, None, rustix::fs::Advice::Sequential);
    BLOCKS.with(|cell| {
        // A block of its own when `each` reads a file too (nested).
        let mut own = Vec::new();
        let mut borrowed = cell.try_borrow_mut();
        let buf = match borrowed.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut own,
        };
        if buf.len() < BLOCK {
            buf.resize(BLOCK, 0);
        }
        let mut n = 0u64;
        loop {
            let r = f
                .read(&mut buf[..BLOCK])
                .with_context(|| format!("reading {}", path.display()))?;
            if r == 0 {
                return Ok(n);
            }
            n += r as u64;
            each(&buf[..r]);
        }
    })
}

/// Size and SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut h = Sha256::new();
    let n = for_each_block(path, |b| h.update(b))?;
    Ok((n, hex(&h.finalize())))
}

/// Size and SHA-256 of a file, and which file it was (device and inode
/// of what was opened and read, whatever its name points at afterwards).
pub fn sha256_file_id(path: &Path) -> Result<(u64, String, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let m = f
        .metadata()
        .with_context(|| format!("looking at {}", path.display()))?;
    let mut h = Sha256::new();
    let n = blocks_of(&mut f, path, |b| h.update(b))?;
    Ok((n, hex(&h.finalize()), (m.dev(), m.ino())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs_err::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), (3, sha256_hex(b"abc")));
    }
}
