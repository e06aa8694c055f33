//! The build tier: images built from the local mirror only, signed and
//! verified; the ISO booted; a killed build leaves nothing behind; virtual
//! and physical builds differ in their base packages; debootstrap builds the
//! same system. Needs root, the host's archive (the shared fixture mirrors
//! from it) and qemu. Each proof is a test of its own.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::fixture::{self, marker_of};
use crate::support::vm::boot;
use crate::support::{cairn, fails, ok, text};

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn squashfs_cat(image: &Path, path: &str) -> String {
    let o = Command::new("unsquashfs")
        .arg("-cat")
        .arg(image.join("filesystem.squashfs"))
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "unsquashfs -cat {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn packages(r: &serde_json::Value) -> Vec<String> {
    let m = fixture::manifest(Path::new(r["path"].as_str().unwrap()));
    m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Before a key or a mirror exists, `build` says what to do; a profile that
/// needs a package the mirror lacks is refused before any work, naming the
/// command that adds it.
#[test]
fn build_says_what_is_missing_before_any_work() {
    let Some((f, _heavy)) = fixture::begin() else {
        return;
    };
    let w = f.work("build_says_what_is_missing_before_any_work");
    let empty = w.path().join("empty");
    let err = fails(cairn(&empty, &["build", "default"]));
    assert!(
        err.contains("no signing key") && err.contains("cairn key generate"),
        "{err}"
    );
    ok(cairn(&empty, &["key", "generate", "--bits", "2048"]));
    let err = fails(cairn(&empty, &["build", "default"]));
    assert!(
        err.contains("no local mirror serves suite") && err.contains("cairn mirror sync"),
        "{err}"
    );
    let p = w.path().join("more.toml");
    fs::write(
        &p,
        format!(
            "schema-version = 1\nsuite = \"{}\"\npackages = [\"hello\"]\n",
            fixture::host_suite()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let err = fails(cairn(&f.store, &["build", p.to_str().unwrap()]));
    assert!(
        err.contains("the local mirror lacks")
            && err.contains(&format!("cairn mirror sync --profile {}", p.display())),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "refused only after work"
    );
    // Another host type than the profile's own: the hint names a command
    // that mirrors for it (once it named one that fetched nothing, and the
    // build failed again), and that command brings what was lacking.
    let store = f.store_copy(w.path());
    let pool = store.join("mirror/debian/pool/non-free-firmware/i/intel-microcode");
    let deb = fs::read_dir(&pool)
        .unwrap_or_else(|e| panic!("{}: {e}", pool.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("the fixture mirrors a physical profile's microcode");
    fs::remove_file(&deb).unwrap();
    let err = fails(cairn(
        &store,
        &["build", "default", "--host-type", "physical"],
    ));
    let hint = "cairn mirror sync --profile default --host-type physical";
    assert!(
        err.contains("the local mirror lacks 1 package file(s)")
            && err.contains("intel-microcode")
            && err.contains(hint),
        "{err}"
    );
    let args: Vec<&str> = hint.split(' ').skip(1).collect();
    ok(cairn(&store, &args));
    assert!(deb.exists(), "`{hint}` did not bring {}", deb.display());
    ok(cairn(&store, &["mirror", "verify", "debian"]));
    // A profile with `cairn = true` and no cairn package (none in the
    // store, no CAIRN_PACKAGE): refused before any work, naming the path
    // looked at and how to make the package.
    let t = Instant::now();
    let o = crate::support::cairn_command()
        .env_remove(cairn::rootfs::customize::PACKAGE_ENV)
        .arg("--store")
        .arg(&f.store)
        .args(["--quiet", "build", f.webtest.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = fails(o);
    let wanted = cairn::rootfs::customize::package_in_store(&f.store, "amd64");
    assert!(
        err.contains(&format!("no cairn package at {}", wanted.display()))
            && err.contains("./scripts/package")
            && err.contains("<store>/packages/"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "refused only after work"
    );
    assert!(
        !f.store.join("images/webtest").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".build-"))
    );
}

/// The default image: every file of an image, it verifies; its ISO boots on
/// UEFI and the booted system names its image.
#[test]
fn default_image_verifies_and_its_iso_boots_on_uefi() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    for n in [
        "vmlinuz",
        "initrd.img",
        "filesystem.squashfs",
        "manifest.json",
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "SHA512SUMS.sig",
        "vmlinuz.sig",
        "initrd.img.sig",
        "default.iso",
    ] {
        assert!(f.default_img.join(n).exists(), "{n} missing from the image");
    }
    let v = json(ok(cairn(
        &f.store,
        &["image", "verify", "default", "--json"],
    )));
    assert_eq!(v["ok"], true, "{v}");
    let b = boot(
        &f.store,
        &f.default_img.join("default.iso"),
        "uefi",
        None,
        &[],
        "iso-uefi",
        400,
    );
    b.reached(&marker_of(&f.default_img));
}

/// One changed byte in a copy of the image: `image verify` fails and names
/// the file.
#[test]
fn image_verify_names_a_changed_file() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("image_verify_names_a_changed_file");
    let copy = w.path().join("default");
    let st = Command::new("cp")
        .arg("-r")
        .arg(&f.default_img)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let sq = copy.join("filesystem.squashfs");
    let mut data = fs::read(&sq).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&sq, &data).unwrap();
    let out = cairn(&f.store, &["image", "verify", copy.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BAD filesystem.squashfs: SHA256 mismatch"),
        "{}",
        text(&out)
    );
}

/// A build killed in the middle (cairn and mmdebstrap alike) leaves no
/// image and no mounts; the next build cleans up after it and builds the
/// physical variant of the profile, whose base packages differ from the
/// virtual build's: what the profile asked for is in its tree.
#[test]
fn killed_build_leaves_nothing_and_host_types_differ() {
    // One core: a bootstrap is dpkg, one process at a time, for most of
    // its time (and lz4 packs in seconds); a VM proof runs beside it.
    let Some((f, _core)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("killed_build_leaves_nothing_and_host_types_differ");
    let store = f.store_copy(w.path());
    let profile = f.webtest.to_str().unwrap();
    let mut child = crate::support::cairn_command()
        .arg("--store")
        .arg(&store)
        .args(["--quiet", "build", profile])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let build_dir = store.join("images/webtest");
    let t = Instant::now();
    while !fs::read_dir(&build_dir)
        .map(|d| d.flatten().any(|e| e.path().join("rootfs/usr").exists()))
        .unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the build never started its tree"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    // SIGKILL to the whole group: cairn and mmdebstrap alike.
    let st = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(st.success());
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<String> = fs::read_dir(&build_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(
        before,
        [fixture::version_of(&f.web_img)],
        "a killed build left an image"
    );

    let phys = json(ok(cairn(&store, &["build", profile, "--json"])));
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(store.to_str().unwrap()),
        "mounts left below the store:\n{mounts}"
    );
    assert!(
        !fs::read_dir(&build_dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".build-"))
    );
    let virt = fixture::manifest(&f.web_img);
    let v: Vec<String> = virt["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let p = packages(&phys);
    for name in [
        "linux-image-amd64",
        "firmware-linux-free",
        "intel-microcode",
        "amd64-microcode",
        "firmware-misc-nonfree",
        "firmware-amd-graphics",
        "firmware-realtek",
        "firmware-iwlwifi",
    ] {
        assert!(
            p.contains(&name.to_string()) && !v.contains(&name.to_string()),
            "{name}"
        );
    }
    for name in ["linux-image-cloud-amd64", "qemu-guest-agent"] {
        assert!(
            v.contains(&name.to_string()) && !p.contains(&name.to_string()),
            "{name}"
        );
    }
    assert_eq!(phys["host_type"], "physical");
    assert_eq!(virt["host-type"], "virtual");

    // Microcode and firmware a physical machine needs, from Debian's
    // non-free-firmware component: the files in the tree, and early
    // microcode for Intel and AMD CPUs in the initramfs whatever CPU built
    // it (amd64-microcode left to itself adds nothing on an Intel host).
    let img = PathBuf::from(phys["path"].as_str().unwrap());
    let tree = Command::new("unsquashfs")
        .args(["-l", "-d", ""])
        .arg(img.join("filesystem.squashfs"))
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&tree.stdout);
    for dir in [
        "/usr/lib/firmware/intel-ucode/",
        "/usr/lib/firmware/amd-ucode/",
        "/usr/lib/firmware/rtl_nic/",
        "/usr/lib/firmware/amdgpu/",
    ] {
        assert!(
            tree.lines().any(|l| l.starts_with(dir)),
            "no {dir} in the image"
        );
    }
    // (The early part is uncompressed cpio: one archive per package,
    // each entry's name in the clear.)
    let initrd = fs::read(img.join("initrd.img")).unwrap();
    for cpu in ["GenuineIntel", "AuthenticAMD"] {
        let name = format!("kernel/x86/microcode/{cpu}.bin");
        assert!(
            initrd.windows(name.len()).any(|w| w == name.as_bytes()),
            "no early microcode for {cpu} in the initramfs"
        );
    }
    // What the profile asked for is in the tree.
    assert_eq!(squashfs_cat(&img, "etc/hostname"), "webtest\n");
    assert_eq!(
        squashfs_cat(&img, "etc/motd"),
        "built by the cairn test suite\n"
    );
    assert!(squashfs_cat(&img, "etc/hook-ran").starts_with("systemd\t"));
    // The profile's own sysusers.d file was applied at the build (the
    // boot does not: /etc is marked up to date for the image's /usr).
    assert!(
        squashfs_cat(&img, "etc/passwd")
            .lines()
            .any(|l| l.starts_with("cairn-svc:")),
        "no cairn-svc user in the image"
    );
    for mark in ["etc/.updated", "var/.updated"] {
        assert!(
            squashfs_cat(&img, mark).contains("TIMESTAMP_NSEC="),
            "{mark}"
        );
    }
    assert!(
        squashfs_cat(&img, "etc/shadow")
            .lines()
            .any(|l| l.starts_with("root:$6$salt$"))
    );
    assert!(
        squashfs_cat(&img, "usr/lib/systemd/system-generators/cairn-data-mounts")
            .contains("labels=\"data\"")
    );
    let ls = Command::new("unsquashfs")
        .arg("-lls")
        .arg(img.join("filesystem.squashfs"))
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.lines()
            .any(|l| l.contains("/var/lib/webtest -> /data/var-lib-webtest")),
        "no data symlink"
    );
    // cairn itself (`cairn = true`): its package, installed by dpkg and
    // in the manifest's packages; no loose copy, no policy-rc.d left, the
    // build host's timer not enabled; the pull unit runs the package's cairn.
    let m = fixture::manifest(&img);
    assert!(
        m["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "cairn" && p["version"] == env!("CARGO_PKG_VERSION")),
        "cairn is not among the image's packages"
    );
    let list = squashfs_cat(&img, "var/lib/dpkg/info/cairn.list");
    assert!(
        list.lines().any(|l| l == "/usr/bin/cairn")
            && list
                .lines()
                .any(|l| l == "/usr/share/man/man1/cairn-mirror-sync.1.gz"),
        "{list}"
    );
    for gone in [
        "/usr/local/bin/cairn",
        "/usr/sbin/policy-rc.d",
        "timers.target.wants/cairn-cycle.timer",
        "/tmp/cairn_",
    ] {
        assert!(!ls.contains(gone), "{gone} in the image");
    }
    assert!(
        squashfs_cat(&img, "usr/lib/systemd/system/cairn-pull.service")
            .contains("\nExecStart=/usr/bin/cairn pull\n")
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("-rw-------") && l.ends_with("/etc/motd")),
        "motd mode"
    );
    assert!(
        ls.lines()
            .any(|l| l.ends_with("squashfs-root/var/lib/apt/lists/lock")
                || l.ends_with("squashfs-root/var/lib/apt/lists"))
    );
    assert!(!ls.contains("/var/cache/apt/pkgcache.bin"));
    assert_eq!(squashfs_cat(&img, "etc/machine-id"), "");
}

/// debootstrap: the suite's own base, then the other suites through apt in
/// a chroot; the result has the same newest kernel, the files and hooks.
#[test]
fn debootstrap_builds_the_same_system() {
    // One core: debootstrap and dpkg in a chroot are one process at a time
    // for most of this proof; a VM proof runs beside it.
    let Some((f, _core)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("debootstrap_builds_the_same_system");
    let store = f.store_copy(w.path());
    let dbr = json(ok(cairn(
        &store,
        &[
            "build",
            f.dbtest.to_str().unwrap(),
            "--host-type",
            "virtual",
            "--json",
        ],
    )));
    assert_eq!(
        dbr["kernel"],
        fixture::manifest(&f.web_img)["kernel"],
        "the debootstrap route did not take -updates/-security"
    );
    let dbi = PathBuf::from(dbr["path"].as_str().unwrap());
    assert_eq!(squashfs_cat(&dbi, "etc/hostname"), "webtest\n");
    assert!(squashfs_cat(&dbi, "etc/hook-ran").starts_with("systemd\t"));
    assert_eq!(
        squashfs_cat(&dbi, "etc/motd"),
        "built by the cairn test suite\n"
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(store.to_str().unwrap()),
        "chroot mounts left behind:\n{mounts}"
    );
    let list = json(ok(cairn(&store, &["image", "list", "--json"])));
    assert_eq!(list["images"].as_array().unwrap().len(), 3, "{list}");
    // Reproducible on this route too: rebuilt three days later by the
    // clock on a hardened host (umask 077, another locale and time zone),
    // the same bytes. (The thread count is the reproducible:: proofs'
    // axis: one thread of lz4's high compression would cost this proof
    // minutes.)
    if !crate::reproducible::need_faketime() {
        return;
    }
    let out = crate::reproducible::cairn_elsewhere(
        &store,
        &[
            "image",
            "rebuild",
            dbi.to_str().unwrap(),
            "--check",
            "--profile",
            f.dbtest.to_str().unwrap(),
            "--json",
        ],
    );
    let r = json(String::from_utf8_lossy(&out.stdout).into_owned());
    assert!(out.status.success(), "{r}\n{}", crate::support::text(&out));
    assert_eq!(r["reproducible"], true, "{r}");
}
