//! The boot tier: cairn disks holding the shared images, booted in qemu
//! (TCG) on BIOS and UEFI through cairn's own GRUB. Each proof is a test of
//! its own (run one by name: `cargo test --test testsuite boot::NAME`) with
//! its own disk; it reads the serial console: the marker the booted system
//! prints, what the `webtest` probe says about its data partition, what
//! GRUB and the initramfs say when they refuse.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fixture::{self, Fixture, id_of, marker_of, version_of};
use crate::support::vm::{Boot, boot};
use crate::support::{cairn, fails, ok};

/// A boot of `disk` that ends at the boot marker (or at `--marker` in
/// `extra`); one boot's base timeout.
fn run(
    f: &Path,
    disk: &Path,
    firmware: &str,
    entry: Option<&str>,
    extra: &[&str],
    name: &str,
) -> Boot {
    boot(f, disk, firmware, entry, extra, name, 400)
}

/// The disk's boot partition mounted (below `at`) for a change made behind
/// cairn's back.
fn mounted(disk: &Path, at: &Path) -> cairn::boot::disk::MountedBoot {
    cairn::boot::disk::MountedBoot::mount(disk, at).unwrap()
}

/// Flips one byte (in its middle) of `rel` on the disk's boot partition.
fn flip(disk: &Path, mnt: &Path, rel: &str) {
    let m = mounted(disk, mnt);
    let p = m.dir.join(rel.trim_start_matches('/'));
    let mid = fs::metadata(&p).unwrap().len() / 2;
    flip_file_at(&p, mid as usize);
}

/// Flips the byte at `at` of `rel` on the disk's boot partition.
fn flip_at(disk: &Path, mnt: &Path, rel: &str, at: usize) {
    let m = mounted(disk, mnt);
    flip_file_at(&m.dir.join(rel.trim_start_matches('/')), at);
}

/// Flips one byte of a file in place (the same blocks, as a bit flip on the
/// medium would be).
fn flip_file_at(p: &Path, at: usize) {
    use std::io::{Read, Seek, Write};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x01;
    f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&b).unwrap();
}

fn grubenv(disk: &Path, mnt: &Path) -> String {
    let m = mounted(disk, mnt);
    String::from_utf8_lossy(&fs::read(m.dir.join("boot/grub/grubenv")).unwrap()).into_owned()
}

/// `cairn disk create DISK --image …` with a small data partition and a
/// one-second menu; returns its --json report.
fn disk(store: &Path, disk: &Path, images: &[&Path], extra: &[&str]) -> serde_json::Value {
    let mut a = vec!["disk", "create", disk.to_str().unwrap()];
    for i in images {
        a.extend(["--image", i.to_str().unwrap()]);
    }
    a.extend(["--timeout", "1", "--json"]);
    if !extra.contains(&"--data-size") {
        a.extend(["--data-size", "64M"]);
    }
    a.extend(extra);
    serde_json::from_str(&ok(cairn(store, &a))).unwrap()
}

/// A disk with both shared images, `default` first.
fn two_image_disk(f: &Fixture, work: &Path, extra: &[&str]) -> PathBuf {
    let d = work.join("disk.img");
    disk(
        &f.store,
        &d,
        &[&f.default_img, &f.web_img],
        &[&["--default", "default"], extra].concat(),
    );
    d
}

/// A directory for `vm run --attach-dir` whose `on-boot.sh` the probe runs:
/// `body` after a `say` that prints `PROBE …` on both serial ports (the
/// second one is marker.log), and `kexec_to IMAGE` saying what
/// `cairn reboot --kexec` printed.
fn on_boot_share(share: &Path, body: &str) {
    fs::create_dir_all(share).unwrap();
    let script = share.join("on-boot.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             say() {{ echo \"PROBE $*\" > /dev/ttyS1; echo \"PROBE $*\" > /dev/console; }}\n\
             kexec_to() {{\n\
             \x20   cairn --store /srv/cairn reboot --kexec \"$1\" > /run/reboot.out 2>&1\n\
             \x20   say \"reboot=$?\"\n\
             \x20   tail -n 5 /run/reboot.out | while read -r l; do say \"reboot-out: $l\"; done\n\
             }}\n{body}"
        ),
    )
    .unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// The image directory of `img` on a disk, `/images/P/V`.
fn dir_on_disk(img: &Path) -> String {
    format!("/images/{}", id_of(img).replacen('-', "/", 1))
}

/// The menu a disk gets: default image first, the other profile as
/// fallback, in-RAM entries; and the default entry boots on BIOS, its
/// squashfs verified in the initramfs.
#[test]
fn disk_default_entry_boots_on_bios() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("disk_default_entry_boots_on_bios");
    let d = w.path().join("disk.img");
    let r = disk(
        &f.store,
        &d,
        &[&f.default_img, &f.web_img],
        &["--default", "default", "--tries", "2"],
    );
    let (d_id, w_id) = (id_of(&f.default_img), id_of(&f.web_img));
    assert_eq!(r["menu"]["default"], d_id.as_str(), "{r}");
    assert_eq!(r["menu"]["fallback"][0], w_id.as_str(), "{r}");
    let ids: Vec<&str> = r["menu"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&format!("{w_id}-ram").as_str()), "{ids:?}");
    // `--accel auto`: KVM if it works on this host, else TCG after a probe.
    let a = run(
        &f.store,
        &d,
        "bios",
        None,
        &["--accel", "auto"],
        "default-bios",
    );
    a.reached(&marker_of(&f.default_img));
    a.console_has("cairn: filesystem.squashfs: mounted through dm-verity");
}

/// The other profile's entry, chosen, on UEFI: the probe's first look at
/// its data partition; then its in-RAM entry on BIOS: the medium is a tmpfs
/// copy, the data partition kept what the first boot wrote, /etc did not;
/// both boots are marked good.
#[test]
fn disk_chosen_entry_on_uefi_keeps_data_and_runs_from_ram() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("disk_chosen_entry_on_uefi_keeps_data_and_runs_from_ram");
    let d = two_image_disk(f, w.path(), &[]);
    let mnt = w.path().join("mnt");
    let w_id = id_of(&f.web_img);
    let want = marker_of(&f.web_img);
    let b = run(&f.store, &d, "uefi", Some(&w_id), &[], "web-uefi");
    b.reached(&want);
    b.markers_have("PROBE data-boots=0");
    b.markers_have("PROBE etc-stamp=absent");
    b.markers_have("PROBE data=ext4");
    b.markers_have("PROBE medium=ext4");
    b.markers_have("PROBE verity=verified");
    // Nothing on the boot partition runs, opens as a device, or is followed.
    let opts = b
        .markers
        .lines()
        .find_map(|l| l.strip_prefix("PROBE medium-opts="))
        .unwrap_or_default()
        .to_string();
    for o in ["ro", "nosuid", "nodev", "noexec", "nosymfollow"] {
        assert!(
            opts.split(',').any(|x| x == o),
            "{o} not in {opts}\n{}",
            b.why()
        );
    }
    b.markers_have("PROBE done");
    let env = grubenv(&d, &mnt);
    assert!(env.contains(&format!("cairn_good={w_id}\n")), "{env}");

    let c = run(
        &f.store,
        &d,
        "bios",
        Some(&format!("{w_id}-ram")),
        &[],
        "web-ram",
    );
    c.reached(&want);
    c.console_has("to RAM");
    c.markers_have("PROBE medium=tmpfs");
    c.markers_have("PROBE data-boots=1");
    c.markers_have("PROBE etc-stamp=absent");
    c.markers_have("PROBE done");
    let env = grubenv(&d, &mnt);
    assert!(env.contains(&format!("cairn_good={w_id}-ram\n")), "{env}");
}

/// Debian 13 (trixie), today's stable release, from the same mirror as the
/// Debian 12 images: its image boots from a disk on UEFI through cairn's
/// GRUB, on its own kernel (6.12), its layer mounted through dm-verity,
/// its data partition mounted; the boot is marked good.
#[test]
fn a_trixie_image_boots_from_a_disk_on_uefi() {
    let Some(f) = fixture::get() else {
        return;
    };
    // (trixie() takes both cores itself while it builds.)
    let t = f.trixie();
    let _core = crate::support::cores::one();
    let w = f.work("a_trixie_image_boots_from_a_disk_on_uefi");
    let d = w.path().join("disk.img");
    disk(&t.store, &d, &[&t.img], &[]);
    let b = run(&t.store, &d, "uefi", None, &[], "trixie-uefi");
    b.reached(&marker_of(&t.img));
    b.markers_have("PROBE kernel=6.12.");
    b.markers_have("PROBE debian=13.");
    b.markers_have("PROBE verity=verified");
    b.markers_have("PROBE data=ext4");
    b.markers_have("PROBE done");
    b.console_has("cairn: filesystem.squashfs: mounted through dm-verity");
    let env = grubenv(&d, &w.path().join("mnt"));
    assert!(
        env.contains(&format!("cairn_good={}\n", id_of(&t.img))),
        "{env}"
    );
}

/// An ISO file on the disk has its entry: the whole ISO checked against its
/// signature, booted by loopback (findiso=), its squashfs checked in the
/// initramfs; the boot is marked good like any entry's.
#[test]
fn iso_file_on_a_disk_boots_and_is_marked_good() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("iso_file_on_a_disk_boots_and_is_marked_good");
    let iso = f.default_img.join("default.iso");
    let d = two_image_disk(f, w.path(), &["--iso", iso.to_str().unwrap()]);
    let r = run(
        &f.store,
        &d,
        "bios",
        Some("isos>iso-default"),
        &[],
        "iso-on-disk",
    );
    r.reached(&marker_of(&f.default_img));
    r.console_has("cairn: /isos/default.iso verified, booting (disk)");
    r.console_has("cairn: filesystem.squashfs: mounted through dm-verity");
    let env = grubenv(&d, &w.path().join("mnt"));
    assert!(env.contains("cairn_good=isos>iso-default\n"), "{env}");
}

/// One byte changed in a block of the squashfs that is read at once (its
/// first): dm-verity refuses the block, the initramfs refuses the entry,
/// names the layer, records the refusal for GRUB and reboots; GRUB then
/// boots the next image instead (the entry is not booted again by default,
/// whatever picks it).
#[test]
fn a_changed_layer_is_refused_and_the_next_image_boots() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_changed_layer_is_refused_and_the_next_image_boots");
    let d = two_image_disk(f, w.path(), &[]);
    let dir = dir_on_disk(&f.default_img);
    flip_at(
        &d,
        &w.path().join("mnt"),
        &format!("{dir}/filesystem.squashfs"),
        2000,
    );
    let d_id = id_of(&f.default_img);
    let s = boot(
        &f.store,
        &d,
        "bios",
        Some(&d_id),
        &["--reboots"],
        "bad-squashfs",
        800,
    );
    s.console_has(&format!(
        "REFUSING TO BOOT default/{} ({dir}): filesystem.squashfs: dm-verity refused its blocks",
        version_of(&f.default_img)
    ));
    s.console_has(&format!("cairn: {d_id} marked refused"));
    s.console_has_wrapped(&format!(
        "cairn: {d_id} was refused at its last boot; booting"
    ));
    s.reached(&marker_of(&f.web_img));
}

/// One byte changed deep inside a layer, in a file the boot does not read:
/// the image boots (nothing is read twice, nothing read ahead), and reading
/// that file is an I/O error — dm-verity never hands out a changed block.
#[test]
fn a_changed_block_deep_in_a_layer_is_an_io_error_never_data() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_changed_block_deep_in_a_layer_is_an_io_error_never_data");
    let d = w.path().join("disk.img");
    disk(&f.store, &d, &[&f.web_img], &[]);
    let mnt = w.path().join("mnt");
    {
        // The test blob is stored uncompressed: find its bytes in the layer.
        let m = mounted(&d, &mnt);
        let sq = m
            .dir
            .join(dir_on_disk(&f.web_img).trim_start_matches('/'))
            .join("filesystem.squashfs");
        let data = fs::read(&sq).unwrap();
        let blob = fixture::blob();
        let needle = &blob[700_000..700_064];
        let at = data
            .windows(needle.len())
            .position(|x| x == needle)
            .expect("the test blob is not stored as it is in the squashfs");
        drop(data);
        flip_file_at(&sq, at + 10);
    }
    let share = w.path().join("share");
    on_boot_share(
        &share,
        r#"if cat /usr/share/cairn-test/blob > /dev/null 2> /run/blob.err; then say "blob=read"; else say "blob=refused $(cat /run/blob.err)"; fi
say "verity-errors=$(dmesg | grep -c 'verity.*corrupted')"
"#,
    );
    let r = run(
        &f.store,
        &d,
        "bios",
        None,
        &["--attach-dir", share.to_str().unwrap()],
        "deep-block",
    );
    r.reached(&marker_of(&f.web_img));
    r.markers_have("PROBE blob=refused");
    r.markers_have("Input/output error");
    assert!(
        !r.markers.contains("PROBE verity-errors=0"),
        "no dm-verity error logged\n{}",
        r.why()
    );
}

/// A squashfs with a unit that would announce itself on both serial ports,
/// as an attacker's layer would run its code.
fn evil_layer(work: &Path) -> PathBuf {
    let tree = work.join("evil-tree");
    let sys = tree.join("etc/systemd/system");
    fs::create_dir_all(sys.join("multi-user.target.wants")).unwrap();
    fs::create_dir_all(tree.join("usr/local/sbin")).unwrap();
    fs::write(
        tree.join("usr/local/sbin/evil"),
        "#!/bin/sh\necho ATTACKER-CODE-RAN > /dev/ttyS1\necho ATTACKER-CODE-RAN > /dev/console\n",
    )
    .unwrap();
    fs::set_permissions(
        tree.join("usr/local/sbin/evil"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::write(
        sys.join("evil.service"),
        "[Unit]\nBefore=cairn-booted.service\n[Service]\nType=oneshot\nExecStart=/usr/local/sbin/evil\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/evil.service",
        sys.join("multi-user.target.wants/evil.service"),
    )
    .unwrap();
    let out = work.join("evil.squashfs");
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&out)
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .unwrap();
    assert!(st.success(), "mksquashfs");
    out
}

/// Attack 1: with write access to the boot partition and no key, an extra
/// layer and live-boot module lists dropped into a signed image's
/// directory. The initramfs mounts only the signed layers and refuses a
/// directory holding anything else, naming it; the next image boots; the
/// attacker's code never runs.
#[test]
fn unsigned_layers_beside_a_signed_image_are_refused_and_never_run() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("unsigned_layers_beside_a_signed_image_are_refused_and_never_run");
    let d = two_image_disk(f, w.path(), &[]);
    let evil = evil_layer(w.path());
    let dir = dir_on_disk(&f.default_img);
    {
        let m = mounted(&d, &w.path().join("mnt"));
        let at = m.dir.join(dir.trim_start_matches('/'));
        fs::copy(&evil, at.join("zz-evil.squashfs")).unwrap();
        let list = "filesystem.squashfs\nzz-evil.squashfs\n";
        fs::write(at.join("filesystem.default.module"), list).unwrap();
        fs::write(at.join("default.module"), list).unwrap();
    }
    let r = boot(
        &f.store,
        &d,
        "bios",
        None,
        &["--reboots"],
        "evil-layer",
        800,
    );
    r.console_has(&format!(
        "({dir}): files no signature covers in the image directory: default.module filesystem.default.module zz-evil.squashfs"
    ));
    r.reached(&marker_of(&f.web_img));
    r.never_shows("ATTACKER-CODE-RAN");
}

/// Attack 2: an image directory copied onto the partition under a name that
/// carries kernel arguments (`cairn.verity=` empty, `live-media-path=` to
/// the attacker's layers), picked by the unsigned `next_entry`. GRUB leaves
/// it out and says why; a signed image boots with its own arguments; the
/// attacker's code never runs.
#[test]
fn a_directory_name_cannot_smuggle_kernel_arguments_into_a_boot() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_directory_name_cannot_smuggle_kernel_arguments_into_a_boot");
    let d = two_image_disk(f, w.path(), &[]);
    let evil = evil_layer(w.path());
    let name = "x cairn.verity= live-media-path=evil y";
    {
        let m = mounted(&d, &w.path().join("mnt"));
        let to = m.dir.join("images/default").join(name);
        let st = Command::new("cp")
            .arg("-r")
            .arg(
                m.dir
                    .join(dir_on_disk(&f.default_img).trim_start_matches('/')),
            )
            .arg(&to)
            .status()
            .unwrap();
        assert!(st.success());
        fs::create_dir_all(m.dir.join("evil")).unwrap();
        fs::copy(&evil, m.dir.join("evil/filesystem.squashfs")).unwrap();
        // The environment block, written by hand as the attacker would.
        let mut b = format!("# GRUB Environment Block\nnext_entry=found>/images/default/{name}\n")
            .into_bytes();
        b.resize(1024, b'#');
        fs::write(m.dir.join("boot/grub/grubenv"), b).unwrap();
    }
    let r = run(&f.store, &d, "bios", None, &[], "smuggled-name");
    r.console_has_wrapped(&format!("cairn: left out /images/default/{name}: its name has characters a kernel command line cannot carry"));
    assert!(
        r.marker
            .as_deref()
            .is_some_and(|m| m.starts_with("CAIRN-BOOTED profile=")),
        "{}",
        r.why()
    );
    r.never_shows("ATTACKER-CODE-RAN");
}

/// Attack 4: a second medium carrying a copy of the boot partition (the
/// same UUID, its signed images and the attacker's additions). The
/// initramfs binds to the partition GRUB checked, finds two with its UUID,
/// and refuses rather than guess which.
#[test]
fn a_copy_of_the_boot_partition_on_another_device_is_refused() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_copy_of_the_boot_partition_on_another_device_is_refused");
    let d = two_image_disk(f, w.path(), &[]);
    let stick = w.path().join("stick.img");
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&d)
        .arg(&stick)
        .status()
        .unwrap();
    assert!(st.success());
    let r = run(
        &f.store,
        &d,
        "bios",
        Some(&id_of(&f.default_img)),
        &["--attach", stick.to_str().unwrap()],
        "uuid-twin",
    );
    assert!(
        r.marker.is_none(),
        "a boot went on beside a twin\n{}",
        r.why()
    );
    r.console_has("devices carry the boot partition's UUID");
}

/// One byte changed in the kernel: GRUB refuses it and boots the next image.
#[test]
fn changed_kernel_is_refused_and_the_next_image_boots() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("changed_kernel_is_refused_and_the_next_image_boots");
    let d = two_image_disk(f, w.path(), &[]);
    let dir = dir_on_disk(&f.default_img);
    flip(&d, &w.path().join("mnt"), &format!("{dir}/vmlinuz"));
    let k = run(&f.store, &d, "bios", None, &[], "bad-vmlinuz");
    k.console_has(&format!("cairn: REFUSING TO BOOT {dir}"));
    k.reached(&marker_of(&f.web_img));
}

/// One byte changed in the initrd: GRUB refuses it (the run stops at the
/// fallback's first line: the fallback itself is the kernel proof's).
#[test]
fn changed_initrd_is_refused() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("changed_initrd_is_refused");
    let d = two_image_disk(f, w.path(), &[]);
    let dir = dir_on_disk(&f.default_img);
    flip(&d, &w.path().join("mnt"), &format!("{dir}/initrd.img"));
    let i = run(
        &f.store,
        &d,
        "bios",
        Some(&id_of(&f.default_img)),
        &["--marker", "cairn: falling back to"],
        "bad-initrd",
    );
    assert!(i.marker.is_some(), "{}", i.why());
    i.console_has(&format!("cairn: REFUSING TO BOOT {dir}: kernel, initrd"));
}

/// One byte changed in grub.cfg: GRUB names the file and its bad signature;
/// nothing boots, the console stays locked.
#[test]
fn changed_grub_cfg_boots_nothing() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("changed_grub_cfg_boots_nothing");
    let d = two_image_disk(f, w.path(), &[]);
    flip(&d, &w.path().join("mnt"), "boot/grub/grub.cfg");
    let g = boot(
        &f.store,
        &d,
        "bios",
        None,
        &["--marker", "Enter username"],
        "bad-grub-cfg",
        120,
    );
    assert!(
        g.marker
            .as_deref()
            .is_some_and(|m| m.starts_with("Enter username")),
        "{}",
        g.why()
    );
    g.console_has("checking the signature of (hd0,gpt3)/boot/grub/grub.cfg");
    g.console_has("error: bad signature");
    for never in ["CAIRN-BOOTED", "signature checks work", "Linux version"] {
        assert!(!g.console.contains(never), "{never}\n{}", g.why());
    }
}

/// Boot counting: a newer image of the default profile that never comes up
/// (no initramfs: the kernel panics and reboots) is tried twice, then GRUB
/// boots the last entry that reported a good boot.
#[test]
fn boot_counting_falls_back_to_the_last_good_image() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("boot_counting_falls_back_to_the_last_good_image");
    let store = f.store_copy(w.path());
    let mnt = w.path().join("mnt");
    let d = w.path().join("disk.img");
    disk(
        &store,
        &d,
        &[&f.default_img, &f.web_img],
        &["--default", "default", "--tries", "2"],
    );
    // A good boot of the other profile first: it is the last good entry
    // (the first fallback would be the default profile's older image).
    let w_id = id_of(&f.web_img);
    let a = run(&store, &d, "bios", Some(&w_id), &[], "counting-first");
    a.reached(&marker_of(&f.web_img));
    let broken = w.path().join("broken");
    fs::create_dir_all(&broken).unwrap();
    for e in fs::read_dir(&f.default_img).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.ends_with(".iso") && !n.ends_with(".sig") {
            fs::copy(e.path(), broken.join(&n)).unwrap();
        }
    }
    let mp = broken.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    let version = format!("{}-broken", m["version"].as_str().unwrap());
    m["version"] = version.clone().into();
    m["kernel-cmdline"]
        .as_array_mut()
        .unwrap()
        .push("panic=2".into());
    fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // An initrd that is no initramfs: the kernel finds no root, panics, and
    // reboots after 2 s — a boot that never comes up, every time.
    fs::write(broken.join("initrd.img"), vec![0u8; 64 * 1024]).unwrap();
    ok(cairn(&store, &["image", "sign", broken.to_str().unwrap()]));
    let added: serde_json::Value = serde_json::from_str(&ok(cairn(
        &store,
        &[
            "disk",
            "add",
            d.to_str().unwrap(),
            broken.to_str().unwrap(),
            "--json",
        ],
    )))
    .unwrap();
    let broken_id = format!("default-{version}");
    assert_eq!(added["default"], broken_id.as_str(), "{added}");
    let env = grubenv(&d, &mnt);
    assert!(
        env.contains(&format!("cairn_trial={broken_id}\n"))
            && env.contains("cairn_left=2\n")
            && env.contains(&format!("cairn_good={w_id}\n")),
        "{env}"
    );
    let t = boot(&store, &d, "bios", None, &["--reboots"], "counting", 700);
    assert_eq!(
        t.console
            .matches(&format!("cairn: trying {broken_id}"))
            .count(),
        2,
        "{}",
        t.why()
    );
    // (GRUB wraps at 80 columns: the entry named is checked by the marker.)
    t.console_has(&format!(
        "{broken_id} never reported a good boot; falling back"
    ));
    t.reached(&marker_of(&f.web_img));
}

/// A certificate and key made here, as a sysadmin's own db/MOK key would be.
pub(crate) fn cert(work: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, crt) = (
        work.join(format!("{name}.key")),
        work.join(format!("{name}.crt")),
    );
    let st = Command::new("openssl")
        .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-days", "3650", "-subj"])
        .arg(format!("/CN=cairn test {name}/"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req");
    (key, crt)
}

/// A one-image disk of `webtest` with GRUB signed for Secure Boot
/// (`boot install`, behind shim with `shim`).
fn sb_disk(f: &Fixture, work: &Path, key: &Path, crt: &Path, shim: bool) -> PathBuf {
    let d = work.join("sb.img");
    disk(&f.store, &d, &[&f.web_img], &["--data-size", "32M"]);
    let mut a = vec![
        "boot",
        "install",
        d.to_str().unwrap(),
        "--secure-boot-key",
        key.to_str().unwrap(),
        "--secure-boot-cert",
        crt.to_str().unwrap(),
    ];
    if shim {
        a.push("--shim");
    }
    let out = ok(cairn(&f.store, &a));
    assert!(
        out.contains(if shim {
            "behind shim"
        } else {
            "signed for Secure Boot"
        }),
        "{out}"
    );
    d
}

/// On a block device (a loop device over a file, as a USB stick would be),
/// `disk create` erases only with --yes.
#[test]
fn disk_create_on_a_block_device_needs_yes() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("disk_create_on_a_block_device_needs_yes");
    let file = w.path().join("stick.img");
    fs::File::create(&file).unwrap().set_len(1 << 30).unwrap();
    let lo = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        lo.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&lo.stderr)
    );
    let dev = String::from_utf8_lossy(&lo.stdout).trim().to_string();
    let i = f.web_img.to_str().unwrap();
    let refused = cairn(&f.store, &["disk", "create", &dev, "--image", i]);
    let made = cairn(
        &f.store,
        &[
            "disk",
            "create",
            &dev,
            "--image",
            i,
            "--timeout",
            "1",
            "--data-size",
            "32M",
            "--yes",
        ],
    );
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    let err = fails(refused);
    assert!(err.contains("would be erased: confirm with --yes"), "{err}");
    ok(made);
    let parts = Command::new("sfdisk")
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&parts.stdout);
    assert!(
        t.contains("\"cairn-boot\"") && t.contains("\"data\""),
        "{t}"
    );
}

/// Secure Boot with only your key in the firmware (PK, KEK, db): a GRUB not
/// signed for it is refused by the firmware; `boot install
/// --secure-boot-key` signs it and the image boots. There `cairn reboot
/// --kexec` (dry run) finds the locked-down kernel refusing Debian's kernel
/// — only your key is trusted — and plans a firmware reboot, saying why.
#[test]
fn secure_boot_with_your_own_key() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("secure_boot_with_your_own_key");
    let (key, crt) = cert(w.path(), "db");
    let own = ["--secure-boot", "--own-cert", crt.to_str().unwrap()];
    let unsigned = w.path().join("unsigned.img");
    disk(&f.store, &unsigned, &[&f.web_img], &["--data-size", "32M"]);
    let u = boot(
        &f.store,
        &unsigned,
        "uefi",
        None,
        &[&own[..], &["--marker", "BdsDxe: No bootable option"]].concat(),
        "secure-boot-unsigned",
        120,
    );
    u.console_has("Access Denied");
    assert!(!u.console.contains("GRUB"), "{}", u.why());

    let d = sb_disk(f, w.path(), &key, &crt, false);
    let share = w.path().join("share");
    on_boot_share(
        &share,
        &format!(
            r#"cairn --store /srv/cairn reboot --kexec --dry-run --json webtest/{v} > /run/plan.json 2> /run/plan.err
say "dry-run=$? $(tr -d '\n' < /run/plan.json | grep -o '"method": *"[a-z]*"')"
grep -q 'this kernel is locked down (Secure Boot)' /run/plan.err && say "kexec refused: locked down"
"#,
            v = version_of(&f.web_img)
        ),
    );
    let a = [&own[..], &["--attach-dir", share.to_str().unwrap()]].concat();
    let r = run(&f.store, &d, "uefi", None, &a, "secure-boot");
    r.reached(&marker_of(&f.web_img));
    r.console_has("secureboot: Secure boot enabled");
    r.markers_have("PROBE dry-run=0 \"method\": \"reboot\"");
    r.markers_have("PROBE kexec refused: locked down");
}

/// Secure Boot with Microsoft's keys and yours in shim's MOK list: the image
/// boots behind shim, and `cairn reboot --kexec` works under the kernel's
/// lockdown (kexec_file_load: Debian's kernel signature is trusted through
/// shim's certificate); the new kernel is locked down too.
#[test]
fn secure_boot_behind_shim_and_kexec_locked_down() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("secure_boot_behind_shim_and_kexec_locked_down");
    let (key, crt) = cert(w.path(), "mok");
    let d = sb_disk(f, w.path(), &key, &crt, true);
    let share = w.path().join("share");
    on_boot_share(
        &share,
        &format!(
            r#"if grep -q BOOT_IMAGE= /proc/cmdline; then
    say "from-grub lockdown=$(cat /sys/kernel/security/lockdown)"
    kexec_to webtest/{v}
else
    say "kexecd lockdown=$(cat /sys/kernel/security/lockdown)"
fi
"#,
            v = version_of(&f.web_img)
        ),
    );
    let r = run(
        &f.store,
        &d,
        "uefi",
        None,
        &[
            "--secure-boot",
            "--mok-cert",
            crt.to_str().unwrap(),
            "--attach-dir",
            share.to_str().unwrap(),
            "--marker",
            "PROBE kexecd",
        ],
        "secure-boot-shim-kexec",
    );
    let locked = "lockdown=none [integrity] confidentiality";
    r.markers_have(&format!("PROBE from-grub {locked}"));
    r.markers_have(&format!("PROBE kexecd {locked}"));
    r.console_has("secureboot: Secure boot enabled");
    r.console_has("kexec_core: Starting new kernel");
}

/// Another certificate in the MOK list: shim refuses cairn's GRUB (and
/// waits in MokManager: the run ends at its timeout).
#[test]
fn secure_boot_shim_refuses_grub_signed_by_another_key() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("secure_boot_shim_refuses_grub_signed_by_another_key");
    let (key, crt) = cert(w.path(), "mok");
    let (_, other) = cert(w.path(), "other");
    let d = sb_disk(f, w.path(), &key, &crt, true);
    let r = boot(
        &f.store,
        &d,
        "uefi",
        None,
        &[
            "--secure-boot",
            "--mok-cert",
            other.to_str().unwrap(),
            "--marker",
            "never",
        ],
        "secure-boot-shim-other",
        60,
    );
    r.console_has("Verification failed: (0x1A) Security Violation");
    assert!(!r.console.contains("cairn: "), "{}", r.why());
}

/// A `cairn vm run` killed outright (SIGKILL: no cleanup runs) takes its
/// VM with it: qemu is bound to cairn's life (parent-death signal).
#[test]
fn a_killed_vm_run_leaves_no_vm_running() {
    let Some((f, _heavy)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("a_killed_vm_run_leaves_no_vm_running");
    let d = w.path().join("disk.img");
    disk(&f.store, &d, &[&f.web_img], &[]);
    let log = w.path().join("vm");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--store")
        .arg(&f.store)
        .args(["--quiet", "vm", "run"])
        .arg(&d)
        .args([
            "--accel",
            "tcg",
            "--marker",
            "never",
            "--timeout",
            "600",
            "--log-dir",
        ])
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let console = log.join("console.log");
    let t = std::time::Instant::now();
    while fs::metadata(&console).map_or(0, |m| m.len()) == 0 {
        assert!(t.elapsed().as_secs() < 120, "the VM never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let qemus = || -> Vec<u32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with("qemu-system") && c.contains(log.to_str().unwrap())
                })
            })
            .collect()
    };
    assert_eq!(qemus().len(), 1, "one VM runs");
    child.kill().unwrap();
    child.wait().unwrap();
    let t = std::time::Instant::now();
    while !qemus().is_empty() {
        assert!(
            t.elapsed().as_secs() < 10,
            "qemu outlived the killed cairn: {:?}",
            qemus()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
