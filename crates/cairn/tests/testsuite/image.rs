//! Image pieces that need neither root nor the network: the six squashfs
//! compressors, signatures checked by a real GRUB (grub-emu), the example
//! profiles.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn::image::squashfs::{Packing, compressor_of, pack};
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
        let packing = Packing::chosen(c, c.levels().map(|r| *r.end()));
        pack(&tree, &out, packing, 2, Some(1_700_000_000)).unwrap();
        assert_eq!(compressor_of(&out).unwrap(), c.name(), "{c:?}");
        let sb = Command::new("unsquashfs")
            .arg("-s")
            .arg(&out)
            .output()
            .unwrap();
        let sb = String::from_utf8_lossy(&sb.stdout);
        assert!(sb.contains("Block size 1048576"), "{c:?}: {sb}");
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
        pack(&tree, &again, packing, 2, Some(1_700_000_000)).unwrap();
        assert_eq!(
            fs::read(&again).unwrap(),
            fs::read(&out).unwrap(),
            "{c:?} is not reproducible"
        );
    }
    assert!(!Compression::Lzma.bootable() && Compression::Xz.bootable());
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
    let out = crate::support::grub_emu(&cfg, d.path(), Path::new("/dev/null"));
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

/// A key that needs a passphrase is refused by `key use` with the reason
/// (cairn signs unattended), not accepted and then failing at every
/// signature; `key generate` says what protects the key it makes.
#[test]
fn a_passphrase_protected_key_is_refused_with_the_reason() {
    if need_tools(&["gpg", "gpgconf"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("gnupg");
    fs::create_dir_all(&home).unwrap();
    fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--pinentry-mode", "loopback"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let made = gpg(&[
        "--passphrase",
        "secret",
        "--quick-gen-key",
        "locked <locked@cairn.invalid>",
        "rsa2048",
        "sign",
        "never",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = cairn(
        &d.path().join("store"),
        &[
            "key",
            "use",
            "locked@cairn.invalid",
            "--gnupg-home",
            home.to_str().unwrap(),
        ],
    );
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(&home)
        .args(["--kill", "gpg-agent"])
        .status();
    let err = crate::support::fails(out);
    assert!(
        err.contains("cannot sign without a passphrase") && err.contains("--passwd"),
        "{err}"
    );
    assert!(!d.path().join("store/keys/signing.json").exists());
    let made = ok(cairn(
        &d.path().join("own"),
        &["key", "generate", "--bits", "2048"],
    ));
    assert!(
        made.contains("protected by file permissions only"),
        "{made}"
    );
}

#[test]
fn example_profiles_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/profiles");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "toml") {
            let p = cairn::profile::load(&e.path())
                .unwrap_or_else(|err| panic!("{}: {err:#}", e.path().display()));
            let want = if p.name == "trixie-server" {
                "trixie"
            } else {
                "bookworm"
            };
            assert_eq!(p.suite, want, "{}", e.path().display());
            n += 1;
        }
    }
    assert_eq!(n, 4);
    // The trixie example is the small server on Debian 13: the same
    // packages, files and data paths, another suite.
    let (t, m) = (
        cairn::profile::load(&dir.join("trixie-server.toml")).unwrap(),
        cairn::profile::load(&dir.join("minimal-server.toml")).unwrap(),
    );
    assert_eq!((t.packages, t.data), (m.packages, m.data));
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
    // Whole 4 KiB blocks, as mksquashfs pads (dm-verity checks whole blocks).
    fs::write(img.join("filesystem.squashfs"), [7u8; 8192]).unwrap();
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
        "veritysetup",
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
/// menu refuses is refused here too, before anything is loaded; a file
/// too large or not a regular file is refused before it is copied.
#[test]
fn kexec_checks_refuse_what_the_menu_refuses() {
    if need_tools(&["gpg", "gpgv", "veritysetup"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, key, other_key) = two_keys(d.path());

    let make = |name: &str| tiny_image(&d.path().join(name), &key);
    let check = |img: &Path, k: &Path| {
        let work = d.path().join("work");
        let _ = fs::remove_dir_all(&work);
        cairn::image::verify::check_boot_files(img, k, &work).map_err(|e| format!("{e:#}"))
    };

    let good = make("good");
    let c = check(&good, &key.public_key).unwrap();
    assert_eq!(c.signed_by, key.fingerprint);
    assert!(
        c.args
            .starts_with("boot=live quiet cairn.image=web/2 cairn.verity=filesystem.squashfs:"),
        "{}",
        c.args
    );
    assert_eq!(fs::read(&c.kernel).unwrap(), b"kernel bytes\n");
    let line = cairn::live::command_line(&c.args, "/images/web/2", "abcd-1234", false, "web-2");
    assert!(
        line.ends_with(" live-media-path=/images/web/2 cairn.boot=abcd-1234 cairn.entry=web-2"),
        "{line}"
    );

    every_tampering_the_menu_refuses_is_refused(d.path(), &key, &other_key, &|img, k, work| {
        cairn::image::verify::check_boot_files(img, k, work).map(drop)
    });
}

/// A soft switch loads neither kernel nor initrd: it checks an image's
/// signed SHA256SUMS, BOOTSUMS and boot.cfg as kexec does, and reads the
/// kernel and initrd once where they lie (no copies), each hashed for the
/// signed BOOTSUMS and streamed to gpgv for its own signature at once. The
/// kernel's header it compares with the running kernel comes from the
/// bytes checked. Each tampering the menu refuses is refused here too.
#[test]
fn a_soft_switch_checks_the_kernel_and_initrd_where_they_lie() {
    if need_tools(&["gpg", "gpgv", "veritysetup"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, key, other_key) = two_keys(d.path());
    let make = |name: &str| tiny_image(&d.path().join(name), &key);
    let work = d.path().join("work");
    let check = |img: &Path, k: &Path| {
        let _ = fs::remove_dir_all(&work);
        cairn::image::verify::check_boot_in_place(img, k, &work).map_err(|e| format!("{e:#}"))
    };

    let good = make("good");
    let c = check(&good, &key.public_key).unwrap();
    assert_eq!(c.signed_by, key.fingerprint);
    assert_eq!(c.kernel_head, b"kernel bytes\n");
    assert!(
        c.args.starts_with("boot=live quiet cairn.image=web/2 "),
        "{}",
        c.args
    );
    for n in ["vmlinuz", "initrd.img"] {
        assert!(!work.join(n).exists(), "{n} is not copied");
    }

    every_tampering_the_menu_refuses_is_refused(d.path(), &key, &other_key, &|img, k, work| {
        cairn::image::verify::check_boot_in_place(img, k, work).map(drop)
    });
}

/// A signature that makes gpgv write without end before it reads a byte
/// of the file (2,000 armor headers it does not know: 100s of KB on its
/// stderr, more than a pipe holds): the soft switch's check, which streams
/// the kernel to gpgv, still ends — it could wait on full pipes for ever.
#[test]
fn a_noisy_signature_does_not_hang_the_streamed_check() {
    if need_tools(&["gpg", "gpgv", "veritysetup"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, key, _) = two_keys(d.path());
    let img = tiny_image(&d.path().join("noisy"), &key);
    let armored = Command::new("gpg")
        .args(["--batch", "--enarmor"])
        .stdin(fs::File::open(img.join("vmlinuz.sig")).unwrap())
        .output()
        .unwrap();
    assert!(armored.status.success());
    let text = String::from_utf8(armored.stdout)
        .unwrap()
        .replace("ARMORED FILE", "SIGNATURE");
    let (first, rest) = text.split_once('\n').unwrap();
    let junk: String = (0..2000)
        .map(|i| format!("Foo{i}: {}\n", "x".repeat(60)))
        .collect();
    fs::write(img.join("vmlinuz.sig"), format!("{first}\n{junk}{rest}")).unwrap();
    // (The hazard is real: gpgv says more than a pipe holds.)
    let said = Command::new("gpgv")
        .arg("--keyring")
        .arg(&key.public_key)
        .arg(img.join("vmlinuz.sig"))
        .arg(img.join("vmlinuz"))
        .output()
        .unwrap();
    assert!(said.stderr.len() > 1 << 16, "{}", said.stderr.len());
    let (tx, rx) = std::sync::mpsc::channel();
    let (pubkey, work) = (key.public_key.clone(), d.path().join("work"));
    std::thread::spawn(move || {
        let r = cairn::image::verify::check_boot_in_place(&img, &pubkey, &work);
        let _ = tx.send(r.map(drop).map_err(|e| format!("{e:#}")));
    });
    let ended = rx.recv_timeout(std::time::Duration::from_secs(120));
    assert!(ended.is_ok(), "the check did not end in 120 s");
}

/// Each tampering of an image's boot files that cairn's menu refuses,
/// tried on a fresh image under `d` and refused by `check` (the kexec
/// check, the soft switch's), which works in the directory it is given.
fn every_tampering_the_menu_refuses_is_refused(
    d: &Path,
    key: &keys::SigningKey,
    other_key: &keys::SigningKey,
    check: &dyn Fn(&Path, &Path, &Path) -> anyhow::Result<()>,
) {
    let make = |name: &str| tiny_image(&d.join(name), key);
    let work = d.join("tamper-work");
    let refused = |img: &Path, k: &Path| -> String {
        let _ = fs::remove_dir_all(&work);
        format!("{:#}", check(img, k, &work).unwrap_err())
    };
    // Signed by another key.
    let err = refused(&make("t-good"), &other_key.public_key);
    assert!(
        err.contains("REFUSING") && err.contains("SHA256SUMS"),
        "{err}"
    );
    // A kernel or initrd changed: its signature fails; signed again (by
    // the key, for other bytes), it still differs from the signed BOOTSUMS.
    for n in ["vmlinuz", "initrd.img"] {
        let t = make(&format!("t-changed-{n}"));
        fs::write(t.join(n), "changed bytes\n").unwrap();
        let err = refused(&t, &key.public_key);
        assert!(
            err.contains("REFUSING") && err.contains(&format!("{n}: signature missing or bad")),
            "{err}"
        );
        keys::sign_file(key, &t.join(n)).unwrap();
        let err = refused(&t, &key.public_key);
        assert!(
            err.contains("REFUSING")
                && err.contains(&format!("{n} differs from the signed BOOTSUMS")),
            "{err}"
        );
    }
    // Their signatures: missing, empty, or another file's.
    let s = make("t-nosig");
    fs::remove_file(s.join("initrd.img.sig")).unwrap();
    let err = refused(&s, &key.public_key);
    assert!(err.contains("initrd.img.sig missing"), "{err}");
    let s = make("t-emptysig");
    fs::write(s.join("vmlinuz.sig"), "").unwrap();
    let err = refused(&s, &key.public_key);
    assert!(
        err.contains("REFUSING") && err.contains("vmlinuz: signature missing or bad"),
        "{err}"
    );
    let s = make("t-swappedsig");
    fs::copy(s.join("boot.cfg.sig"), s.join("initrd.img.sig")).unwrap();
    let err = refused(&s, &key.public_key);
    assert!(
        err.contains("REFUSING") && err.contains("initrd.img: signature missing or bad"),
        "{err}"
    );
    // boot.cfg swapped for one with other arguments, validly signed:
    // BOOTSUMS does not list it.
    let b = make("t-bootcfg");
    let cfg = fs::read_to_string(b.join("boot.cfg")).unwrap();
    fs::write(b.join("boot.cfg"), cfg.replace("quiet", "init=/bin/sh")).unwrap();
    keys::sign_file(key, &b.join("boot.cfg")).unwrap();
    let err = refused(&b, &key.public_key);
    assert!(
        err.contains("REFUSING") && err.contains("boot.cfg differs from the signed BOOTSUMS"),
        "{err}"
    );
    // Another signed image's BOOTSUMS, kernel, initrd and boot.cfg moved in
    // beside this image's SHA256SUMS: each signature holds, the image's
    // signed list does not name that BOOTSUMS.
    let other = make("t-other");
    let mut m = fs::read_to_string(other.join("manifest.json")).unwrap();
    m = m.replace("\"quiet\"", "\"loglevel=7\"");
    fs::write(other.join("manifest.json"), m).unwrap();
    fs::write(other.join("vmlinuz"), "another kernel\n").unwrap();
    cairn::image::seal(&other, key).unwrap();
    let mixed = make("t-mixed");
    for n in ["BOOTSUMS", "vmlinuz", "initrd.img", "boot.cfg"] {
        for f in [n.to_string(), format!("{n}.sig")] {
            fs::copy(other.join(&f), mixed.join(&f)).unwrap();
        }
    }
    let err = refused(&mixed, &key.public_key);
    assert!(
        err.contains("BOOTSUMS is not the one the image's SHA256SUMS lists"),
        "{err}"
    );
    // A BOOTSUMS signed and listed, but naming a file twice (and so not
    // the initrd), or with a sum not in lower-case hex.
    let sum_of = |img: &Path, n: &str| cairn::trust::hash::sha256_file(&img.join(n)).unwrap().1;
    let twice = make("t-twice");
    let (k, c) = (sum_of(&twice, "vmlinuz"), sum_of(&twice, "boot.cfg"));
    resign_bootsums(
        &twice,
        key,
        &format!("{k}  vmlinuz\n{k}  vmlinuz\n{c}  boot.cfg\n"),
    );
    let err = refused(&twice, &key.public_key);
    assert!(err.contains("lists vmlinuz twice"), "{err}");
    let upper = make("t-upper");
    let i = sum_of(&upper, "initrd.img");
    resign_bootsums(
        &upper,
        key,
        &format!(
            "{}  vmlinuz\n{i}  initrd.img\n{c}  boot.cfg\n",
            k.to_uppercase()
        ),
    );
    let err = refused(&upper, &key.public_key);
    assert!(err.contains("not 64 lower-case hex digits"), "{err}");
    // Hostile files on the boot partition: an initrd grown to a sparse
    // terabyte is refused before a byte is read or copied (copies are in
    // RAM), a FIFO in the kernel's place at once (nothing waits for a
    // writer).
    let huge = make("t-huge");
    grow_to_a_sparse_terabyte(&huge.join("initrd.img"));
    let err = refused(&huge, &key.public_key);
    assert!(
        err.contains("initrd.img") && err.contains("larger than"),
        "{err}"
    );
    assert!(!work.join("initrd.img").exists(), "no copy is left");
    let fifo = make("t-fifo");
    replace_with_a_fifo(&fifo.join("vmlinuz"));
    let err = refused(&fifo, &key.public_key);
    assert!(
        err.contains("vmlinuz") && err.contains("not a regular file"),
        "{err}"
    );
}

/// Replaces an image's BOOTSUMS with `content`, signed, and lists it in the
/// image's SHA256SUMS, signed again: what only the key's holder could do.
fn resign_bootsums(img: &Path, key: &keys::SigningKey, content: &str) {
    fs::write(img.join("BOOTSUMS"), content).unwrap();
    keys::sign_file(key, &img.join("BOOTSUMS")).unwrap();
    let sum = cairn::trust::hash::sha256_file(&img.join("BOOTSUMS"))
        .unwrap()
        .1;
    let sums: String = fs::read_to_string(img.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|l| match l.strip_suffix("  BOOTSUMS") {
            Some(_) => format!("{sum}  BOOTSUMS\n"),
            None => format!("{l}\n"),
        })
        .collect();
    fs::write(img.join("SHA256SUMS"), sums).unwrap();
    keys::sign_file(key, &img.join("SHA256SUMS")).unwrap();
}

/// `cairn reboot` takes from the boot partition only what is signed: the
/// menu's entry ids from a grub.cfg whose signature holds, the newest image
/// by its signed manifest (not by the greatest directory name, which anyone
/// who can write the partition picks), and only directories with plain
/// names; a FIFO or a sparse terabyte in an image's place is passed over.
#[test]
fn reboot_reads_only_signed_choices_from_the_boot_partition() {
    if need_tools(&["gpg", "gpgv", "veritysetup"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, key, other_key) = two_keys(d.path());
    let medium = d.path().join("medium");
    let web = medium.join("images/web");
    let set_version = |img: &Path, v: &str, k: &keys::SigningKey| {
        let p = img.join("manifest.json");
        let m = fs::read_to_string(&p)
            .unwrap()
            .replace("\"version\":\"2\"", &format!("\"version\":\"{v}\""));
        fs::write(&p, m).unwrap();
        cairn::image::seal(img, k).unwrap();
    };
    let good = tiny_image(&web.join("20261130T000000Z"), &key);
    set_version(&good, "20261130T000000Z", &key);
    // Sorts after it, but signed by another key.
    let foreign = tiny_image(&web.join("20991231T000000Z"), &key);
    set_version(&foreign, "20991231T000000Z", &other_key);
    // Sorts after it, its manifest says another version.
    let renamed = tiny_image(&web.join("20990101T000000Z"), &key);
    set_version(&renamed, "20261129T000000Z", &key);
    // A name that would reach the kernel command line.
    let st = Command::new("cp")
        .arg("-r")
        .arg(&good)
        .arg(web.join("zz cairn.verity= x"))
        .status()
        .unwrap();
    assert!(st.success());
    // Hostile files where an image's are (the partition's writer chose
    // them): a FIFO nobody writes as SHA256SUMS, and a sparse terabyte as
    // the manifest of an image whose sums are signed. Each is passed over
    // at once: no read waits, nothing is read into memory.
    let fifo = tiny_image(&web.join("20991230T000000Z"), &key);
    replace_with_a_fifo(&fifo.join("SHA256SUMS"));
    let huge = tiny_image(&web.join("20991229T000000Z"), &key);
    set_version(&huge, "20991229T000000Z", &key);
    grow_to_a_sparse_terabyte(&huge.join("manifest.json"));
    let (dir, m) = cairn::live::find_image(&[&medium], None, "web", &key.public_key).unwrap();
    assert_eq!(
        (dir, m.version.as_str()),
        (good.clone(), "20261130T000000Z")
    );
    let err = cairn::live::find_image(
        &[&medium],
        Some("web/20991231T000000Z"),
        "web",
        &key.public_key,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("no signed image web/20991231T000000Z"),
        "{err:#}"
    );

    // The menu's entry for an image: only from a grub.cfg signed by the key.
    let grub = medium.join("boot/grub");
    fs::create_dir_all(&grub).unwrap();
    let cfg = format!(
        "menuentry x {{\n    {}\n}}\n",
        cairn::boot::menu::boot_call(
            "/images/web/20261130T000000Z",
            false,
            "web-20261130T000000Z"
        )
    );
    fs::write(grub.join("grub.cfg"), &cfg).unwrap();
    let sel = |k: &keys::SigningKey| {
        cairn::live::menu_selector(
            &medium,
            "/images/web/20261130T000000Z",
            false,
            &k.public_key,
        )
        .map_err(|e| format!("{e:#}"))
    };
    assert!(sel(&key).unwrap_err().contains("grub.cfg.sig missing"));
    keys::sign_file(&other_key, &grub.join("grub.cfg")).unwrap();
    assert!(sel(&key).unwrap_err().contains("signature missing or bad"));
    keys::sign_file(&key, &grub.join("grub.cfg")).unwrap();
    assert_eq!(sel(&key).unwrap().as_deref(), Some("web-20261130T000000Z"));
    fs::write(grub.join("grub.cfg"), cfg.replace("web-2026", "evil-2026")).unwrap();
    assert!(sel(&key).unwrap_err().contains("signature missing or bad"));
}

/// A bare name is the store's image, never a directory of that name where
/// cairn happens to run (a local user's `/tmp/web/`); a directory is taken
/// when written as a path.
#[test]
fn a_bare_name_is_the_stores_image_never_a_directory_here() {
    if need_tools(&["gpg", "gpgv", "veritysetup"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (store, key, _) = two_keys(d.path());
    let here = d.path().join("here");
    tiny_image(&here.join("web"), &key);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--store")
            .arg(&store)
            .args(args)
            .current_dir(&here)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for args in [
        &["image", "sign", "web"][..],
        &["image", "verify", "web"][..],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} took ./web");
        assert!(
            err.contains("no image \"web\"") && err.contains("./web"),
            "{err}"
        );
    }
    let out = run(&["image", "verify", "./web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A store path that is not UTF-8 is refused with the reason, not a panic.
#[test]
fn a_store_path_that_is_not_utf8_is_refused_with_the_reason() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join(std::ffi::OsStr::from_bytes(b"st\xffore"));
    for args in [
        &["image", "list"][..],
        &["key", "show"][..],
        &["upgrade", "default"][..],
    ] {
        let out = cairn(&store, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("is not UTF-8") && err.contains("--store"),
            "{err}"
        );
    }
}

/// Exit codes tell tampering from an operational error: a changed image is
/// 3 (`image verify`, and a disk refusing it before anything is written),
/// a missing one 1, a wrong command line 2; under --json each is a JSON
/// document on stdout with the same code. `--dry-run` writes no disk.
#[test]
fn tampering_exits_3_an_operational_error_1_a_usage_error_2() {
    if need_tools(&[
        "gpg",
        "gpgv",
        "veritysetup",
        "sfdisk",
        "mkfs.ext4",
        "mkfs.fat",
        "mcopy",
    ]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (store, key, _) = two_keys(d.path());
    let img = tiny_image(&d.path().join("img"), &key);
    let i = img.to_str().unwrap();
    ok(cairn(&store, &["image", "verify", i]));
    // A dry run checks everything and writes nothing.
    let disk = d.path().join("disk.img");
    let plan: serde_json::Value = serde_json::from_str(&ok(cairn(
        &store,
        &[
            "disk",
            "create",
            disk.to_str().unwrap(),
            "--image",
            i,
            "--dry-run",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(plan["schema-version"], 1, "{plan}");
    assert_eq!(plan["dry-run"], true, "{plan}");
    assert_eq!(plan["images"][0], "web/2", "{plan}");
    assert!(!disk.exists(), "a dry run wrote {}", disk.display());
    let leftovers: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("disk"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let mut sq = fs::read(img.join("filesystem.squashfs")).unwrap();
    sq[100] ^= 1;
    fs::write(img.join("filesystem.squashfs"), sq).unwrap();
    let o = cairn(&store, &["image", "verify", i]);
    assert_eq!(o.status.code(), Some(3), "{}", crate::support::text(&o));
    let o = cairn(&store, &["image", "verify", i, "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", crate::support::text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["schema-version"].clone(), r["ok"].clone()),
        (1.into(), false.into()),
        "{r}"
    );
    // A disk refuses the image before writing anything: also 3, as JSON.
    let o = cairn(
        &store,
        &[
            "disk",
            "create",
            disk.to_str().unwrap(),
            "--image",
            i,
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", crate::support::text(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["error"]["kind"], "verification-failed", "{e}");
    assert_eq!(e["error"]["exit-code"], 3, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not verify"),
        "{e}"
    );
    assert!(!disk.exists());
    // Operational: no such image.
    let o = cairn(&store, &["image", "verify", "nosuch", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", crate::support::text(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["error"]["kind"], "failure", "{e}");
    // Usage.
    let o = cairn(&store, &["image", "verify", "--json", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{}", crate::support::text(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["error"]["kind"], "usage", "{e}");
}

/// A file the boot partition's writer grew to a sparse terabyte (no disk
/// space taken).
fn grow_to_a_sparse_terabyte(p: &Path) {
    fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
}

/// A FIFO nobody writes, where the boot partition's writer put it.
fn replace_with_a_fifo(p: &Path) {
    fs::remove_file(p).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}
