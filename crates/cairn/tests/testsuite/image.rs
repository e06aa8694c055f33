//! Image pieces that need neither root nor the network: the six squashfs
//! compressors, signatures checked by a real GRUB (grub-emu), the example
//! profiles.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn::image::squashfs::{compressor_of, pack};
use cairn::profile::Compression;
use cairn::trust::keys;

use crate::support::{cairn, need_tools, ok};

#[test]
fn every_compressor_packs_a_tree_that_reads_back_identical() {
    if need_tools(&["mksquashfs", "unsquashfs"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    fs::create_dir_all(tree.join("etc/sub")).unwrap();
    fs::write(tree.join("etc/hostname"), "cairn\n").unwrap();
    fs::write(tree.join("etc/sub/big"), "x".repeat(300_000)).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", tree.join("etc/link")).unwrap();
    for c in Compression::ALL {
        let out = d.path().join(format!("{}.squashfs", c.name()));
        let level = c.levels().map(|r| *r.end());
        pack(&tree, &out, c, level, 2, Some(1_700_000_000)).unwrap();
        assert_eq!(compressor_of(&out).unwrap(), c.name(), "{c:?}");
        let x = d.path().join(format!("x-{}", c.name()));
        let st = Command::new("unsquashfs")
            .arg("-q")
            .arg("-d")
            .arg(&x)
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "unsquashfs {c:?}");
        assert_eq!(
            fs::read(x.join("etc/sub/big")).unwrap(),
            fs::read(tree.join("etc/sub/big")).unwrap()
        );
        assert_eq!(
            fs::read_link(x.join("etc/link")).unwrap(),
            Path::new("../etc/hostname")
        );
        // SOURCE_DATE_EPOCH pins every timestamp: the same tree packs the same.
        let again = d.path().join("again.squashfs");
        pack(&tree, &again, c, level, 2, Some(1_700_000_000)).unwrap();
        assert_eq!(
            fs::read(&again).unwrap(),
            fs::read(&out).unwrap(),
            "{c:?} is not reproducible"
        );
    }
    assert!(!Compression::Lzma.bootable() && Compression::Xz.bootable());
}

/// Runs a grub.cfg in grub-emu (a real GRUB, every module built in) and
/// returns its output.
fn grub_emu(cfg: &str, work: &Path) -> String {
    let emu = work.join("emu");
    let st = Command::new("cp")
        .arg("-r")
        .arg("/usr/lib/grub/x86_64-emu")
        .arg(&emu)
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(emu.join("grub.cfg"), cfg).unwrap();
    fs::write(work.join("device.map"), "(hd0) /dev/null\n").unwrap();
    let out = Command::new("timeout")
        .args(["30", "grub-emu", "-d"])
        .arg(&emu)
        .arg("-m")
        .arg(work.join("device.map"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fs::remove_dir_all(&emu).unwrap();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

#[test]
fn grub_accepts_our_signatures_and_refuses_tampered_or_foreign_ones() {
    if need_tools(&["gpg", "gpgv", "grub-emu"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    ok(cairn(&store, &["key", "generate", "--bits", "2048"]));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(cairn(&store, &["key", "show", "--json"]))).unwrap();
    assert_eq!(shown["algorithm"], "RSA");
    let key = keys::load(&store).unwrap();
    // An existing GnuPG key can sign instead: its secret stays where it is.
    let theirs = d.path().join("theirs");
    let existing = crate::support::key();
    ok(cairn(
        &theirs,
        &[
            "key",
            "use",
            &existing.fpr,
            "--gnupg-home",
            existing.home.to_str().unwrap(),
        ],
    ));
    let used = keys::load(&theirs).unwrap();
    assert_eq!(
        (used.fingerprint.as_str(), used.gnupg_home.as_path()),
        (existing.fpr.as_str(), existing.home.as_path())
    );
    assert_eq!(
        fs::read(&used.public_key).unwrap(),
        fs::read(&existing.keyring).unwrap()
    );
    let mode = fs::metadata(store.join("keys/gnupg"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );

    let files = d.path().join("files");
    fs::create_dir_all(&files).unwrap();
    fs::write(files.join("good"), "kernel bytes\n").unwrap();
    keys::sign_file(&key, &files.join("good")).unwrap();
    fs::write(files.join("tampered"), "kernel bytes\n").unwrap();
    keys::sign_file(&key, &files.join("tampered")).unwrap();
    fs::write(files.join("tampered"), "kernel bytEs\n").unwrap();
    // A signature by another key.
    let other = d.path().join("other");
    ok(cairn(&other, &["key", "generate", "--bits", "2048"]));
    fs::write(files.join("foreign"), "kernel bytes\n").unwrap();
    keys::sign_file(&keys::load(&other).unwrap(), &files.join("foreign")).unwrap();
    // Our own check agrees with GRUB's.
    let work = d.path().join("w");
    fs::create_dir_all(&work).unwrap();
    assert_eq!(
        keys::verify_file(&key.public_key, &files.join("good"), &work).unwrap(),
        key.fingerprint
    );
    assert!(keys::verify_file(&key.public_key, &files.join("tampered"), &work).is_err());
    assert!(keys::verify_file(&key.public_key, &files.join("foreign"), &work).is_err());

    let f = files.display();
    let mut cfg = format!(
        "insmod pgp\ntrust --skip-sig (host){}\n",
        key.public_key.display()
    );
    for n in ["good", "tampered", "foreign"] {
        cfg.push_str(&format!(
            "if verify_detached (host){f}/{n} (host){f}/{n}.sig; then echo \"RESULT {n}=accepted\"; else echo \"RESULT {n}=refused\"; fi\n"
        ));
    }
    cfg.push_str("reboot\n");
    let out = grub_emu(&cfg, d.path());
    for (n, want) in [
        ("good", "accepted"),
        ("tampered", "refused"),
        ("foreign", "refused"),
    ] {
        assert!(
            out.contains(&format!("RESULT {n}={want}")),
            "GRUB on {n}: expected {want}:\n{out}"
        );
    }
}

#[test]
fn example_profiles_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/profiles");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "toml") {
            let p = cairn::profile::load(&e.path())
                .unwrap_or_else(|err| panic!("{}: {err:#}", e.path().display()));
            assert_eq!(p.suite, "bookworm");
            n += 1;
        }
    }
    assert_eq!(n, 3);
    let b = cairn::profile::load(&dir.join("builder.toml")).unwrap();
    let pk = b.all_packages(b.resolved_host_type());
    assert!(
        pk.contains(&"mmdebstrap".to_string()) && pk.contains(&"linux-image-amd64".to_string())
    );
    assert_eq!(b.data[0].path, "/srv/cairn");
}

/// A store with a signing key under `dir`, and another key beside it.
fn two_keys(dir: &Path) -> (std::path::PathBuf, keys::SigningKey, keys::SigningKey) {
    let store = dir.join("store");
    ok(cairn(&store, &["key", "generate", "--bits", "2048"]));
    let other = dir.join("other");
    ok(cairn(&other, &["key", "generate", "--bits", "2048"]));
    let (key, other_key) = (keys::load(&store).unwrap(), keys::load(&other).unwrap());
    (store, key, other_key)
}

/// A sealed image of made-up files (profile `web`, version 2): enough for
/// everything that reads signatures and hashes, nothing that boots.
fn tiny_image(img: &Path, key: &keys::SigningKey) -> std::path::PathBuf {
    fs::create_dir_all(img).unwrap();
    fs::write(img.join("vmlinuz"), "kernel bytes\n").unwrap();
    fs::write(img.join("initrd.img"), "initrd bytes\n").unwrap();
    fs::write(img.join("filesystem.squashfs"), "squashfs bytes\n").unwrap();
    fs::write(
        img.join("manifest.json"),
        r#"{"schema-version":1,"profile":"web","profile-hash":"h","profile-commit":null,"version":"2","suite":"s","architecture":"amd64","host-type":"virtual","kernel":"k","kernel-cmdline":["quiet"],"compression":"zstd","level":null,"bootable":true,"parent":null,"layers":["filesystem.squashfs"],"packages":[],"files":{},"data":[],"built-at":0,"build-seconds":0.0,"signed-by":null,"cairn-version":"0"}"#,
    )
    .unwrap();
    cairn::image::seal(img, key).unwrap();
    img.to_path_buf()
}

/// A disk takes only what its GRUB will boot: an ISO signed by another key
/// is refused before anything is written; one signed with the disk's key
/// gets its entries.
#[test]
fn a_disk_takes_only_isos_signed_with_its_key() {
    if need_tools(&[
        "gpg",
        "gpgv",
        "sfdisk",
        "mkfs.ext4",
        "mkfs.fat",
        "mcopy",
        "grub-mkimage",
    ]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (store, key, other_key) = two_keys(d.path());
    let img = tiny_image(&d.path().join("img"), &key);
    let iso = d.path().join("web.iso");
    fs::write(&iso, "not really an ISO\n").unwrap();
    keys::sign_file(&other_key, &iso).unwrap();
    let disk = d.path().join("disk.img");
    let create = || {
        cairn(
            &store,
            &[
                "disk",
                "create",
                disk.to_str().unwrap(),
                "--image",
                img.to_str().unwrap(),
                "--iso",
                iso.to_str().unwrap(),
                "--data-size",
                "0",
                "--json",
            ],
        )
    };
    let out = create();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("web.iso: only ISOs signed with key") && err.contains(&key.fingerprint),
        "{err}"
    );
    assert!(!disk.exists());
    keys::sign_file(&key, &iso).unwrap();
    let m: serde_json::Value = serde_json::from_str(&ok(create())).unwrap();
    let ids: Vec<&str> = m["menu"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["web-2", "web-2-ram", "isos>iso-web", "isos>iso-web-ram"],
        "{m}"
    );
    assert_eq!(m["menu"]["left_out"], serde_json::json!([]), "{m}");
}

/// `cairn reboot --kexec` loads only what cairn's menu would boot: the same
/// signed files, the same BOOTSUMS, boot.cfg's arguments. Each tampering the
/// menu refuses is refused here too, before anything is loaded.
#[test]
fn kexec_checks_refuse_what_the_menu_refuses() {
    if need_tools(&["gpg", "gpgv"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, key, other_key) = two_keys(d.path());

    let make = |name: &str| tiny_image(&d.path().join(name), &key);
    let check = |img: &Path, k: &Path| {
        let work = d.path().join("work");
        let _ = fs::remove_dir_all(&work);
        cairn::live::check_boot_files(img, k, &work).map_err(|e| format!("{e:#}"))
    };

    let good = make("good");
    let c = check(&good, &key.public_key).unwrap();
    assert_eq!(c.signed_by, key.fingerprint);
    assert!(
        c.args.starts_with(
            "boot=live module=web quiet cairn.image=web/2 cairn.sha256=filesystem.squashfs:"
        ),
        "{}",
        c.args
    );
    assert_eq!(fs::read(&c.kernel).unwrap(), b"kernel bytes\n");
    let line = cairn::live::command_line(&c.args, "/images/web/2", false, "web-2");
    assert!(
        line.ends_with(" live-media-path=/images/web/2 cairn.entry=web-2"),
        "{line}"
    );

    // Signed by another key.
    let err = check(&good, &other_key.public_key).unwrap_err();
    assert!(
        err.contains("REFUSING") && err.contains("SHA256SUMS"),
        "{err}"
    );
    // A kernel byte changed: its signature fails.
    let k = make("kernel");
    fs::write(k.join("vmlinuz"), "kernel bytEs\n").unwrap();
    let err = check(&k, &key.public_key).unwrap_err();
    assert!(err.contains("REFUSING") && err.contains("vmlinuz"), "{err}");
    // boot.cfg swapped for another image's (validly signed, other arguments):
    // BOOTSUMS does not list it.
    let b = make("bootcfg");
    let cfg = fs::read_to_string(b.join("boot.cfg")).unwrap();
    fs::write(b.join("boot.cfg"), cfg.replace("quiet", "init=/bin/sh")).unwrap();
    keys::sign_file(&key, &b.join("boot.cfg")).unwrap();
    let err = check(&b, &key.public_key).unwrap_err();
    assert!(
        err.contains("REFUSING") && err.contains("boot.cfg differs from the signed BOOTSUMS"),
        "{err}"
    );
    // A missing signature.
    let s = make("nosig");
    fs::remove_file(s.join("initrd.img.sig")).unwrap();
    let err = check(&s, &key.public_key).unwrap_err();
    assert!(err.contains("initrd.img.sig missing"), "{err}");
}
