//! Network boot, proven in VMs: `cairn netboot` writes GRUB and the signed
//! menu into the store, Debian's nginx serves the store on 127.0.0.1
//! (10.0.2.2 in the guest), qemu's user network answers DHCP and TFTP (a
//! DHCP broadcast never leaves it: dnsmasq cannot serve these guests, see
//! docs/netboot.md). GRUB checks every file it loads over HTTP as on a disk;
//! the initramfs fetches the signed layers into RAM and checks every block
//! before mounting them. Each proof is a test of its own
//! (`cargo test --test testsuite netboot::NAME`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fixture::{self, marker_of, version_of};
use crate::support::nginx::{Nginx, free_port};
use crate::support::vm::{Boot, boot};
use crate::support::{cairn, ok};

/// A store in `work` holding the signing key and the given images only
/// (hard links: a file a test changes is copied first, see `tamper`).
fn store_with(from: &Path, work: &Path, images: &[&Path]) -> PathBuf {
    let to = work.join("store");
    fs::create_dir_all(&to).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(from.join("keys"))
        .arg(&to)
        .status()
        .unwrap();
    assert!(st.success());
    for img in images {
        add_image(&to, img);
    }
    to
}

fn add_image(store: &Path, img: &Path) {
    let profile = img.parent().unwrap().file_name().unwrap();
    let dir = store.join("images").join(profile);
    fs::create_dir_all(&dir).unwrap();
    let st = Command::new("cp")
        .arg("-al")
        .arg(img)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "copying {}", img.display());
}

/// Changes one byte in the middle of `file` (its own copy, not the
/// fixture's hard-linked original).
fn tamper(file: &Path) {
    let mut data = fs::read(file).unwrap();
    let at = data.len() / 2;
    data[at] ^= 0x55;
    let tmp = file.with_extension("tampered");
    fs::write(&tmp, data).unwrap();
    fs::rename(&tmp, file).unwrap();
}

/// Writes the store's netboot/ for a server on `port` (10.0.2.2 in a VM).
fn netboot(store: &Path, port: u16) -> serde_json::Value {
    let out = ok(cairn(
        store,
        &[
            "netboot",
            "--url",
            &format!("http://10.0.2.2:{port}/"),
            "--timeout",
            "1",
            "--json",
        ],
    ));
    serde_json::from_str(&out).unwrap()
}

fn net_boot(store: &Path, firmware: &str, marker: &str, name: &str) -> Boot {
    let dir = store.join("netboot");
    boot(
        store,
        Path::new(""),
        firmware,
        None,
        &["--netboot", dir.to_str().unwrap(), "--marker", marker],
        name,
        600,
    )
}

/// One BIOS and one UEFI machine netboot the same signed image at the same
/// time from one nginx: both reach its marker, both fetched its layer and
/// checked every block before mounting it.
#[test]
fn bios_and_uefi_machines_netboot_the_same_image_at_once() {
    let Some((f, _heavy)) = fixture::begin() else {
        return;
    };
    let w = f.work("bios_and_uefi_machines_netboot_the_same_image_at_once");
    let store = store_with(&f.store, w.path(), &[&f.web_img]);
    let port = free_port();
    let r = netboot(&store, port);
    assert_eq!(
        r["default"],
        format!("webtest-{}-ram", version_of(&f.web_img)),
        "{r}"
    );
    let nginx = Nginx::start(&store, port, "");
    let want = marker_of(&f.web_img);
    let (bios, uefi) = std::thread::scope(|s| {
        let b = s.spawn(|| net_boot(&store, "bios", &want, "net-bios"));
        let u = s.spawn(|| net_boot(&store, "uefi", &want, "net-uefi"));
        (b.join().unwrap(), u.join().unwrap())
    });
    for b in [&bios, &uefi] {
        b.reached(&want);
        b.console_has("cairn: signature checks work");
        b.console_has("verified, booting over the network (in RAM)");
        b.console_has("filesystem.squashfs: fetched; every block matches its signed root hash");
        b.console_has("filesystem.squashfs: mounted through dm-verity");
    }
    let layer = format!(
        "/images/webtest/{}/filesystem.squashfs",
        version_of(&f.web_img)
    );
    let hits = nginx.hits();
    assert_eq!(
        hits.iter()
            .filter(|h| h.path == layer && h.status == 200)
            .count(),
        2,
        "each machine fetches the layer once: {hits:?}"
    );
    assert!(
        !hits.iter().any(|h| h.path.starts_with("/keys")),
        "{hits:?}"
    );
}

/// One byte of the kernel changed on the server: GRUB refuses the image
/// (its signature, the signed BOOTSUMS) and says so; nothing boots.
#[test]
fn a_kernel_changed_on_the_server_is_refused_by_grub() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_kernel_changed_on_the_server_is_refused_by_grub");
    let store = store_with(&f.store, w.path(), &[&f.web_img]);
    let v = version_of(&f.web_img);
    let port = free_port();
    netboot(&store, port);
    // Changed on the server after it was published.
    tamper(&store.join("images/webtest").join(&v).join("vmlinuz"));
    let _nginx = Nginx::start(&store, port, "");
    let b = net_boot(
        &store,
        "bios",
        "cairn: no image passed its checks",
        "net-bad-kernel",
    );
    b.reached("cairn: no image passed its checks");
    b.console_has(&format!("cairn: REFUSING TO BOOT /images/webtest/{v}"));
    assert!(
        !b.console.contains("booting over the network"),
        "{}",
        b.why()
    );
}

/// One byte of a layer changed on the server: GRUB has nothing to check
/// there (the layers are the initramfs's); the initramfs fetches it,
/// checks every block against the signed root hash and refuses, naming the
/// layer, before anything is mounted.
#[test]
fn a_layer_changed_on_the_server_is_refused_by_the_initramfs() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_layer_changed_on_the_server_is_refused_by_the_initramfs");
    let store = store_with(&f.store, w.path(), &[&f.web_img]);
    let v = version_of(&f.web_img);
    let port = free_port();
    netboot(&store, port);
    // Changed on the server after it was published.
    tamper(
        &store
            .join("images/webtest")
            .join(&v)
            .join("filesystem.squashfs"),
    );
    let _nginx = Nginx::start(&store, port, "");
    let b = net_boot(&store, "bios", "cairn: REFUSING TO BOOT", "net-bad-layer");
    assert!(
        b.marker.as_deref().is_some_and(
            |m| m.contains("filesystem.squashfs: fetched, but it differs from what was signed")
        ),
        "{}",
        b.why()
    );
    assert!(
        !b.console.contains("mounted through dm-verity"),
        "{}",
        b.why()
    );
}

/// The hash tree's superblock is not covered by the signed root hash: a
/// server that lowers its block count keeps the root hash and cuts the
/// layer's end off the device dm-verity serves. The initramfs refuses it
/// (the device must be the whole file) before anything is read or mounted.
#[test]
fn a_hash_tree_claiming_fewer_blocks_is_refused_by_the_initramfs() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_hash_tree_claiming_fewer_blocks_is_refused_by_the_initramfs");
    let store = store_with(&f.store, w.path(), &[&f.web_img]);
    let v = version_of(&f.web_img);
    let port = free_port();
    netboot(&store, port);
    let tree = store
        .join("images/webtest")
        .join(&v)
        .join("filesystem.squashfs.verity");
    let mut t = fs::read(&tree).unwrap();
    assert_eq!(&t[..8], b"verity\0\0", "a dm-verity superblock");
    // data_blocks, little-endian, at byte 72 of the superblock.
    let n = u64::from_le_bytes(t[72..80].try_into().unwrap());
    t[72..80].copy_from_slice(&(n - 1).to_le_bytes());
    let tmp = tree.with_extension("tampered");
    fs::write(&tmp, &t).unwrap();
    fs::rename(&tmp, &tree).unwrap();
    let _nginx = Nginx::start(&store, port, "");
    let b = net_boot(&store, "bios", "cairn: REFUSING TO BOOT", "net-short-tree");
    let want = format!(
        "filesystem.squashfs: fetched, but it differs from what was signed \
         (its hash tree covers {} bytes of {})",
        (n - 1) * 4096,
        n * 4096
    );
    assert!(
        b.marker.as_deref().is_some_and(|m| m.contains(&want)),
        "{want}\n{}",
        b.why()
    );
    for never in ["every block matches", "mounted through dm-verity"] {
        assert!(!b.console.contains(never), "{never}\n{}", b.why());
    }
}

/// The menu follows the store: a machine netboots v1; v2 (a delta: two
/// layers fetched) is added and `cairn netboot` run again, the next boot
/// takes v2; v2 withdrawn, the next boot is v1 again.
#[test]
fn the_next_boot_takes_what_the_server_offers_now() {
    let Some(f) = fixture::get() else {
        return;
    };
    // (upgraded() takes both cores itself while it makes the delta.)
    let u = f.upgraded();
    let _core = crate::support::cores::one();
    let w = f.work("the_next_boot_takes_what_the_server_offers_now");
    let store = store_with(&u.store, w.path(), &[&u.parent]);
    let port = free_port();
    let _nginx = Nginx::start(&store, port, "");
    let (v1, v2) = (version_of(&u.parent), version_of(&u.delta));
    netboot(&store, port);
    let want1 = marker_of(&u.parent);
    net_boot(&store, "bios", &want1, "net-v1").reached(&want1);
    add_image(&store, &u.delta);
    let r = netboot(&store, port);
    assert_eq!(r["default"], format!("webtest-{v2}-ram"), "{r}");
    let want2 = marker_of(&u.delta);
    let b2 = net_boot(&store, "bios", &want2, "net-v2");
    b2.reached(&want2);
    b2.console_has(&format!(
        "{}: fetched; every block matches its signed root hash",
        u.delta_layer()
    ));
    fs::remove_dir_all(store.join("images/webtest").join(&v2)).unwrap();
    let r = netboot(&store, port);
    assert_eq!(r["default"], format!("webtest-{v1}-ram"), "{r}");
    net_boot(&store, "bios", &want1, "net-v1-again").reached(&want1);
}

/// The dnsmasq configuration `cairn netboot --dnsmasq-config` prints,
/// run by Debian's dnsmasq on the loopback interface: its TFTP serves
/// exactly the GRUB files cairn wrote. (A VM on qemu's user network cannot
/// reach it — its DHCP and TFTP are qemu's — so the VM proofs use qemu's.)
#[test]
fn dnsmasq_serves_the_grub_files_with_the_printed_configuration() {
    if crate::support::need_tools(&["dnsmasq", "curl"]) {
        return;
    }
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("dnsmasq_serves_the_grub_files_with_the_printed_configuration");
    let store = store_with(&f.store, w.path(), &[&f.web_img]);
    netboot(&store, 8080);
    let conf = w.path().join("dnsmasq.conf");
    fs::write(
        &conf,
        ok(cairn(&store, &["netboot", "--dnsmasq-config", "127.0.0.0"])),
    )
    .unwrap();
    let log = w.path().join("dnsmasq.log");
    let mut child = Command::new("dnsmasq")
        .arg(format!("--conf-file={}", conf.display()))
        .args([
            "--keep-in-foreground",
            "--interface=lo",
            "--bind-interfaces",
            "--user=root",
        ])
        .arg(format!(
            "--pid-file={}",
            w.path().join("dnsmasq.pid").display()
        ))
        .arg(format!("--log-facility={}", log.display()))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("starting dnsmasq");
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(&mut child);
    for file in ["core.0", "grubx64.efi"] {
        let mut got = None;
        for _ in 0..50 {
            let out = Command::new("curl")
                .args(["-sf", &format!("tftp://127.0.0.1/{file}")])
                .output()
                .unwrap();
            if out.status.success() {
                got = Some(out.stdout);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let got = got.unwrap_or_else(|| {
            panic!(
                "no {file} over TFTP: {}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
        assert_eq!(
            got,
            fs::read(store.join("netboot").join(file)).unwrap(),
            "{file}"
        );
    }
    // Nothing but netboot/ is reachable: not the key, not an image
    // (--path-as-is: curl would otherwise drop the `..` itself).
    let out = Command::new("curl")
        .args([
            "-sf",
            "--path-as-is",
            "tftp://127.0.0.1/../keys/signing.json",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "dnsmasq served a file outside its root"
    );
}

/// A server replaying an earlier signed menu (another default, an older
/// MAC map): GRUB, made by the later `cairn netboot` run, refuses a menu
/// older than itself, before any entry.
#[test]
fn a_replayed_older_menu_is_refused_by_grub() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_replayed_older_menu_is_refused_by_grub");
    let store = store_with(&f.store, w.path(), &[&f.web_img]);
    let port = free_port();
    let first = netboot(&store, port);
    let dir = store.join("netboot");
    let old_cfg = fs::read(dir.join("grub.cfg")).unwrap();
    let old_sig = fs::read(dir.join("grub.cfg.sig")).unwrap();
    let second = netboot(&store, port);
    assert!(
        second["generation"].as_u64() > first["generation"].as_u64(),
        "{first} {second}"
    );
    fs::write(dir.join("grub.cfg"), old_cfg).unwrap();
    fs::write(dir.join("grub.cfg.sig"), old_sig).unwrap();
    let _nginx = Nginx::start(&store, port, "");
    let b = net_boot(
        &store,
        "bios",
        "cairn: a replayed menu",
        "net-replayed-menu",
    );
    assert!(
        b.marker
            .as_deref()
            .is_some_and(|m| m.ends_with("): not booted")),
        "{}",
        b.why()
    );
    assert!(!b.console.contains("verified, booting"), "{}", b.why());
}

/// Under Secure Boot with only your own key in db, a UEFI machine
/// netboots GRUB signed with that key (`cairn netboot --secure-boot-key`),
/// and the kernel runs locked down, as from a disk. (Behind shim, qemu's
/// TFTP is not enough: see docs/netboot.md.)
#[test]
fn a_secure_boot_machine_netboots_grub_signed_with_your_key() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_secure_boot_machine_netboots_grub_signed_with_your_key");
    let store = store_with(&f.store, w.path(), &[&f.web_img]);
    let (key, crt) = crate::boot::cert(w.path(), "db");
    let port = free_port();
    ok(cairn(
        &store,
        &[
            "netboot",
            "--url",
            &format!("http://10.0.2.2:{port}/"),
            "--timeout",
            "1",
            "--secure-boot-key",
            key.to_str().unwrap(),
            "--secure-boot-cert",
            crt.to_str().unwrap(),
        ],
    ));
    let _nginx = Nginx::start(&store, port, "");
    let want = marker_of(&f.web_img);
    let dir = store.join("netboot");
    let b = boot(
        &store,
        Path::new(""),
        "uefi",
        None,
        &[
            "--netboot",
            dir.to_str().unwrap(),
            "--marker",
            &want,
            "--secure-boot",
            "--own-cert",
            crt.to_str().unwrap(),
        ],
        "net-secure-boot",
        600,
    );
    b.reached(&want);
    b.console_has("secureboot: Secure boot enabled");
    b.console_has("filesystem.squashfs: fetched; every block matches its signed root hash");
}

/// A machine picked by its MAC address in the signed menu: qemu's first
/// NIC (52:54:00:12:34:56) is mapped to `trixietest`, every other machine
/// boots `webtest`; this UEFI machine boots the Debian 13 (trixie) image
/// over the network — its kernel 6.12, its layer fetched and mounted
/// through dm-verity — with no per-machine signing.
#[test]
fn a_machine_boots_the_profile_its_mac_address_is_given() {
    let Some(f) = fixture::get() else {
        return;
    };
    // (trixie() takes both cores itself while it builds.)
    let t = f.trixie();
    let _core = crate::support::cores::one();
    let w = f.work("a_machine_boots_the_profile_its_mac_address_is_given");
    let store = store_with(&f.store, w.path(), &[&f.web_img, &t.img]);
    let port = free_port();
    let out = ok(cairn(
        &store,
        &[
            "netboot",
            "--url",
            &format!("http://10.0.2.2:{port}/"),
            "--timeout",
            "1",
            "--default",
            "webtest",
            "--machine",
            "52:54:00:12:34:56=trixietest",
            "--json",
        ],
    ));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        r["default"],
        format!("webtest-{}-ram", version_of(&f.web_img)),
        "{r}"
    );
    let _nginx = Nginx::start(&store, port, "");
    let want = marker_of(&t.img);
    let b = net_boot(&store, "uefi", &want, "net-by-mac");
    b.reached(&want);
    b.console_has(&format!(
        "cairn: trixietest {} verified, booting over the network",
        version_of(&t.img)
    ));
    b.console_has("filesystem.squashfs: fetched; every block matches its signed root hash");
    b.console_has("filesystem.squashfs: mounted through dm-verity");
    b.markers_have("PROBE kernel=6.12.");
    b.markers_have("PROBE debian=13.");
    b.markers_have("PROBE verity=verified");
}
