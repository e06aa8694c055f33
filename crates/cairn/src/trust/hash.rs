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

fn blocks_of(f: &mut File, path: &Path, each: impl FnMut(&[u8])) -> Result<u64> {
    let _ = rustix::fs::fadvise(f.file(), 0, None, rustix::fs::Advice::Sequential);
    read_blocks(f, path, each)
}

fn read_blocks(r: &mut impl Read, path: &Path, mut each: impl FnMut(&[u8])) -> Result<u64> {
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
            let r = r
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

/// Copies the regular file at `from` (never waiting at the open, refused
/// above `limit` bytes, also when it grows while it is read) to the new
/// file `to` (made here, never written through a file or link already
/// there) and returns the SHA-256 of the bytes copied: one read for the
/// copy and its hash. A copy that failed is removed.
pub fn copy_hashing(from: &Path, to: &Path, limit: u64) -> Result<String> {
    use std::io::Write;
    let (mut f, _) = open_within(from, limit)?;
    let mut out = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let mut h = Sha256::new();
    let mut failed = None;
    let read = read_blocks(&mut (&mut f).take(limit + 1), from, |b| {
        if failed.is_none() {
            h.update(b);
            failed = out.write_all(b).err();
        }
    });
    let done = match (read, failed) {
        (Err(e), _) => Err(e),
        (_, Some(e)) => Err(e).with_context(|| format!("writing {}", to.display())),
        (Ok(n), None) if n > limit => Err(anyhow::anyhow!(
            "{} grew past {limit} bytes while it was copied",
            from.display()
        )),
        (Ok(_), None) => Ok(hex(&h.finalize())),
    };
    if done.is_err() {
        drop(out);
        let _ = fs_err::remove_file(to);
    }
    done
}

/// The SHA-256 of the regular file at `path` (`open_regular`) and its
/// first `keep` bytes, every byte also written to `also` (a signature
/// check), read once: a file larger than `limit` is refused
/// before a byte is read (a sparse terabyte costs nothing), and one that
/// grows past it while it is read, at the limit.
pub fn sha256_regular_file_head(
    path: &Path,
    limit: u64,
    keep: usize,
    also: &mut dyn std::io::Write,
) -> Result<(String, Vec<u8>)> {
    let (mut f, size) = open_within(path, limit)?;
    let mut h = Sha256::new();
    let mut head = Vec::with_capacity(keep.min(size as usize));
    let mut failed = None;
    let n = read_blocks(&mut (&mut f).take(limit + 1), path, |b| {
        h.update(b);
        let more = keep - head.len();
        head.extend_from_slice(&b[..more.min(b.len())]);
        if failed.is_none() {
            failed = also.write_all(b).err();
        }
    })?;
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("passing {} on", path.display()));
    }
    if n > limit {
        anyhow::bail!(
            "{} grew past {limit} bytes while it was read",
            path.display()
        );
    }
    Ok((hex(&h.finalize()), head))
}

/// `open_to_hash`, and the file's size, refused when it is over `limit`
/// (before a byte is read: a sparse terabyte costs nothing).
fn open_within(path: &Path, limit: u64) -> Result<(File, u64)> {
    let (f, _) = open_to_hash(path)?;
    let size = f
        .metadata()
        .with_context(|| format!("looking at {}", path.display()))?
        .len();
    if size > limit {
        anyhow::bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok((f, size))
}

/// A regular file opened to be read whole: never waiting at the open (a
/// FIFO in its place), refused unless it is a regular file.
pub fn open_regular(path: &Path) -> Result<File> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    let f = fs_err::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let m = f
        .metadata()
        .with_context(|| format!("looking at {}", path.display()))?;
    if !m.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    Ok(f)
}

/// What reading a file for its hash found.
#[derive(Debug)]
pub struct FileHash {
    /// Bytes read: the file's size when `whole`, else more than the limit.
    pub size: u64,
    pub whole: bool,
    pub sha256: String,
    /// Device and inode of the file read, whatever its name points at
    /// afterwards.
    pub id: (u64, u64),
    /// The file, if the caller keeps it open (its inode then cannot be
    /// another file's while names are compared with `id`).
    pub file: Option<File>,
}

/// Size and SHA-256 of the regular file at `path` (`open_regular`), read
/// to its end or to `limit` + 1 bytes (then it is larger than that, and
/// not read further: a file can be endless).
pub fn sha256_regular_file(path: &Path, limit: u64) -> Result<FileHash> {
    let (mut f, id) = open_to_hash(path)?;
    let mut h = Sha256::new();
    let cap = limit.saturating_add(1);
    let n = read_blocks(&mut (&mut f).take(cap), path, |b| h.update(b))?;
    Ok(FileHash {
        size: n,
        whole: n < cap,
        sha256: hex(&h.finalize()),
        id,
        file: Some(f),
    })
}

/// The regular file at `path` (`open_regular`) and its device and inode,
/// the kernel told it will be read front to back.
fn open_to_hash(path: &Path) -> Result<(File, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let f = open_regular(path)?;
    let m = f
        .metadata()
        .with_context(|| format!("looking at {}", path.display()))?;
    let _ = rustix::fs::fadvise(f.file(), 0, None, rustix::fs::Advice::Sequential);
    Ok((f, (m.dev(), m.ino())))
}

/// `sha256_regular_file`, keeping the bytes it read: what is hashed is
/// what is returned (read once, each block hashed as it arrives, while
/// it is in the core's cache).
pub fn sha256_regular_file_kept(path: &Path, limit: u64) -> Result<(FileHash, Vec<u8>)> {
    let (mut f, id) = open_to_hash(path)?;
    let cap = limit.saturating_add(1);
    // Room for what is expected at once, within reason whatever the limit says.
    let mut v = Vec::with_capacity(limit.min(1 << 30) as usize + 1);
    let mut h = Sha256::new();
    let mut r = (&mut f).take(cap);
    loop {
        let at = v.len();
        let n = (&mut r)
            .take(BLOCK as u64)
            .read_to_end(&mut v)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&v[at..]);
    }
    let n = v.len() as u64;
    let hash = FileHash {
        size: n,
        whole: n < cap,
        sha256: hex(&h.finalize()),
        id,
        file: Some(f),
    };
    Ok((hash, v))
}

/// The bytes of the regular file at `path` (`open_regular`), at most
/// `limit` + 1 of them (more: the file is larger than `limit`).
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = open_regular(path)?;
    // Room for what is expected at once (no copies as it grows), within
    // reason whatever the limit says.
    let mut v = Vec::with_capacity(limit.min(1 << 30) as usize + 1);
    f.take(limit.saturating_add(1))
        .read_to_end(&mut v)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy holds the bytes hashed; a file or a link already at the
    /// copy's name is never written through (the copy is refused); a
    /// source too large or not a regular file is refused, and no copy is
    /// left.
    #[test]
    fn a_copy_is_what_was_hashed_and_never_written_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("from"), d.path().join("to"));
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs_err::write(&from, &data).unwrap();
        assert_eq!(
            copy_hashing(&from, &to, 1 << 20).unwrap(),
            sha256_hex(&data)
        );
        assert_eq!(fs_err::read(&to).unwrap(), data);
        let victim = d.path().join("victim");
        fs_err::write(&victim, b"untouched").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(copy_hashing(&from, &link, 1 << 20).is_err());
        assert_eq!(fs_err::read(&victim).unwrap(), b"untouched");
        assert!(
            copy_hashing(&from, &to, 1 << 20).is_err(),
            "an existing copy is kept"
        );
        assert_eq!(fs_err::read(&to).unwrap(), data);
        assert!(copy_hashing(&d.path().join("absent"), &d.path().join("new"), 9).is_err());
        // Larger than the limit (a sparse terabyte): refused before a byte
        // is copied, and no copy is left.
        let huge = d.path().join("huge");
        fs_err::File::create(&huge)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let big = d.path().join("big");
        let e = copy_hashing(&huge, &big, 1 << 20).unwrap_err();
        assert!(
            format!("{e:#}").contains("larger than 1048576 bytes"),
            "{e:#}"
        );
        assert!(!big.exists());
        // (Not a regular file: only_regular_files_are_read_and_never_past_the_limit.)
    }

    /// Read once where it lies: the hash of every byte, the head kept from
    /// the same bytes, every byte passed on; a file over the limit (a
    /// sparse terabyte) refused before a byte is read.
    #[test]
    fn a_file_hashed_in_place_keeps_its_head_and_never_reads_past_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        fs_err::write(&f, &data).unwrap();
        let mut passed = Vec::new();
        let (sum, head) = sha256_regular_file_head(&f, 1 << 20, 70_000, &mut passed).unwrap();
        assert_eq!(passed, data, "every byte passed on");
        assert_eq!(
            (sum.as_str(), head.as_slice()),
            (sha256_hex(&data).as_str(), &data[..70_000])
        );
        let (_, all) =
            sha256_regular_file_head(&f, 1 << 20, 1 << 20, &mut std::io::sink()).unwrap();
        assert_eq!(all, data, "a head longer than the file is the file");
        assert!(
            sha256_regular_file_head(&f, 1 << 20, 0, &mut std::io::sink())
                .unwrap()
                .1
                .is_empty()
        );
        let e = sha256_regular_file_head(&f, 1000, 10, &mut std::io::sink()).unwrap_err();
        assert!(format!("{e:#}").contains("larger than 1000 bytes"), "{e:#}");
        let huge = d.path().join("huge");
        fs_err::File::create(&huge)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        // (Refused by its size, not read to the limit first.)
        let e = sha256_regular_file_head(&huge, 1 << 30, 10, &mut std::io::sink()).unwrap_err();
        assert!(format!("{e:#}").contains("larger than"), "{e:#}");
        // (Not a regular file: only_regular_files_are_read_and_never_past_the_limit.)
    }

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

    /// A FIFO, a device or a directory in a file's place is refused at
    /// once (never waited on, never read without end); a file larger
    /// than the limit is read to the limit and one byte more.
    #[test]
    fn only_regular_files_are_read_and_never_past_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        for p in [fifo.as_path(), Path::new("/dev/zero"), d.path()] {
            let e = sha256_regular_file(p, 10).unwrap_err();
            assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
            assert!(read_regular_file(p, 10).is_err());
            assert!(sha256_regular_file_kept(p, 10).is_err());
            let e = sha256_regular_file_head(p, 10, 1, &mut std::io::sink()).unwrap_err();
            assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
            let copy = d.path().join("copy");
            let e = copy_hashing(p, &copy, 10).unwrap_err();
            assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
            assert!(!copy.exists(), "no copy is left");
        }
        let big = d.path().join("big");
        fs_err::write(&big, vec![1u8; 100]).unwrap();
        let h = sha256_regular_file(&big, 10).unwrap();
        assert_eq!((h.size, h.whole), (11, false));
        let h = sha256_regular_file(&big, 100).unwrap();
        assert_eq!(
            (h.size, h.whole, h.sha256),
            (100, true, sha256_hex(&[1u8; 100]))
        );
        assert_eq!(read_regular_file(&big, 10).unwrap().len(), 11);
        // Kept: the bytes are those hashed, in blocks, to the limit and one more.
        let (h, b) = sha256_regular_file_kept(&big, 10).unwrap();
        assert_eq!((h.size, h.whole, b.len()), (11, false, 11));
        let large = d.path().join("large");
        let body: Vec<u8> = (0..3 * BLOCK + 7).map(|i| (i % 251) as u8).collect();
        fs_err::write(&large, &body).unwrap();
        let (h, b) = sha256_regular_file_kept(&large, body.len() as u64).unwrap();
        assert_eq!((h.size, h.whole), (body.len() as u64, true));
        assert_eq!((h.sha256, b), (sha256_hex(&body), body));
    }
}
