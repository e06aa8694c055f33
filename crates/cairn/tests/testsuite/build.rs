//! The build and VM tier: mirror what the profiles need from the host's
//! archive, build signed images, boot the ISO in qemu on BIOS and UEFI and
//! read the marker the booted system prints; a virtual and a physical
//! profile differ in their base packages; a changed byte is named; a killed
//! build leaves nothing behind. Needs root, the network and qemu.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{cairn, fails, heavy, is_root, need_tools, ok, skip, text};

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn boot(store: &Path, media: &Path, firmware: &str) -> serde_json::Value {
    let log = store.join(format!("vm-{firmware}"));
    let out = cairn(
        store,
        &[
            "vm",
            "run",
            media.to_str().unwrap(),
            "--firmware",
            firmware,
            "--accel",
            "tcg",
            "--poweroff",
            "--marker",
            "CAIRN-BOOTED",
            "--timeout",
            "400",
            "--json",
            "--log-dir",
            log.to_str().unwrap(),
        ],
    );
    let v = json(String::from_utf8_lossy(&out.stdout).into_owned());
    assert!(
        out.status.success(),
        "{firmware} boot of {} showed no marker:\n{}\n{}",
        media.display(),
        text(&out),
        fs::read_to_string(log.join("console.log")).unwrap_or_default()
    );
    v
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

fn test_profile(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("files")).unwrap();
    fs::write(dir.join("files/motd"), "built by the cairn test suite\n").unwrap();
    fs::write(dir.join("files/probe"), crate::boot::PROBE).unwrap();
    fs::write(dir.join("files/probe.service"), crate::boot::PROBE_UNIT).unwrap();
    let p = dir.join("webtest.toml");
    fs::write(
        &p,
        "schema-version = 1\nsuite = \"SUITE\"\nhost-type = \"physical\"\nhostname = \"webtest\"\ncairn = true\n\
[root]\npassword-hash = \"$6$salt$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstu\"\n\
[[files]]\nsource = \"files/motd\"\ndest = \"/etc/motd\"\nmode = \"0600\"\n\
[[files]]\nsource = \"files/probe\"\ndest = \"/usr/local/sbin/cairn-probe\"\nmode = \"0755\"\n\
[[files]]\nsource = \"files/probe.service\"\ndest = \"/etc/systemd/system/cairn-probe.service\"\n\
[[hooks]]\nscript = \"chroot \\\"$1\\\" dpkg-query -W systemd > \\\"$1/etc/hook-ran\\\"\"\n\
[[hooks]]\nscript = \"ln -s /etc/systemd/system/cairn-probe.service \\\"$1/etc/systemd/system/multi-user.target.wants/\\\"\"\n\
[[data]]\npath = \"/var/lib/webtest\"\n\
[image]\ncompression = \"lz4\"\n"
            .replace("SUITE", &host_suite()),
    )
    .unwrap();
    p
}

fn host_suite() -> String {
    let repos = cairn::mirror::config::host_repos(Path::new("/")).unwrap();
    repos
        .into_iter()
        .flat_map(|r| r.suites)
        .find(|s| !s.contains('-'))
        .unwrap()
}

#[test]
fn images_build_from_the_local_mirror_sign_verify_and_boot_on_bios_and_uefi() {
    if !is_root() {
        skip("needs root (mmdebstrap, mksquashfs of a root tree)");
        return;
    }
    if need_tools(&[
        "mmdebstrap",
        "mksquashfs",
        "unsquashfs",
        "gpg",
        "gpgv",
        "grub-mkrescue",
        "xorriso",
        "mformat",
        "qemu-system-x86_64",
        "sfdisk",
        "mkfs.fat",
        "mcopy",
        "sbsign",
        "openssl",
        "debootstrap",
        "losetup",
        "mkfs.ext4",
    ]) {
        return;
    }
    if !Path::new(cairn::vm::OVMF_CODE).exists() {
        skip("OVMF is not installed (apt-get install ovmf)");
        return;
    }
    let _heavy = heavy();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = dir.path().join("store");
    let profile = test_profile(dir.path());
    let profile_s = profile.to_str().unwrap();
    // The same system bootstrapped by debootstrap instead of mmdebstrap.
    let db = dir.path().join("dbtest.toml");
    fs::write(
        &db,
        "schema-version = 1\nextends = \"webtest.toml\"\nbootstrap = \"debootstrap\"\n",
    )
    .unwrap();
    let db_s = db.to_str().unwrap();
    // The next version of webtest: one package more, one file less.
    let v2 = dir.path().join("webtest2.toml");
    fs::write(
        &v2,
        "schema-version = 1\nname = \"webtest\"\nextends = \"webtest.toml\"\npackages = [\"less\"]\n\
[[hooks]]\nscript = \"rm -f \\\"$1/etc/issue.net\\\"\"\n",
    )
    .unwrap();
    let v2_s = v2.to_str().unwrap();

    // Before a mirror or a key exists, build says what to do.
    let err = fails(cairn(&store, &["build", "default"]));
    assert!(
        err.contains("no signing key") && err.contains("cairn key generate"),
        "{err}"
    );
    ok(cairn(&store, &["key", "generate", "--bits", "2048"]));
    let err = fails(cairn(&store, &["build", "default"]));
    assert!(
        err.contains("no local mirror serves suite") && err.contains("cairn mirror sync"),
        "{err}"
    );

    // A mirror of the default profile only: the physical profile's kernel and
    // firmware are not in it, and build says which and how to add them.
    ok(cairn(&store, &["mirror", "sync", "--profile", "default"]));
    if cairn::profile::detect_host_type() == cairn::profile::HostType::Virtual {
        let err = fails(cairn(&store, &["build", profile_s]));
        assert!(
            err.contains("the local mirror lacks")
                && err.contains(&format!("cairn mirror sync --profile {profile_s}")),
            "{err}"
        );
    }
    // debootstrap reads one suite: keep every version.
    ok(cairn(
        &store,
        &[
            "mirror",
            "sync",
            "--profile",
            "default",
            "--profile",
            profile_s,
            "--profile",
            db_s,
            "--profile",
            v2_s,
            "--all-versions",
        ],
    ));

    // The default profile, with an ISO.
    let t = Instant::now();
    let r = json(ok(cairn(&store, &["build", "default", "--iso", "--json"])));
    eprintln!("default image built in {:.0}s", t.elapsed().as_secs_f64());
    let version = r["version"].as_str().unwrap().to_string();
    let image = PathBuf::from(r["path"].as_str().unwrap());
    for f in [
        "vmlinuz",
        "initrd.img",
        "filesystem.squashfs",
        "default.module",
        "manifest.json",
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "SHA512SUMS.sig",
        "vmlinuz.sig",
        "initrd.img.sig",
        "default.iso",
    ] {
        assert!(image.join(f).exists(), "{f} missing from the image");
    }
    let v = json(ok(cairn(&store, &["image", "verify", "default", "--json"])));
    assert_eq!(v["ok"], true, "{v}");

    // Boot the ISO: BIOS and UEFI; the booted system names its image.
    let iso = image.join("default.iso");
    let want = format!("CAIRN-BOOTED profile=default version={version}");
    // The ISO on UEFI (BIOS and UEFI through cairn's own GRUB: disks below).
    let b = boot(&store, &iso, "uefi");
    assert_eq!(b["marker_line"], want.as_str(), "{b}");
    eprintln!(
        "ISO on UEFI: marker after {:.1}s (TCG)",
        b["seconds_to_marker"].as_f64().unwrap()
    );

    // One changed byte in the squashfs: verify fails and names it.
    let sq = image.join("filesystem.squashfs");
    let mut data = fs::read(&sq).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&sq, &data).unwrap();
    let out = cairn(&store, &["image", "verify", "default"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BAD filesystem.squashfs: SHA256 mismatch"),
        "{}",
        text(&out)
    );
    data[mid] ^= 0xff;
    fs::write(&sq, &data).unwrap();

    // A build killed in the middle leaves no image and no mounts; the next one cleans up.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--store")
        .arg(&store)
        .args(["--quiet", "build", profile_s])
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
    let versions: Vec<String> = fs::read_dir(&build_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        versions.is_empty(),
        "a killed build left an image: {versions:?}"
    );

    // Physical and virtual builds of the same profile: different base packages.
    let phys = json(ok(cairn(&store, &["build", profile_s, "--json"])));
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
    let virt = json(ok(cairn(
        &store,
        &["build", profile_s, "--host-type", "virtual", "--json"],
    )));
    let pkgs = |r: &serde_json::Value| -> Vec<String> {
        let m = json(
            fs::read_to_string(Path::new(r["path"].as_str().unwrap()).join("manifest.json"))
                .unwrap(),
        );
        m["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (p, v) = (pkgs(&phys), pkgs(&virt));
    for name in ["linux-image-amd64", "firmware-linux-free"] {
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
    assert_eq!(virt["host_type"], "virtual");

    // What the profile asked for is in the tree.
    let img = PathBuf::from(phys["path"].as_str().unwrap());
    assert_eq!(squashfs_cat(&img, "etc/hostname"), "webtest\n");
    assert_eq!(
        squashfs_cat(&img, "etc/motd"),
        "built by the cairn test suite\n"
    );
    assert!(squashfs_cat(&img, "etc/hook-ran").starts_with("systemd\t"));
    assert!(
        squashfs_cat(&img, "etc/shadow")
            .lines()
            .any(|l| l.starts_with("root:$6$salt$"))
    );
    assert!(squashfs_cat(&img, "etc/fstab").contains("LABEL=data /data auto defaults,nofail"));
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

    // debootstrap: the suite's own base, then the other suites through apt in
    // a chroot; the result has the same newest kernel, the files and hooks.
    let dbr = json(ok(cairn(&store, &["build", db_s, "--json"])));
    assert_eq!(
        dbr["kernel"], phys["kernel"],
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
    assert_eq!(list.as_array().unwrap().len(), 4);

    // Boot disks: both profiles on one disk, cairn's GRUB, the proofs.
    let virt_img = PathBuf::from(virt["path"].as_str().unwrap());
    crate::boot::proofs(&store, dir.path(), &image, &virt_img);
    crate::boot::secure_boot(&store, dir.path(), &virt_img);
    crate::boot::upgrades(&store, dir.path(), &profile, &v2, &virt_img);
}
