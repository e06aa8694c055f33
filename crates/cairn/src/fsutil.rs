//! File-system helpers that keep half-done work invisible: write to a hidden
//! sibling, fsync, rename; directory fsync; safe relative paths; the modes
//! of what cairn writes.
//!
//! Modes are chosen, never inherited: `cairn` sets its umask to 022 before
//! anything else ([`set_umask`]), so what it and the programs it runs
//! (mmdebstrap, dpkg's maintainer scripts, mkinitramfs, mksquashfs) create
//! is what Debian's own tools make under Debian's default umask — whatever
//! a hardened build host (`umask 077`) has set. What must stay private
//! (keys, work trees, a disk being made) is made so explicitly
//! ([`private_dir`], [`PRIVATE_FILE`]); what others must read (the store a
//! web server serves, a boot partition, an image tree) gets [`PUBLIC_FILE`]
//! and [`PUBLIC_DIR`] explicitly where a file starts private (temporary
//! siblings are created 0600).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::Cmd;

/// A file everyone may read (what a web server, TFTP server, GRUB or a
/// service of the system reads).
pub const PUBLIC_FILE: u32 = 0o644;
/// A directory everyone may enter and list.
pub const PUBLIC_DIR: u32 = 0o755;
/// A file only its owner may read (keys, their configuration).
pub const PRIVATE_FILE: u32 = 0o600;
/// The umask cairn runs with, whatever it was started with.
pub const UMASK: u32 = 0o022;

/// Sets this process's umask to [`UMASK`] (inherited by every program it
/// runs); returns the one it had.
pub fn set_umask() -> u32 {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(UMASK)).as_raw_mode()
}

/// Sets the permission bits of `path` (not following a final symlink's
/// target is not needed: cairn calls it on files it has just made).
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Makes `dir` and the regular files directly in it everyone's to read
/// ([`PUBLIC_DIR`], [`PUBLIC_FILE`]), whatever made them: an image, the
/// netboot directory, what a web server or a TFTP server hands out.
pub fn make_public(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    set_mode(dir, PUBLIC_DIR)?;
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        // The file itself, opened without following a link (one swapped in
        // after the look is not followed to its target).
        let p = e.path();
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        if f.metadata().is_ok_and(|m| m.is_file()) {
            f.set_permissions(fs::Permissions::from_mode(PUBLIC_FILE))
                .with_context(|| format!("chmod 644 {}", p.display()))?;
        }
    }
    Ok(())
}

/// Writes `data` to `path` atomically (temporary sibling, fsync, rename,
/// fsync dir), readable by everyone ([`PUBLIC_FILE`]).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, PUBLIC_FILE)
}

/// [`write_atomic`] with the file's mode chosen by the caller.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (mut f, tmp) = new_sibling(path)?;
    let r = f
        .write_all(data)
        .and_then(|_| f.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|_| {
            fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r?;
    sync_dir(dir)
}

/// A new, empty hidden sibling of `path` (`.<name>.<random>`), created
/// exclusively: never an existing file, never through a symlink someone
/// placed there (the directory may be anyone's, /tmp say). It is made
/// 0600: a caller that publishes it sets its mode ([`set_mode`]).
pub fn new_sibling(path: &Path) -> Result<(File, PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (f, p) = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?
        .keep()
        .map_err(|e| anyhow::anyhow!("keeping a temporary file: {e}"))?;
    Ok((f, p))
}

/// `abs`, an absolute path inside the tree at `root`, as a path on this
/// host, resolved as a chroot into `root` would resolve it: every symlink on
/// the way is followed *inside the tree* (an absolute target starts again
/// at `root`, `..` never climbs above it), so a link in a root tree such as
/// Debian's `/var/run -> /run` can never lead to the build host's own
/// files. With `follow_last` false a symlink at the end is not followed (to
/// remove, rename or replace the link itself).
pub fn resolve_in_root(root: &Path, abs: &str, follow_last: bool) -> Result<PathBuf> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let mut todo: VecDeque<OsString> = Path::new(abs)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut cur: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let mut at = root.to_path_buf();
        at.extend(&cur);
        at.push(&c);
        let link = fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink());
        if link && (follow_last || !todo.is_empty()) {
            hops += 1;
            if hops > 40 {
                bail!("{abs} in {}: too many levels of symlinks", root.display());
            }
            let target = fs::read_link(&at).with_context(|| format!("reading {}", at.display()))?;
            if target.is_absolute() {
                cur.clear();
            }
            for t in target.components().rev() {
                match t {
                    Component::Normal(n) => todo.push_front(n.to_os_string()),
                    Component::ParentDir => todo.push_front(OsString::from("..")),
                    _ => {}
                }
            }
            continue;
        }
        cur.push(c);
    }
    let mut out = root.to_path_buf();
    out.extend(&cur);
    Ok(out)
}

/// fsyncs a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Checks that `rel` is a plain relative path below `prefix` (no absolute
/// path, no `..`, no `.`, no empty component) and returns it as a path.
pub fn safe_relative(rel: &str, prefix: &str) -> Result<PathBuf> {
    if rel.contains('\0') || rel.contains('\\') {
        bail!("unsafe path {rel:?}: forbidden character");
    }
    let p = Path::new(rel);
    let mut comps = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => comps.push(s),
            _ => bail!("unsafe path {rel:?}: absolute paths, `.` and `..` are not allowed"),
        }
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("unsafe path {rel:?}: empty, `.` or `..` component");
    }
    if comps.first().map(|c| c.to_str()) != Some(Some(prefix)) || comps.len() < 2 {
        bail!("unsafe path {rel:?}: not inside {prefix}/");
    }
    Ok(p.to_path_buf())
}

/// An exclusive lock (flock) held while the value lives; the holder's pid is
/// written into the file so a refusal can name it.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Locks `path` for `what` ("mirror debian"). With `wait`, waits for the
    /// holder; otherwise refuses, naming it, and ends the message with `hint`.
    pub fn acquire(path: &Path, what: &str, wait: bool, hint: &str) -> Result<Lock> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(path).unwrap_or_default();
                let holder = if holder.trim().is_empty() {
                    "?".to_string()
                } else {
                    holder.trim().to_string()
                };
                if !wait {
                    bail!(
                        "{what} is locked by another cairn (pid {holder}): wait for it to finish{hint}"
                    );
                }
                if !crate::progress::quiet() {
                    eprintln!("waiting for the lock on {what} (held by pid {holder})");
                }
                f.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        f.set_len(0).ok();
        let _ = write!(f, "{}", std::process::id());
        Ok(Lock { _file: f })
    }
}

/// Whether this process runs as root (effective UID 0).
pub fn is_root() -> bool {
    euid() == Some(0)
}

/// This process's effective user id (from /proc/self/status).
pub fn euid() -> Option<u32> {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
    })
}

/// Makes `dir` (which must not exist; its parents may) readable by its
/// owner only: a work tree below it (setuid programs of the packages being
/// installed, device nodes unpacked from an image) is out of every other
/// user's reach.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(p) = dir.parent() {
        fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    Ok(())
}

/// Makes `dir` (and its parents) if needed and checks that it is a real
/// directory (not a symlink) of this user that no one else may write: files
/// written into it by name (logs, a variable store qemu opens) cannot be
/// redirected by anyone else — a `/var/tmp/...` path someone made first is
/// refused, not used.
pub fn own_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let m = fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let me = euid().context("cannot tell this process's user id")?;
    if !m.file_type().is_dir() {
        bail!(
            "{} is not a directory (a symlink?): refusing to write into it",
            dir.display()
        );
    }
    if m.uid() != me || m.mode() & 0o022 != 0 {
        bail!(
            "{} belongs to user {} or others may write to it (mode {:o}): refusing to write into it; choose another directory",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        );
    }
    // Nobody else may swap it for another: every directory above it is this
    // user's or root's, and writable by others only with the sticky bit
    // (as /tmp and /var/tmp).
    let canon = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for a in canon.ancestors().skip(1) {
        let m = fs::metadata(a).with_context(|| format!("reading {}", a.display()))?;
        let shared = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != me && m.uid() != 0) || shared {
            bail!(
                "{} is below {} (user {}, mode {:o}), which another user could change: refusing to write into it",
                dir.display(),
                a.display(),
                m.uid(),
                m.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// Unmounts anything still mounted below `dir` (a killed build's /proc,
/// /dev…) so removing the tree can never reach into the host. `dir` itself
/// stays mounted if it is a mount point. A mount table that cannot be read
/// is an error: nothing below `dir` may then be removed.
pub fn unmount_below(dir: &Path) -> Result<()> {
    unmount_below_by(dir, Path::new("/proc/self/mountinfo"))
}

fn unmount_below_by(dir: &Path, mountinfo: &Path) -> Result<()> {
    let Ok(canon) = dir.canonicalize() else {
        return Ok(());
    };
    for _ in 0..3 {
        let info = fs::read_to_string(mountinfo).with_context(|| {
            format!(
                "reading {}: cannot tell what is mounted below {}, so nothing there is removed",
                mountinfo.display(),
                dir.display()
            )
        })?;
        let mut points: Vec<PathBuf> = mount_points(&info)
            .into_iter()
            .filter(|p| p.starts_with(&canon) && *p != canon)
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = Cmd::new("umount").arg("--lazy").arg(&p).output_any_status();
        }
    }
    bail!(
        "{} still has mounts below it; not removing it",
        dir.display()
    )
}

/// The mount points of a mountinfo table (its octal escapes undone).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            PathBuf::from(
                p.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .collect()
}

/// A work directory removed on drop (after unmounting anything below it).
pub struct WorkDir(pub PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if unmount_below(&self.0).is_ok() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A regular file's bytes, at most `cap` of them; a link, a FIFO, a device
/// or a larger file is refused (whoever wrote the partition chose it). The
/// file is opened without following a link or waiting on a FIFO, checked
/// as opened, and never read past `cap` (a file that grows meanwhile).
pub fn small_file(p: &Path, cap: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refused = || {
        anyhow::anyhow!(
            "{} is not a regular file of at most {cap} bytes",
            p.display()
        )
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(refused()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let m = f
        .metadata()
        .with_context(|| format!("reading {}", p.display()))?;
    if !m.is_file() || m.len() > cap {
        return Err(refused());
    }
    let mut data = Vec::with_capacity(m.len() as usize);
    f.take(cap + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {}", p.display()))?;
    if data.len() as u64 > cap {
        return Err(refused());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostile partition puts where a small file should be: a link,
    /// a FIFO (never waited on), a device, a file over the cap.
    #[test]
    fn small_files_are_regular_small_and_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(small_file(&f, 5).unwrap(), b"12345");
        assert!(small_file(&f, 4).is_err());
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(format!("{:#}", small_file(&l, 5).unwrap_err()).contains("not a regular file"));
        let fifo = d.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(small_file(&fifo, 5).is_err());
        assert!(small_file(Path::new("/dev/zero"), 5).is_err());
        assert!(small_file(&d.path().join("none"), 5).is_err());
    }

    #[test]
    fn safe_relative_refuses_escapes() {
        assert!(safe_relative("pool/main/a/a_1.deb", "pool").is_ok());
        for bad in [
            "/etc/passwd",
            "pool/../etc/passwd",
            "pool/./a",
            "dists/x",
            "pool",
            "pool//a",
            "../pool/a",
            "pool/a\0b",
        ] {
            assert!(safe_relative(bad, "pool").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/lock");
        let _held = Lock::acquire(&p, "thing t", false, "").unwrap();
        let err = Lock::acquire(&p, "thing t", false, ", or pass --wait")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!(
                "thing t is locked by another cairn (pid {}): wait for it to finish, or pass --wait",
                std::process::id()
            )
        );
    }

    /// Under a hardened umask (077, as CIS benchmarks ask) what cairn
    /// writes for others is still theirs to read: modes are chosen, and
    /// `set_umask` gives every later file and program Debian's 022. The
    /// umask is the whole process's: this runs in a child of its own.
    #[test]
    fn modes_do_not_depend_on_the_callers_umask() {
        use std::os::unix::fs::PermissionsExt;
        const NAME: &str = "fsutil::tests::modes_do_not_depend_on_the_callers_umask";
        if std::env::var_os("CAIRN_UMASK_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1"])
                .env("CAIRN_UMASK_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        // Chosen whatever the umask.
        write_atomic(&d.path().join("pub"), b"x").unwrap();
        assert_eq!(mode(&d.path().join("pub")), 0o644);
        write_atomic_mode(&d.path().join("key"), b"x", PRIVATE_FILE).unwrap();
        assert_eq!(mode(&d.path().join("key")), 0o600);
        private_dir(&d.path().join("work")).unwrap();
        assert_eq!(mode(&d.path().join("work")), 0o700);
        // The umask a hardened host set is what `set_umask` replaces; from
        // then on files, directories and programs get Debian's defaults.
        assert_eq!(set_umask(), 0o077);
        fs::create_dir(d.path().join("dir")).unwrap();
        fs::write(d.path().join("file"), b"x").unwrap();
        assert_eq!(mode(&d.path().join("dir")), 0o755);
        assert_eq!(mode(&d.path().join("file")), 0o644);
        let out = std::process::Command::new("sh")
            .args(["-c", "umask"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0022");
    }

    #[test]
    fn write_atomic_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/f");
        write_atomic(&p, b"x").unwrap();
        write_atomic(&p, b"y").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"y");
        assert_eq!(fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
    }

    /// A temporary sibling is never an existing file nor a symlink someone
    /// placed where a predictable name would be.
    #[test]
    fn siblings_never_go_through_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let target = d.path().join("disk.img");
        // Every name an attacker could guess for the old scheme.
        for n in [".disk.img.tmp", ".disk.img.new"] {
            std::os::unix::fs::symlink(&victim, d.path().join(n)).unwrap();
        }
        let (mut f, p) = new_sibling(&target).unwrap();
        f.write_all(b"disk bytes").unwrap();
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        write_atomic(&target, b"x").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    /// Paths in a root tree stay in it, whatever its symlinks say.
    #[test]
    fn paths_in_a_tree_resolve_inside_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("run")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var-run")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/passwd", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/etc/loop", root.join("etc/loop")).unwrap();
        let r = |p: &str, f: bool| resolve_in_root(&root, p, f);
        assert_eq!(r("/var/run/x", true).unwrap(), root.join("run/x"));
        assert_eq!(r("/var/run", false).unwrap(), root.join("var/run"));
        assert_eq!(r("/var/run", true).unwrap(), root.join("run"));
        assert_eq!(r("/etc/up", true).unwrap(), root.join("etc/passwd"));
        assert_eq!(r("/../../etc/x", true).unwrap(), root.join("etc/x"));
        assert_eq!(r("/new/dir/f", true).unwrap(), root.join("new/dir/f"));
        assert!(
            r("/etc/loop/x", true)
                .unwrap_err()
                .to_string()
                .contains("too many levels")
        );
    }

    /// Log directories: a symlink, a directory others may write to, or (as
    /// root) one that belongs to another user are refused.
    #[test]
    fn own_dir_refuses_what_others_control() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let fresh = d.path().join("a/b");
        own_dir(&fresh).unwrap();
        own_dir(&fresh).unwrap();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            own_dir(&open)
                .unwrap_err()
                .to_string()
                .contains("others may write")
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(
            own_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        // Below a directory others may write to (not sticky).
        let under = open.join("logs");
        assert!(
            own_dir(&under)
                .unwrap_err()
                .to_string()
                .contains("another user could change")
        );
        if is_root() {
            let theirs = d.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            let st = std::process::Command::new("chown")
                .args(["65534:65534"])
                .arg(&theirs)
                .status()
                .unwrap();
            assert!(st.success());
            assert!(
                own_dir(&theirs)
                    .unwrap_err()
                    .to_string()
                    .contains("belongs to user 65534")
            );
        }
    }

    /// An unreadable mount table stops a cleanup: the tree (which could hold
    /// bind mounts of /dev or the mirrors) is not removed.
    #[test]
    fn cleanup_fails_closed_without_a_mount_table() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        fs::create_dir_all(work.join("rootfs/dev")).unwrap();
        let err = unmount_below_by(&work, &d.path().join("no-such-mountinfo")).unwrap_err();
        assert!(
            format!("{err:#}").contains("nothing there is removed"),
            "{err:#}"
        );
        // The guard's drop goes through the same check (here the real table,
        // which has nothing below `work`): removed.
        drop(WorkDir(work.clone()));
        assert!(!work.exists());
        assert_eq!(
            mount_points("36 35 98:0 /mnt1 /a\\040b rw - ext3 /dev/root rw\n"),
            [PathBuf::from("/a b")]
        );
    }
}
