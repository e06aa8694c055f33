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

/// Feeds the bytes of the file at `path` to `each`, in large blocks;
/// returns how many there were.
pub fn for_each_block(path: &Path, mut each: impl FnMut(&[u8])) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if r == 0 {
            return Ok(n);
        }
        n += r as u64;
        each(&buf[..r]);
    }
}

/// Size and SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut h = Sha256::new();
    let n = for_each_block(path, |b| h.update(b))?;
    Ok((n, hex(&h.finalize())))
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
