//! The lock on a disk (an image file or a block device) that every command
//! takes before it mounts or writes the disk: two writers at once — two
//! pulls, a pull and `disk add` — would each set up their own loop device
//! and mount the same file system twice, which corrupts it. The lock is the
//! disk's own (flock on the file or device node, the convention systemd and
//! udev use for block devices), so another path to the same disk — a
//! symlink, `./disk.img` for `/srv/disk.img`, /dev/disk/by-id for /dev/sda —
//! meets the same lock. Readers (a dry run, `status`) share it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How a command uses the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Looks only (a dry run, `status`): shared with other readers.
    Read,
    /// Changes it: alone.
    Write,
}

/// How long a command waits for another one's lock before it refuses (a
/// pull of a large image holds it for minutes; a timer's next pull comes).
pub const WAIT: Duration = Duration::from_secs(60);

/// A disk locked for the life of the value.
#[derive(Debug)]
pub struct DiskLock {
    file: File,
    /// A loop device's backing file, locked with it.
    _backing: Vec<File>,
    pub disk: PathBuf,
    pub access: Access,
}

impl DiskLock {
    /// Locks `disk` for `access`, waiting up to `wait` for another holder;
    /// then refuses, naming the holder's pid when the kernel tells it. The
    /// disk is the path's own file or block device (never through a
    /// symlink, never a FIFO someone planted), and still the path's when
    /// the lock is taken (a disk file replaced meanwhile is locked anew);
    /// a loop device's backing file is locked with it, so the file and a
    /// loop device of it meet one lock.
    pub fn acquire(disk: &Path, access: Access, wait: Duration) -> Result<DiskLock> {
        let t0 = Instant::now();
        let mut said = false;
        loop {
            let file = open_disk(disk)?;
            let mut held = vec![];
            if let Some(b) = loop_backing_file(disk) {
                held.push(open_disk(&b)?);
            }
            held.push(file);
            match lock_all(&held, access) {
                Ok(true) => {
                    // The lock is on what the path names now (a disk file
                    // renamed over it while this waited: lock the new one).
                    if same_file(&held[held.len() - 1], disk) {
                        let file = held.pop().expect("the disk itself");
                        return Ok(DiskLock {
                            file,
                            _backing: held,
                            disk: disk.to_path_buf(),
                            access,
                        });
                    }
                    continue;
                }
                Ok(false) => {
                    let who = held
                        .iter()
                        .find_map(holder)
                        .map_or(String::new(), |p| format!(" (pid {p})"));
                    if t0.elapsed() >= wait {
                        bail!(
                            "{} is locked by another process{who} (another cairn writing it?) for {}s: nothing was done; try again when it is finished",
                            disk.display(),
                            wait.as_secs()
                        );
                    }
                    if !said {
                        crate::progress::note(&format!(
                            "waiting for another cairn{who} to finish with {}",
                            disk.display()
                        ));
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).with_context(|| format!("locking {}", disk.display())),
            }
        }
    }

    /// Whether the lock allows changing the disk.
    pub fn writable(&self) -> bool {
        self.access == Access::Write
    }

    /// The open disk the lock is on.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// `disk` opened to be locked: the path's own regular file or block
/// device, opened without blocking and without following a symlink.
fn open_disk(disk: &Path) -> Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(disk)
        .with_context(|| {
            format!(
                "opening {} (a disk file or a block device, not a symlink)",
                disk.display()
            )
        })?;
    let t = f
        .metadata()
        .with_context(|| format!("reading {}", disk.display()))?
        .file_type();
    if !(t.is_file() || t.is_block_device()) {
        bail!(
            "{} is neither a disk file nor a block device: not a disk",
            disk.display()
        );
    }
    Ok(f)
}

/// Locks every file of `files` for `access`, or none: `Ok(false)` when one
/// is held by someone else.
fn lock_all(files: &[File], access: Access) -> std::io::Result<bool> {
    for (i, f) in files.iter().enumerate() {
        let r = match access {
            Access::Read => f.try_lock_shared(),
            Access::Write => f.try_lock(),
        };
        match r {
            Ok(()) => {}
            Err(e) => {
                for g in &files[..i] {
                    let _ = g.unlock();
                }
                return match e {
                    std::fs::TryLockError::WouldBlock => Ok(false),
                    std::fs::TryLockError::Error(e) => Err(e),
                };
            }
        }
    }
    Ok(true)
}

/// Whether `path` still names the file `f` is open on.
fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The file a loop block device reads from, when `disk` is one.
fn loop_backing_file(disk: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let m = std::fs::symlink_metadata(disk).ok()?;
    if !m.file_type().is_block_device() {
        return None;
    }
    let name = disk.file_name()?.to_str()?;
    let b = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let b = PathBuf::from(b.trim());
    std::fs::symlink_metadata(&b)
        .is_ok_and(|m| m.is_file())
        .then_some(b)
}

/// The pid holding a flock on `file`, from /proc/locks.
fn holder(file: &File) -> Option<u32> {
    let m = file.metadata().ok()?;
    let (dev, ino) = (m.dev(), m.ino());
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, &want, std::process::id())
}

/// In a /proc/locks table, the first pid other than `me` with a FLOCK on
/// `id` (`MAJ:MIN:INODE`, as the table writes it).
fn holder_in(locks: &str, id: &str, me: u32) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let at = f.iter().position(|x| *x == "FLOCK")?;
        let pid: u32 = f.get(at + 3)?.parse().ok()?;
        (f.get(at + 4) == Some(&id) && pid != me).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let t = "1: FLOCK  ADVISORY  WRITE 4242 fe:01:1234 0 EOF\n\
                 2: POSIX  ADVISORY  READ 99 fe:01:1234 0 EOF\n\
                 3: FLOCK  ADVISORY  READ 7 fe:01:99 0 EOF\n";
        assert_eq!(holder_in(t, "fe:01:1234", 1), Some(4242));
        assert_eq!(holder_in(t, "fe:01:1234", 4242), None);
        assert_eq!(holder_in(t, "fe:01:5", 1), None);
    }

    /// The disk's own lock: another spelling of its path (a symlink, a
    /// relative path) meets it; readers share it, a writer waits for them
    /// and refuses after its wait, naming the holder.
    #[test]
    fn every_path_to_a_disk_meets_one_lock() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::write(&disk, b"disk").unwrap();
        let link = d.path().join("link.img");
        std::os::unix::fs::symlink(&disk, &link).unwrap();
        let w = DiskLock::acquire(&disk, Access::Write, WAIT).unwrap();
        assert!(w.writable());
        // (flock conflicts between open files, in one process too.)
        let e = DiskLock::acquire(&link, Access::Write, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("link.img: not a disk") || e.contains("not a symlink"),
            "{e}"
        );
        let other = d.path().join("other-name.img");
        std::fs::hard_link(&disk, &other).unwrap();
        let e = DiskLock::acquire(&other, Access::Write, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other-name.img is locked by another process")
                && e.contains("nothing was done"),
            "{e}"
        );
        let dotted = d.path().join(".").join("disk.img");
        assert!(DiskLock::acquire(&dotted, Access::Read, Duration::ZERO).is_err());
        drop(w);
        // A lock let go is free at once, but another test's thread may be
        // between fork and exec with a copy of every open file (flock
        // follows the copy until exec closes it): take it with a wait.
        let r1 = DiskLock::acquire(&other, Access::Read, WAIT).unwrap();
        let _r2 = DiskLock::acquire(&disk, Access::Read, WAIT).unwrap();
        assert!(!r1.writable());
        assert!(DiskLock::acquire(&disk, Access::Write, Duration::from_millis(300)).is_err());
        drop(r1);
        drop(_r2);
        // A FIFO planted where a disk file is expected: refused, not waited on.
        let fifo = d.path().join("fifo.img");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let e = DiskLock::acquire(&fifo, Access::Write, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a disk"), "{e}");
    }

    /// A disk file replaced while a command waited for its lock (`disk
    /// create` renames the new disk over the old one): the waiter locks
    /// the file the path names now, not the old one.
    #[test]
    fn a_disk_replaced_while_waiting_is_locked_anew() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::write(&disk, b"old").unwrap();
        let old = DiskLock::acquire(&disk, Access::Write, WAIT).unwrap();
        let new = d.path().join(".disk.img.new");
        std::fs::write(&new, b"new").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = disk.clone();
        let waiter = std::thread::spawn(move || {
            let l = DiskLock::acquire(&path, Access::Write, WAIT).unwrap();
            tx.send(()).unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut l.file(), &mut s).unwrap();
            s
        });
        std::thread::sleep(Duration::from_millis(300));
        // The new file is locked by whoever made it, before it is renamed
        // over the old one and before the old one's holder lets go (locked
        // after the rename, the waiter could take it first).
        let maker = DiskLock::acquire(&new, Access::Write, WAIT).unwrap();
        std::fs::rename(&new, &disk).unwrap();
        drop(old);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            rx.try_recv().is_err(),
            "the waiter took the old file's lock"
        );
        drop(maker);
        assert_eq!(waiter.join().unwrap(), "new");
    }
}
