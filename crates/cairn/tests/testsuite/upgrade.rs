//! The upgrade tier: delta layers on the shared `webtest` image, their
//! compaction, a delta copied onto a disk by hand and booted, the menu
//! taking it in, `apply-live` and `reboot --kexec` on a running system, and
//! retention. Each proof is a test of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fixture::{self, marker_of, version_of};
use crate::support::vm::boot;
use crate::support::{cairn, ok};

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn mounted(disk: &Path, at: &Path) -> cairn::boot::disk::MountedBoot {
    cairn::boot::disk::MountedBoot::mount(disk, at).unwrap()
}

fn grubenv(disk: &Path, mnt: &Path) -> String {
    let m = mounted(disk, mnt);
    String::from_utf8_lossy(&fs::read(m.dir.join("boot/grub/grubenv")).unwrap()).into_owned()
}

/// A disk holding only `img` (and a data partition).
fn disk_of(store: &Path, disk: &Path, img: &Path) {
    ok(cairn(
        store,
        &[
            "disk",
            "create",
            disk.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--data-size",
            "32M",
            "--timeout",
            "1",
        ],
    ));
}

/// Boots `disk` from `entry` with `script` as the attached store's
/// on-boot.sh (run by the image's probe at every boot), until the boot
/// marker of `u`'s delta.
fn boot_into_delta(
    u: &fixture::Upgraded,
    disk: &Path,
    firmware: &str,
    entry: &str,
    share: &Path,
    script: &str,
    name: &str,
) -> crate::support::vm::Boot {
    let on_boot = share.join("on-boot.sh");
    fs::write(&on_boot, script).unwrap();
    fs::set_permissions(
        &on_boot,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let want = marker_of(&u.delta);
    boot(
        &u.store,
        disk,
        firmware,
        Some(entry),
        &["--attach-dir", share.to_str().unwrap(), "--marker", &want],
        name,
        600,
    )
}

/// `cp -r` of an image directory onto the disk's boot partition, as a
/// sysadmin would copy one by hand.
fn copy_onto(disk: &Path, mnt: &Path, img: &Path, rel: &str) {
    let m = mounted(disk, mnt);
    let st = Command::new("cp")
        .arg("-r")
        .arg(img)
        .arg(m.dir.join(rel.trim_start_matches('/')))
        .status()
        .unwrap();
    assert!(st.success());
}

/// Nothing changed since the image was built: no image. Forced upgrades
/// stack delta layers until a fifth would be needed: then the image is
/// flattened into one layer again.
#[test]
fn upgrades_stack_deltas_and_compact_past_four_layers() {
    // One core: upgrades are apt and dpkg in a chroot, one process at a
    // time for most of their time.
    let Some((f, _core)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("upgrades_stack_deltas_and_compact_past_four_layers");
    let store = f.store_copy(w.path());
    let up = |force: bool| -> serde_json::Value {
        let mut a = vec!["upgrade", f.webtest.to_str().unwrap(), "--json"];
        if force {
            a.push("--force");
        }
        json(ok(cairn(&store, &a)))
    };
    let none = up(false);
    assert!(none["version"].is_null(), "{none}");
    let mut depths = Vec::new();
    let mut last = serde_json::Value::Null;
    for _ in 0..4 {
        last = up(true);
        depths.push(last["layers"].as_array().unwrap().len());
    }
    assert_eq!(depths, [2, 3, 4, 1], "{last}");
    assert!(
        last["compacted_because"]
            .as_str()
            .is_some_and(|c| c.contains("5 layers")),
        "{last}"
    );
    let v = json(ok(cairn(
        &store,
        &["image", "verify", last["path"].as_str().unwrap(), "--json"],
    )));
    assert_eq!(v["ok"], true, "{v}");
}

/// The next profile version (one package more, one file less) becomes a
/// small delta layer on the latest image; it verifies, and `image diff`
/// names the new package.
#[test]
fn a_delta_layer_carries_only_what_changed() {
    let Some(f) = fixture::get() else {
        return;
    };
    let u = f.upgraded();
    let _heavy = crate::support::heavy();
    let r = &u.report;
    assert_eq!(r["layer"], "delta", "{r}");
    assert_eq!(r["added"], serde_json::json!(["less"]), "{r}");
    assert_eq!(r["layers"].as_array().unwrap().len(), 2, "{r}");
    let base = fs::metadata(u.parent.join("filesystem.squashfs"))
        .unwrap()
        .len();
    let delta = r["new_layer_bytes"].as_u64().unwrap();
    eprintln!("delta layer {delta} bytes, base {base} bytes");
    assert!(delta * 10 < base, "delta {delta} vs base {base}");
    let v = json(ok(cairn(
        &u.store,
        &["image", "verify", u.delta.to_str().unwrap(), "--json"],
    )));
    assert_eq!(v["ok"], true, "{v}");
    let diff = ok(cairn(
        &u.store,
        &[
            "image",
            "diff",
            u.parent.to_str().unwrap(),
            u.delta.to_str().unwrap(),
        ],
    ));
    assert!(diff.contains("  + less "), "{diff}");
    // A data path the profile added: linked and recorded in the delta, as
    // a build does (the manifest listed it once, and nothing applied it).
    let layer = u.delta.join(u.delta_layer());
    let ls = std::process::Command::new("unsquashfs")
        .args(["-lls", "-d", ""])
        .arg(&layer)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.lines()
            .any(|l| l.ends_with("/srv/webtest-new -> /data/srv-webtest-new")),
        "{ls}"
    );
    let conf = std::process::Command::new("unsquashfs")
        .args(["-cat"])
        .arg(&layer)
        .arg("usr/lib/cairn/data.conf")
        .output()
        .unwrap();
    let conf = String::from_utf8_lossy(&conf.stdout);
    assert!(
        conf.contains("d /data/srv-webtest-new 0755 root root -")
            && conf.contains("/data/var-lib-webtest"),
        "{conf}"
    );
    let m = fixture::manifest(&u.delta);
    assert!(
        m["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "/srv/webtest-new"),
        "{m}"
    );
}

/// A disk made with the delta's parent; the delta copied onto it by hand:
/// the menu's "found now" loop offers it, checked like any entry, and the
/// boot is marked good under that entry's id.
#[test]
fn a_delta_copied_by_hand_boots_from_found_now() {
    let Some(f) = fixture::get() else {
        return;
    };
    let u = f.upgraded();
    let _core = crate::support::cores::one();
    let w = f.work("a_delta_copied_by_hand_boots_from_found_now");
    let (mnt, disk) = (w.path().join("mnt"), w.path().join("disk.img"));
    disk_of(&u.store, &disk, &u.parent);
    let iv = version_of(&u.delta);
    copy_onto(&disk, &mnt, &u.delta, &format!("/images/webtest/{iv}"));
    let found = format!("found>/images/webtest/{iv}");
    let b = boot(&u.store, &disk, "bios", Some(&found), &[], "upgraded", 400);
    b.reached(&marker_of(&u.delta));
    b.markers_have(&format!(
        "PROBE layers=filesystem.squashfs {} ",
        u.report["layers"][1].as_str().unwrap()
    ));
    b.markers_have("PROBE less=/usr/bin/less");
    b.markers_have("PROBE issue.net=absent");
    let env = grubenv(&disk, &mnt);
    assert!(env.contains(&format!("cairn_good={found}\n")), "{env}");
}

/// `cairn boot menu` writes the menu again from what the disk holds: a
/// delta copied by hand is the default (on trial), its parent a rollback
/// entry; a copy that broke off (its layers missing) is left out, and says
/// why.
#[test]
fn boot_menu_takes_copied_images_in_and_leaves_broken_copies_out() {
    let Some(f) = fixture::get() else {
        return;
    };
    let u = f.upgraded();
    let _heavy = crate::support::heavy();
    let w = f.work("boot_menu_takes_copied_images_in_and_leaves_broken_copies_out");
    let (mnt, disk) = (w.path().join("mnt"), w.path().join("disk.img"));
    disk_of(&u.store, &disk, &u.parent);
    let (pv, iv) = (version_of(&u.parent), version_of(&u.delta));
    copy_onto(&disk, &mnt, &u.delta, &format!("/images/webtest/{iv}"));
    let partial = format!("/images/webtest/{pv}-partial");
    {
        let m = mounted(&disk, &mnt);
        let dest = m.dir.join(partial.trim_start_matches('/'));
        fs::create_dir_all(&dest).unwrap();
        for e in fs::read_dir(&u.delta).unwrap().flatten() {
            if !e.file_name().to_string_lossy().ends_with(".squashfs") {
                fs::copy(e.path(), dest.join(e.file_name())).unwrap();
            }
        }
    }
    let menu = json(ok(cairn(
        &u.store,
        &["boot", "menu", disk.to_str().unwrap(), "--json"],
    )));
    assert_eq!(menu["default"], format!("webtest-{iv}").as_str(), "{menu}");
    assert_eq!(
        menu["fallback"][0],
        format!("rollback>webtest-{pv}").as_str(),
        "{menu}"
    );
    assert_eq!(menu["left_out"][0]["path"], partial.as_str(), "{menu}");
    assert!(
        menu["left_out"][0]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("filesystem.squashfs")),
        "{menu}"
    );
    assert_eq!(menu["left_out"].as_array().unwrap().len(), 1, "{menu}");
    let env = grubenv(&disk, &mnt);
    assert!(
        env.contains(&format!("cairn_trial=webtest-{iv}\n")),
        "{env}"
    );
}

/// On the running parent image (booted from its rollback entry, the store's
/// mirror attached as a disk): `cairn apply-live` brings `less` (the delta's
/// new package) into the running system, and it runs; then `cairn reboot
/// --soft` switches to the delta image: Debian 12's systemd has no
/// soft-reboot (refused under `--soft=required`), so it falls back to kexec. qemu runs with -no-reboot: a
/// firmware reboot would end the run, so the delta's marker can only come
/// from the kexec'd kernel (and GRUB checks grub.cfg once). The kexec'd boot
/// carries the menu's entry for the delta: it ends the delta's trial.
#[test]
fn apply_live_then_kexec_into_the_delta() {
    let Some(f) = fixture::get() else {
        return;
    };
    let u = f.upgraded();
    let _core = crate::support::cores::one();
    let w = f.work("apply_live_then_kexec_into_the_delta");
    let (mnt, disk) = (w.path().join("mnt"), w.path().join("disk.img"));
    disk_of(&u.store, &disk, &u.parent);
    ok(cairn(
        &u.store,
        &[
            "disk",
            "add",
            disk.to_str().unwrap(),
            u.delta.to_str().unwrap(),
        ],
    ));
    let (pv, iv) = (version_of(&u.parent), version_of(&u.delta));
    let share = w.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let st = Command::new("cp")
        .arg("-al")
        .arg(u.store.join("mirror"))
        .arg(&share)
        .status()
        .unwrap();
    assert!(st.success());
    let script = format!(
        r#"#!/bin/sh
say() {{ echo "PROBE $*" > /dev/ttyS1; echo "PROBE $*" > /dev/console; }}
. /etc/cairn/image.env
[ "$CAIRN_VERSION" = "{pv}" ] || exit 0
say "less-before=$(command -v less || echo none)"
cairn --store /srv/cairn apply-live --json > /run/apply.json 2> /run/apply.err
say "apply-live=$?"
say "applied=$(tr -d ' 
' < /var/lib/cairn/applied-live.json | grep -o '"to":"webtest/[^"]*"' | head -n1)"
say "less-after=$(less --version | head -n1)"
tail -n 5 /run/apply.err | while read -r l; do say "apply-err: $l"; done
cairn --store /srv/cairn reboot --soft=required --dry-run webtest/{iv} > /run/soft.out 2>&1
say "soft-required=$? $(grep -o 'systemd 252 has no soft-reboot' /run/soft.out | head -n1)"
say "kexec"
cairn --store /srv/cairn reboot --soft webtest/{iv} > /run/reboot.out 2>&1
say "reboot=$?"
tail -n 5 /run/reboot.out | while read -r l; do say "reboot-out: $l"; done
"#
    );
    let want = marker_of(&u.delta);
    let r = boot_into_delta(
        u,
        &disk,
        "bios",
        &format!("rollback>webtest-{pv}"),
        &share,
        &script,
        "live",
    );
    r.markers_have("PROBE less-before=none");
    r.markers_have("PROBE apply-live=0");
    r.markers_have(&format!("PROBE applied=\"to\":\"webtest/{iv}\""));
    r.markers_have("PROBE less-after=less ");
    // Debian 12's systemd (252) has no soft-reboot: refused when required,
    // and `--soft` falls back to kexec.
    r.markers_have("PROBE soft-required=1 systemd 252 has no soft-reboot");
    r.reached(&want);
    r.markers_have("PROBE issue.net=absent");
    let kexec_lines: Vec<&str> = r
        .console
        .lines()
        .filter(|l| l.contains("kexec_core") || l.contains("checking the signature of"))
        .collect();
    assert!(
        kexec_lines
            .iter()
            .any(|l| l.contains("Starting new kernel")),
        "{kexec_lines:?}\n{}",
        r.why()
    );
    assert_eq!(
        kexec_lines
            .iter()
            .filter(|l| l.contains("checking the signature of"))
            .count(),
        1,
        "{kexec_lines:?}"
    );
    let env = grubenv(&disk, &mnt);
    assert!(
        // The trial passed: it stays, and is the last good boot.
        env.contains(&format!("cairn_good=webtest-{iv}\n"))
            && env.contains(&format!("cairn_trial=webtest-{iv}\n")),
        "{env}"
    );
}

/// The switch that keeps the kernel (`cairn reboot --soft`, systemd's
/// soft-reboot) on Debian 13: a disk holds `trixietest`, its next version
/// (a delta: one file more, the same kernel) and a Debian 12 image (another
/// kernel). Booted into the first: the soft switch to the Debian 12 image
/// is refused under `--soft=required` and falls back to kexec otherwise
/// (dry runs); the soft switch to the next version restarts userspace
/// only — the same kernel and boot id, uptime carried on, GRUB and the
/// kernel started once in the whole run — and the new system runs the
/// delta's layers through dm-verity, says its own name, and its boot is
/// marked good (the trial passed). Neither boot rebuilt the linker cache
/// (the images are marked up to date when built).
#[test]
fn a_soft_reboot_switches_userspace_and_keeps_the_kernel() {
    let Some(f) = fixture::get() else {
        return;
    };
    let u = f.trixie_upgraded();
    let _core = crate::support::cores::one();
    let w = f.work("a_soft_reboot_switches_userspace_and_keeps_the_kernel");
    let (mnt, disk) = (w.path().join("mnt"), w.path().join("disk.img"));
    let web = u
        .store
        .join("images/webtest")
        .join(f.web_img.file_name().unwrap());
    ok(cairn(
        &u.store,
        &[
            "disk",
            "create",
            disk.to_str().unwrap(),
            "--image",
            u.parent.to_str().unwrap(),
            "--image",
            web.to_str().unwrap(),
            "--data-size",
            "32M",
            "--timeout",
            "1",
        ],
    ));
    ok(cairn(
        &u.store,
        &[
            "disk",
            "add",
            disk.to_str().unwrap(),
            u.delta.to_str().unwrap(),
        ],
    ));
    let (pv, dv, wv) = (
        version_of(&u.parent),
        version_of(&u.delta),
        version_of(&web),
    );
    let share = w.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let script = format!(
        r#"#!/bin/sh
say() {{ echo "PROBE $*" > /dev/ttyS1; echo "PROBE $*" > /dev/console; }}
. /etc/cairn/image.env
say "image=$CAIRN_VERSION boot-id=$(cat /proc/sys/kernel/random/boot_id) kernel=$(uname -r)"
say "up $CAIRN_VERSION $(cut -d. -f1 /proc/uptime)"
say "next-file=$(cat /etc/cairn-test-next 2>/dev/null || echo absent)"
say "soft-reboots=$(systemctl show -P SoftRebootsCount)"
say "ldconfig $CAIRN_VERSION ran=$(systemctl show -P ConditionResult ldconfig.service) checked-at=$(systemctl show -P ConditionTimestampMonotonic ldconfig.service)"
say "root=$(findmnt -n -o FSTYPE /)"
say "soft-verity=$(for d in /dev/mapper/cairn-soft*; do [ -e "$d" ] && veritysetup status "${{d##*/}}" | awk '$1 == "status:" {{ printf "%s ", $2 }}'; done)"
[ "$CAIRN_VERSION" = "{pv}" ] || exit 0
cairn reboot --soft=required --dry-run webtest/{wv} > /run/r1.out 2>&1
say "required-other-kernel=$?"
tail -n 3 /run/r1.out | while read -r l; do say "r1: $l"; done
cairn reboot --soft --dry-run --json webtest/{wv} > /run/r2.out 2> /run/r2.err
say "auto-other-kernel=$? $(tr -d ' \n' < /run/r2.out | grep -o '"method":"[a-z-]*"')"
say "auto-fallback=$(grep -o 'is not the running one' /run/r2.out | head -n1)"
tail -n 3 /run/r2.err | while read -r l; do say "r2: $l"; done
cairn reboot --soft trixietest/{dv} > /run/soft.out 2>&1
say "soft=$?"
tail -n 5 /run/soft.out | while read -r l; do say "soft-out: $l"; done
"#
    );
    let want = marker_of(&u.delta);
    let r = boot_into_delta(
        u,
        &disk,
        "uefi",
        &format!("rollback>trixietest-{pv}"),
        &share,
        &script,
        "soft",
    );
    r.markers_have(&format!("PROBE image={pv} boot-id="));
    r.markers_have("PROBE required-other-kernel=1");
    r.markers_have("is not the running one (6.12.");
    r.markers_have("a new kernel needs kexec or a boot (--soft=required: nothing done)");
    r.markers_have("PROBE auto-other-kernel=0 \"method\":\"kexec\"");
    r.markers_have("PROBE auto-fallback=is not the running one");
    r.markers_have("PROBE soft=0");
    r.reached(&want);
    r.markers_have(&format!("PROBE image={dv} boot-id="));
    r.markers_have("PROBE next-file=2");
    r.markers_have("PROBE soft-reboots=1");
    r.markers_have("PROBE root=overlay");
    r.markers_have("PROBE soft-verity=verified verified ");
    // One kernel, one boot: the boot id and the kernel are the first
    // image's, and the uptime went on.
    let line = |prefix: &str| -> String {
        r.markers
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|x| x.trim().to_string()))
            .unwrap_or_else(|| panic!("no {prefix:?}\n{}", r.why()))
    };
    let first = line(&format!("PROBE image={pv} "));
    let second = line(&format!("PROBE image={dv} "));
    assert_eq!(first, second, "boot id and kernel");
    // Marked up to date when built: systemd did not rebuild the linker
    // cache at the boot nor after the soft reboot (the condition was
    // checked, and said no).
    for v in [&pv, &dv] {
        let l = line(&format!("PROBE ldconfig {v} "));
        let at: u64 = l
            .strip_prefix("ran=no checked-at=")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("ldconfig.service in {v}: {l}"));
        assert!(at > 0, "ldconfig.service's condition never checked in {v}");
    }
    let up = |v: &str| -> u64 { line(&format!("PROBE up {v} ")).parse().unwrap() };
    assert!(
        up(&dv) >= up(&pv),
        "uptime went on: {} then {}",
        up(&pv),
        up(&dv)
    );
    assert_eq!(
        r.console.matches("Linux version ").count(),
        1,
        "the kernel started once\n{}",
        r.why()
    );
    let env = grubenv(&disk, &mnt);
    assert!(
        env.contains(&format!("cairn_good=trixietest-{dv}\n")),
        "{env}"
    );
}

/// Retention: keep the newest image of each profile; a delta whose parent
/// goes still verifies (its layers live in its own directory).
#[test]
fn prune_keeps_the_newest_and_deltas_still_verify() {
    let Some(f) = fixture::get() else {
        return;
    };
    let u = f.upgraded();
    let _heavy = crate::support::heavy();
    let w = f.work("prune_keeps_the_newest_and_deltas_still_verify");
    let store: PathBuf = w.path().join("store");
    fs::create_dir_all(&store).unwrap();
    for (what, how) in [("images", "-al"), ("keys", "-a")] {
        let st = Command::new("cp")
            .arg(how)
            .arg(u.store.join(what))
            .arg(&store)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let pruned = json(ok(cairn(
        &store,
        &["image", "prune", "--keep", "1", "--json"],
    )));
    assert_eq!(pruned["schema-version"], 1, "{pruned}");
    assert_eq!(pruned["dry-run"], false, "{pruned}");
    let gone: Vec<String> = serde_json::from_value(pruned["removed"].clone()).unwrap();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(
        gone[0].ends_with(&format!("webtest/{}", version_of(&u.parent))),
        "{gone:?}"
    );
    let list = json(ok(cairn(&store, &["image", "list", "--json"])));
    assert_eq!(list["images"].as_array().unwrap().len(), 2, "{list}");
    let delta = store.join("images/webtest").join(version_of(&u.delta));
    let v = json(ok(cairn(
        &store,
        &["image", "verify", delta.to_str().unwrap(), "--json"],
    )));
    assert_eq!(v["ok"], true, "{v}");
}

/// An upgrade is built from the profile as it is now: a changed
/// `kernel-cmdline` and compression reach the new image (its manifest and
/// its signed boot arguments), not the parent's.
#[test]
fn an_upgrade_takes_the_profiles_kernel_arguments_and_compression() {
    let Some((f, _heavy)) = fixture::begin() else {
        return;
    };
    let w = f.work("an_upgrade_takes_the_profiles_kernel_arguments_and_compression");
    let store = f.store_copy(w.path());
    let p = f.webtest.with_file_name("webtest3.toml");
    fs::write(
        &p,
        "schema-version = 1\nname = \"webtest\"\nextends = \"webtest.toml\"\nkernel-cmdline = [\"loglevel=4\"]\n\
[image]\ncompression = \"gzip\"\n",
    )
    .unwrap();
    let r = json(ok(cairn(
        &store,
        &["upgrade", p.to_str().unwrap(), "--json"],
    )));
    let img = PathBuf::from(r["path"].as_str().unwrap());
    let m = fixture::manifest(&img);
    assert!(
        m["kernel-cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "loglevel=4"),
        "{m}"
    );
    assert_eq!(m["compression"], "gzip", "{m}");
    let cfg = fs::read_to_string(img.join("boot.cfg")).unwrap();
    assert!(cfg.contains(" loglevel=4 "), "{cfg}");
}

/// Another build of cairn's package (same version, other files) is a change
/// of its own: `upgrade` makes a delta that carries it, installed by dpkg;
/// once the image has it, the same package is no change.
#[test]
fn a_new_cairn_package_goes_into_the_delta() {
    let Some((f, _heavy)) = fixture::begin() else {
        return;
    };
    let w = f.work("a_new_cairn_package_goes_into_the_delta");
    let store = f.store_copy(w.path());
    // The test's package, rebuilt with one file more (and its md5sum).
    let tree = w.path().join("rebuilt");
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(crate::support::package::deb())
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(tree.join("usr/share/doc/cairn/rebuilt"), "another build\n").unwrap();
    let mut sums = fs::read_to_string(tree.join("DEBIAN/md5sums")).unwrap();
    let md5 = Command::new("md5sum")
        .arg(tree.join("usr/share/doc/cairn/rebuilt"))
        .output()
        .unwrap();
    let md5 = String::from_utf8_lossy(&md5.stdout);
    sums.push_str(&format!(
        "{}  usr/share/doc/cairn/rebuilt\n",
        md5.split_whitespace().next().unwrap()
    ));
    fs::write(tree.join("DEBIAN/md5sums"), sums).unwrap();
    let rebuilt = w.path().join("cairn-rebuilt.deb");
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&rebuilt)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let up = || -> serde_json::Value {
        json(ok(crate::support::cairn_command()
            .env(cairn::rootfs::customize::PACKAGE_ENV, &rebuilt)
            .arg("--store")
            .arg(&store)
            .args(["--quiet", "upgrade", f.webtest.to_str().unwrap(), "--json"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()))
    };
    let r = up();
    assert_eq!(r["layer"], "delta", "{r}");
    let img = PathBuf::from(r["path"].as_str().unwrap());
    let layer = img.join(
        r["layers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap(),
    );
    let ls = Command::new("unsquashfs")
        .arg("-lls")
        .arg(&layer)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    for want in [
        "/usr/share/doc/cairn/rebuilt",
        "/var/lib/dpkg/info/cairn.md5sums",
        "/usr/bin/cairn",
    ] {
        assert!(
            ls.lines().any(|l| l.ends_with(want)),
            "{want} not in the delta:\n{ls}"
        );
    }
    assert!(
        !ls.contains("policy-rc.d") && !ls.contains("/tmp/cairn_"),
        "{ls}"
    );
    let v = json(ok(cairn(
        &store,
        &["image", "verify", img.to_str().unwrap(), "--json"],
    )));
    assert_eq!(v["ok"], true, "{v}");
    // The image has this package now: nothing to upgrade.
    let again = up();
    assert!(again["version"].is_null(), "{again}");
}
