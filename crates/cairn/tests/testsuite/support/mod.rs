//! Test support: tier gating, the cairn binary, a test signing key, a
//! Debian-shaped repository built from tiny real .deb files, and an HTTP
//! server on 127.0.0.1 that can misbehave on purpose.

pub mod apt;
pub mod cores;
pub mod fixture;
pub mod nginx;
pub mod package;
pub mod repo;
pub mod server;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Whether a tier that cannot run here must be skipped. Under `CI=true` a
/// skip is a failure: CI proves everything.
pub fn skip(reason: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test cannot run here and CI=true forbids skipping: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    true
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips unless this host is amd64: `what` assumes it (x86 GRUB platforms,
/// qemu-system-x86_64, OVMF, amd64 kernels in the images).
pub fn need_amd64(what: &str) -> bool {
    if std::env::consts::ARCH == "x86_64" {
        false
    } else {
        skip(&format!(
            "{what} assumes an amd64 host; this one is {}",
            std::env::consts::ARCH
        ))
    }
}

/// Skips unless every program is installed.
pub fn need_tools(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        false
    } else {
        skip(&format!("missing tools: {}", missing.join(" ")))
    }
}

pub fn is_root() -> bool {
    // SAFETY-free: geteuid via `id -u`.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Where tests keep what Debian's nginx serves: its workers run as
/// www-data, as Debian ships it, and reach a store only through
/// directories everyone may enter. The test directory (under the
/// checkout) when that holds; otherwise (a checkout in /root, mode 0700)
/// one of its own in /var/tmp, made 0755 — the host's directories are
/// never opened up for a test.
pub fn served_root() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&tmp).unwrap();
        if enterable_by_all(&tmp) {
            return tmp;
        }
        let h = cairn::trust::hash::sha256_hex(tmp.as_os_str().as_encoded_bytes());
        let r = Path::new("/var/tmp/cairn-tests").join(&h[..16]);
        for d in [r.parent().unwrap(), r.as_path()] {
            let _ = std::fs::create_dir(d);
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        cairn::fsutil::own_dir(&r).unwrap();
        eprintln!(
            "note: {} is not reachable by nginx's www-data workers: served stores live in {}",
            tmp.display(),
            r.display()
        );
        r
    })
}

/// Whether every directory from `/` down to `dir` may be entered by
/// anyone (others' execute bit).
pub fn enterable_by_all(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    canon
        .ancestors()
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// A temporary directory below [`served_root`], 0755 (a plain
/// `tempfile::tempdir()` is 0700: no web server worker could enter it).
pub fn served_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("served-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir_in(served_root())
        .unwrap()
}

/// A configuration file that does not exist: tests read no host configuration.
pub const NO_CONFIG: &str = "/nonexistent/cairn-test/cairn.toml";

/// The cairn binary as the tests run it: once this process has made
/// cairn's package, with CAIRN_PACKAGE naming it (images with
/// `cairn = true` install it).
pub fn cairn_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    // The host's /etc/cairn/cairn.toml is not the test's.
    c.env("CAIRN_CONFIG", NO_CONFIG);
    if let Some(deb) = package::made() {
        c.env(cairn::rootfs::customize::PACKAGE_ENV, deb);
    }
    c
}

/// Runs the cairn binary.
pub fn cairn(store: &Path, args: &[&str]) -> Output {
    cairn_through(cairn_command(), store, args)
}

/// Runs `c` (the cairn binary, or a program that runs it) with the store,
/// quiet, no host configuration and no stdin.
pub fn cairn_through(mut c: Command, store: &Path, args: &[&str]) -> Output {
    c.arg("--store")
        .arg(store)
        .arg("--quiet")
        .args(args)
        // The host's /etc/cairn/cairn.toml is not the test's.
        .env("CAIRN_CONFIG", NO_CONFIG)
        .stdin(Stdio::null())
        .output()
        .expect("running cairn")
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "cairn failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts failure and returns stderr.
#[track_caller]
pub fn fails(o: Output) -> String {
    assert!(
        !o.status.success(),
        "cairn should have failed:\n{}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a grub.cfg in grub-emu (a real GRUB, every module built in) with
/// `disk` as (hd0), in `work`; returns what it printed (carriage returns
/// gone, escape sequences kept).
pub fn grub_emu(cfg: &str, work: &Path, disk: &Path) -> String {
    let emu = work.join("emu");
    let _ = std::fs::remove_dir_all(&emu);
    let st = Command::new("cp")
        .arg("-r")
        .arg("/usr/lib/grub/x86_64-emu")
        .arg(&emu)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(emu.join("grub.cfg"), cfg).unwrap();
    std::fs::write(
        work.join("device.map"),
        format!("(hd0) {}\n", disk.display()),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["30", "grub-emu", "-d"])
        .arg(&emu)
        .arg("-m")
        .arg(work.join("device.map"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::remove_dir_all(&emu).unwrap();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// A GnuPG key for signing test repositories.
pub struct Key {
    pub home: PathBuf,
    pub fpr: String,
    /// Binary public keyring with just this key.
    pub keyring: PathBuf,
}

impl Key {
    fn create(name: &str) -> Key {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("gpg")
            .join(name);
        let home = base.join("home");
        let keyring = base.join("pub.gpg");
        let fpr_file = base.join("fpr");
        if !fpr_file.exists() {
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(&home).unwrap();
            std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            let st = gpg(&home)
                .args([
                    "--passphrase",
                    "",
                    "--quick-gen-key",
                    &format!("cairn test {name} <{name}@cairn.invalid>"),
                    "rsa2048",
                    "sign",
                    "never",
                ])
                .status()
                .unwrap();
            assert!(st.success(), "gpg key generation failed");
            let out = gpg(&home).args(["--export"]).output().unwrap();
            std::fs::write(&keyring, &out.stdout).unwrap();
            let out = gpg(&home)
                .args(["--with-colons", "--list-keys"])
                .output()
                .unwrap();
            let fpr = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.starts_with("fpr:"))
                .unwrap()
                .split(':')
                .nth(9)
                .unwrap()
                .to_string();
            std::fs::write(&fpr_file, &fpr).unwrap();
        }
        let fpr = std::fs::read_to_string(&fpr_file).unwrap();
        Key { home, fpr, keyring }
    }

    pub fn clearsign(&self, input: &Path, output: &Path) {
        let st = gpg(&self.home)
            .args(["--digest-algo", "SHA256", "--clearsign", "-o"])
            .arg(output)
            .arg(input)
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn detach_sign(&self, input: &Path, output: &Path) {
        let st = gpg(&self.home)
            .args(["--digest-algo", "SHA256", "--detach-sign", "-o"])
            .arg(output)
            .arg(input)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn gpg(home: &Path) -> Command {
    let mut c = Command::new("gpg");
    c.arg("--homedir")
        .arg(home)
        .args(["--batch", "--yes", "--quiet", "--pinentry-mode", "loopback"])
        .stdin(Stdio::null());
    c
}

/// The key that signs test repositories.
pub fn key() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| with_key_lock(|| Key::create("archive")))
}

/// A key that is not in the test keyring.
pub fn other_key() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| with_key_lock(|| Key::create("stranger")))
}

fn with_key_lock<T>(f: impl FnOnce() -> T) -> T {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gpg");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    lock.lock().unwrap();
    f()
}

/// Both cores, for the heavy root-tier work (bootstraps, squashfs,
/// rebuilds): see `cores`.
pub fn heavy() -> cores::Held<'static> {
    cores::all()
}
