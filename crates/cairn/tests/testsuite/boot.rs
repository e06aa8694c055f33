//! The boot tier: a cairn disk with images of two profiles, booted in qemu
//! (TCG) on BIOS and UEFI through cairn's own GRUB. Each proof reads the
//! serial console: the marker the booted system prints, what the probe unit
//! of the `webtest` profile says about its data partition, what GRUB and the
//! initramfs say when they refuse. Called by the build tier with its images
//! (building them again would double the time).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{cairn, ok, text};

/// The probe the `webtest` profile carries: on every boot it says how many
/// boots its data directory has seen, whether a file written in /etc last
/// time is still there, and what the live medium is (ext4 or, toram, tmpfs);
/// then it writes both files. Runs before cairn-booted powers off.
pub const PROBE: &str = r#"#!/bin/sh
say() { echo "PROBE $*" > /dev/ttyS1; echo "PROBE $*" > /dev/console; }
d=/var/lib/webtest
n=$(cat "$d/boots" 2>/dev/null || echo 0)
say "data-boots=$n"
if [ -e /etc/probe-stamp ]; then say "etc-stamp=present"; else say "etc-stamp=absent"; fi
say "medium=$(awk '$2 == "/run/live/medium" { print $3 }' /proc/mounts)"
say "less=$(command -v less || echo none)"
if [ -e /etc/issue.net ]; then say "issue.net=present"; else say "issue.net=absent"; fi
say "layers=$(ls /run/live/rootfs | tr '\n' ' ')"
echo $((n + 1)) > "$d/boots"
sync
date > /etc/probe-stamp
# A store attached by the test (`vm run --attach-dir`): its on-boot script.
dev=$(blkid -L cairn-store 2>/dev/null)
if [ -n "$dev" ]; then
    mkdir -p /srv/cairn
    mount -o ro "$dev" /srv/cairn && [ -x /srv/cairn/on-boot.sh ] && /srv/cairn/on-boot.sh
fi
"#;

pub const PROBE_UNIT: &str = "[Unit]\nDescription=cairn test probe\nRequiresMountsFor=/data\nBefore=cairn-booted.service\n\n\
[Service]\nType=oneshot\nTimeoutStartSec=infinity\nExecStart=/usr/local/sbin/cairn-probe\n\n[Install]\nWantedBy=multi-user.target\n";

struct Vm {
    marker: Option<String>,
    console: String,
    markers: String,
    seconds: f64,
}

fn vm(
    store: &Path,
    disk: &Path,
    firmware: &str,
    entry: Option<&str>,
    extra: &[&str],
    name: &str,
) -> Vm {
    let log = store.join(format!("vm-{name}"));
    let mut args = vec![
        "vm",
        "run",
        disk.to_str().unwrap(),
        "--firmware",
        firmware,
        "--poweroff",
        "--json",
        "--log-dir",
        log.to_str().unwrap(),
    ];
    // A run can stop at another line (a refusal) instead of the boot marker.
    if !extra.contains(&"--marker") {
        args.extend(["--marker", "CAIRN-BOOTED"]);
    }
    if let Some(e) = entry {
        args.extend(["--entry", e]);
    }
    args.extend(extra);
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", "400"]);
    }
    if !extra.contains(&"--accel") {
        args.extend(["--accel", "tcg"]);
    }
    let out = cairn(store, &args);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let read = |f: &str| {
        cairn::vm::strip_ansi(&String::from_utf8_lossy(
            &fs::read(log.join(f)).unwrap_or_default(),
        ))
    };
    let r = Vm {
        marker: v["marker_line"].as_str().map(String::from),
        console: read("console.log"),
        markers: read("marker.log"),
        seconds: v["seconds_to_marker"]
            .as_f64()
            .unwrap_or(v["seconds"].as_f64().unwrap_or(0.0)),
    };
    let line = format!(
        "boot {name} ({firmware}, entry {entry:?}): {:?} after {:.1}s",
        r.marker, r.seconds
    );
    eprintln!("{line}");
    // Collected for scripts/test to print (a passing test's output is
    // swallowed), so every run reports its boot times.
    let times = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-times.txt");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(times) {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
    r
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

fn version_of(img: &Path) -> String {
    img.file_name().unwrap().to_str().unwrap().to_string()
}

fn marker_of(img: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    format!(
        "CAIRN-BOOTED profile={} version={}",
        m["profile"].as_str().unwrap(),
        m["version"].as_str().unwrap()
    )
}

fn id_of(img: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    format!(
        "{}-{}",
        m["profile"].as_str().unwrap(),
        m["version"].as_str().unwrap()
    )
}

/// The disk's boot partition mounted (below `at`) for a change made behind
/// cairn's back.
fn mounted(disk: &Path, at: &Path) -> cairn::boot::disk::MountedBoot {
    cairn::boot::disk::MountedBoot::mount(disk, at).unwrap()
}

/// Flips one byte of `rel` on the disk's boot partition; again to undo.
fn flip(disk: &Path, mnt: &Path, rel: &str) {
    let m = mounted(disk, mnt);
    let p = m.dir.join(rel.trim_start_matches('/'));
    let mut data = fs::read(&p).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    // In place: the same blocks, as a bit flip on the medium would be.
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|mut f| {
            use std::io::{Seek, Write};
            f.seek(std::io::SeekFrom::Start(mid as u64))?;
            f.write_all(&data[mid..mid + 1])
        })
        .unwrap();
}

fn grubenv(disk: &Path, mnt: &Path) -> String {
    let m = mounted(disk, mnt);
    String::from_utf8_lossy(&fs::read(m.dir.join("boot/grub/grubenv")).unwrap()).into_owned()
}

/// Proofs 1–6 of the boot issue. `default_img` and `web_img` are images of
/// two profiles (`webtest` carries the probe and a data path).
pub fn proofs(store: &Path, work: &Path, default_img: &Path, web_img: &Path) {
    let disk = work.join("boot-disk.img");
    let mnt = work.join("mnt");
    let d_id = id_of(default_img);
    let w_id = id_of(web_img);
    let (d_marker, w_marker) = (marker_of(default_img), marker_of(web_img));
    let r: serde_json::Value = serde_json::from_str(&ok(cairn(
        store,
        &[
            "disk",
            "create",
            disk.to_str().unwrap(),
            "--image",
            default_img.to_str().unwrap(),
            "--image",
            web_img.to_str().unwrap(),
            "--default",
            "default",
            "--tries",
            "2",
            "--timeout",
            "1",
            "--data-size",
            "64M",
            "--iso",
            default_img.join("default.iso").to_str().unwrap(),
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(r["menu"]["default"], d_id.as_str(), "{r}");
    assert_eq!(r["menu"]["fallback"][0], w_id.as_str(), "{r}");
    let ids: Vec<&str> = r["menu"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&format!("{w_id}-ram").as_str()), "{ids:?}");

    // 1 + 6. The default entry on BIOS; the other profile, chosen, on UEFI —
    // with the probe's first look at its data partition.
    // (`--accel auto`: KVM if it works on this host, else TCG after a probe.)
    let a = vm(
        store,
        &disk,
        "bios",
        None,
        &["--accel", "auto"],
        "default-bios",
    );
    assert_eq!(
        a.marker.as_deref(),
        Some(d_marker.as_str()),
        "{}",
        a.console
    );
    assert!(
        a.console.contains("filesystem.squashfs: SHA-256 verified"),
        "{}",
        a.console
    );
    let b = vm(store, &disk, "uefi", Some(&w_id), &[], "web-uefi");
    assert_eq!(
        b.marker.as_deref(),
        Some(w_marker.as_str()),
        "{}",
        b.console
    );
    assert!(b.markers.contains("PROBE data-boots=0"), "{}", b.markers);
    assert!(
        b.markers.contains("PROBE etc-stamp=absent"),
        "{}",
        b.markers
    );
    assert!(b.markers.contains("PROBE medium=ext4"), "{}", b.markers);

    // An ISO file on the disk has its entry: the whole ISO checked against
    // its signature, booted by loopback (findiso=), its squashfs checked in
    // the initramfs; the boot is marked good like any entry's.
    let iso = vm(
        store,
        &disk,
        "bios",
        Some("isos>iso-default"),
        &[],
        "iso-on-disk",
    );
    assert_eq!(
        iso.marker.as_deref(),
        Some(d_marker.as_str()),
        "{}",
        iso.console
    );
    assert!(
        iso.console
            .contains("cairn: /isos/default.iso verified, booting (disk)")
            && iso
                .console
                .contains("filesystem.squashfs: SHA-256 verified"),
        "{}",
        iso.console
    );
    let env = grubenv(&disk, &mnt);
    assert!(env.contains("cairn_good=isos>iso-default\n"), "{env}");

    // 2 + 4. In RAM: the medium is a tmpfs copy; the data partition kept
    // what the last boot wrote, /etc did not.
    let c = vm(
        store,
        &disk,
        "bios",
        Some(&format!("{w_id}-ram")),
        &[],
        "web-ram",
    );
    assert_eq!(
        c.marker.as_deref(),
        Some(w_marker.as_str()),
        "{}",
        c.console
    );
    assert!(c.console.contains("to RAM"), "{}", c.console);
    assert!(c.markers.contains("PROBE medium=tmpfs"), "{}", c.markers);
    assert!(c.markers.contains("PROBE data-boots=1"), "{}", c.markers);
    assert!(
        c.markers.contains("PROBE etc-stamp=absent"),
        "{}",
        c.markers
    );
    let env = grubenv(&disk, &mnt);
    assert!(env.contains(&format!("cairn_good={w_id}-ram\n")), "{env}");

    // 3. One byte changed: in the squashfs, the initramfs refuses (and the
    // VM reboots, which ends the run); in the kernel or initrd GRUB refuses
    // and falls back to the other image; in grub.cfg nothing boots.
    let d_dir = format!("/images/{}", d_id.replacen('-', "/", 1));
    flip(&disk, &mnt, &format!("{d_dir}/filesystem.squashfs"));
    let s = vm(store, &disk, "bios", Some(&d_id), &[], "bad-squashfs");
    assert!(
        s.marker.is_none(),
        "a changed squashfs booted:\n{}",
        s.console
    );
    assert!(
        s.console.contains(&format!(
            "REFUSING TO BOOT {d_dir}: filesystem.squashfs: SHA-256 mismatch"
        )),
        "{}",
        s.console
    );
    flip(&disk, &mnt, &format!("{d_dir}/filesystem.squashfs"));
    // The kernel: refused, and the next image boots instead.
    flip(&disk, &mnt, &format!("{d_dir}/vmlinuz"));
    let k = vm(store, &disk, "bios", None, &[], "bad-vmlinuz");
    assert!(
        k.console
            .contains(&format!("cairn: REFUSING TO BOOT {d_dir}")),
        "{}",
        k.console
    );
    assert_eq!(
        k.marker.as_deref(),
        Some(w_marker.as_str()),
        "{}",
        k.console
    );
    flip(&disk, &mnt, &format!("{d_dir}/vmlinuz"));
    // The initrd: refused (the run stops there; the fallback is proven above).
    flip(&disk, &mnt, &format!("{d_dir}/initrd.img"));
    let i = vm(
        store,
        &disk,
        "bios",
        Some(&d_id),
        &["--marker", "cairn: falling back to"],
        "bad-initrd",
    );
    assert!(i.marker.is_some(), "{}", i.console);
    assert!(
        i.console
            .contains(&format!("cairn: REFUSING TO BOOT {d_dir}: kernel, initrd")),
        "{}",
        i.console
    );
    flip(&disk, &mnt, &format!("{d_dir}/initrd.img"));
    flip(&disk, &mnt, "boot/grub/grub.cfg");
    let g = vm(
        store,
        &disk,
        "bios",
        None,
        &["--timeout", "60", "--marker", "Enter username"],
        "bad-grub-cfg",
    );
    assert!(
        g.marker
            .as_deref()
            .is_some_and(|m| m.starts_with("Enter username")),
        "{}",
        g.console
    );
    assert!(!g.console.contains("CAIRN-BOOTED"), "{}", g.console);
    assert!(
        g.console
            .contains("checking the signature of (hd0,gpt3)/boot/grub/grub.cfg")
            && g.console.contains("error: bad signature"),
        "{}",
        g.console
    );
    assert!(
        !g.console.contains("signature checks work"),
        "{}",
        g.console
    );
    assert!(!g.console.contains("Linux version"), "{}", g.console);
    flip(&disk, &mnt, "boot/grub/grub.cfg");

    // 5. Boot counting: a newer image of the default profile that never
    // comes up (init fails, the kernel panics and reboots) is tried twice,
    // then GRUB boots the last entry that reported a good boot.
    let broken = work.join("broken");
    let _ = fs::remove_dir_all(&broken);
    fs::create_dir_all(&broken).unwrap();
    for e in fs::read_dir(default_img).unwrap().flatten() {
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
        .extend(["init=/bin/false".into(), "panic=2".into()]);
    fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    ok(cairn(store, &["image", "sign", broken.to_str().unwrap()]));
    let added: serde_json::Value = serde_json::from_str(&ok(cairn(
        store,
        &[
            "disk",
            "add",
            disk.to_str().unwrap(),
            broken.to_str().unwrap(),
            "--json",
        ],
    )))
    .unwrap();
    let broken_id = format!("default-{version}");
    assert_eq!(added["default"], broken_id.as_str(), "{added}");
    let env = grubenv(&disk, &mnt);
    assert!(
        env.contains(&format!("cairn_trial={broken_id}\n")) && env.contains("cairn_left=2\n"),
        "{env}"
    );
    let good = env
        .lines()
        .find_map(|l| l.strip_prefix("cairn_good="))
        .unwrap()
        .to_string();
    let t = vm(
        store,
        &disk,
        "bios",
        None,
        &["--reboots", "--timeout", "500"],
        "counting",
    );
    assert_eq!(
        t.console
            .matches(&format!("cairn: trying {broken_id}"))
            .count(),
        2,
        "{}",
        t.console
    );
    assert!(
        // (GRUB wraps at 80 columns: the entry named is checked by the marker.)
        t.console.contains(&format!(
            "{broken_id} never reported a good boot; falling back"
        )),
        "{}",
        t.console
    );
    let want = if good.starts_with(&w_id) {
        &w_marker
    } else {
        &d_marker
    };
    assert_eq!(t.marker.as_deref(), Some(want.as_str()), "{}", t.console);
}

/// Secure Boot in OVMF (enforcing), with a key made here — as a sysadmin's
/// own db/MOK key would be:
/// - the firmware trusts only that key (PK, KEK, db): a disk made without
///   Secure Boot signing is refused by the firmware; `cairn boot install
///   --secure-boot-key` puts a GRUB signed with it on the same disk, which
///   then boots the image;
/// - the firmware trusts Microsoft's keys (as most machines): `--shim` puts
///   Debian's Microsoft-signed shim in front; with the certificate in shim's
///   MOK list the image boots, with another certificate there shim refuses
///   GRUB.
pub fn secure_boot(store: &Path, work: &Path, img: &Path) {
    let cert = |name: &str| -> (PathBuf, PathBuf) {
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
    };
    let (key, crt) = cert("db");
    let (_, other) = cert("other");
    // Made on a block device (a loop device over the file), as on a USB stick.
    let disk = work.join("sb.img");
    let d = disk.to_str().unwrap();
    fs::File::create(&disk).unwrap().set_len(1 << 30).unwrap();
    let lo = Command::new("losetup")
        .args(["--find", "--show", d])
        .output()
        .unwrap();
    assert!(
        lo.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&lo.stderr)
    );
    let dev = String::from_utf8_lossy(&lo.stdout).trim().to_string();
    let i = img.to_str().unwrap();
    let made = cairn(
        store,
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
    let refused = cairn(store, &["disk", "create", &dev, "--image", i]);
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    ok(made);
    let err = crate::support::fails(refused);
    assert!(err.contains("would be erased: confirm with --yes"), "{err}");
    let own = ["--secure-boot", "--own-cert", crt.to_str().unwrap()];
    let u = vm(
        store,
        &disk,
        "uefi",
        None,
        &[
            &own[..],
            &["--timeout", "60", "--marker", "BdsDxe: No bootable option"],
        ]
        .concat(),
        "secure-boot-unsigned",
    );
    assert!(u.console.contains("Access Denied"), "{}", u.console);
    assert!(!u.console.contains("GRUB"), "{}", u.console);
    let install = |shim: bool| {
        let mut a = vec![
            "boot",
            "install",
            "--disk",
            d,
            "--secure-boot-key",
            key.to_str().unwrap(),
            "--secure-boot-cert",
            crt.to_str().unwrap(),
        ];
        if shim {
            a.push("--shim");
        }
        ok(cairn(store, &a))
    };
    let out = install(false);
    assert!(out.contains("signed for Secure Boot"), "{out}");
    let booted = |r: &Vm| {
        assert_eq!(
            r.marker.as_deref(),
            Some(marker_of(img).as_str()),
            "{}",
            r.console
        );
        assert!(
            r.console.contains("secureboot: Secure boot enabled"),
            "{}",
            r.console
        );
    };
    // The signed GRUB boots the image. There `cairn reboot --kexec` (dry
    // run) finds the locked-down kernel refusing Debian's kernel — only your
    // key is trusted — and plans a firmware reboot instead, saying why.
    let share = work.join("sb-share");
    let _ = fs::remove_dir_all(&share);
    on_boot_share(
        &share,
        &format!(
            r#"cairn --store /srv/cairn reboot --kexec --dry-run --json webtest/{v} > /run/plan.json 2> /run/plan.err
say "dry-run=$? $(tr -d '\n' < /run/plan.json | grep -o '"method": *"[a-z]*"')"
grep -q 'this kernel is locked down (Secure Boot)' /run/plan.err && say "kexec refused: locked down"
"#,
            v = version_of(img)
        ),
    );
    let a = [&own[..], &["--attach-dir", share.to_str().unwrap()]].concat();
    let r = vm(store, &disk, "uefi", None, &a, "secure-boot");
    booted(&r);
    assert!(
        r.markers.contains("PROBE dry-run=0 \"method\": \"reboot\"")
            && r.markers.contains("PROBE kexec refused: locked down"),
        "{}",
        r.markers
    );

    let out = install(true);
    assert!(out.contains("behind shim"), "{out}");
    let mok = |c: &Path, extra: &[&str], name: &str| {
        let a = [
            &["--secure-boot", "--mok-cert", c.to_str().unwrap()][..],
            extra,
        ]
        .concat();
        vm(store, &disk, "uefi", None, &a, name)
    };
    // Behind shim the image boots — and `cairn reboot --kexec` works under
    // the kernel's Secure Boot lockdown (kexec_file_load: Debian's kernel
    // signature is trusted through shim's certificate); the new kernel is
    // locked down too.
    let _ = fs::remove_dir_all(&share);
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
            v = version_of(img)
        ),
    );
    let r = mok(
        &crt,
        &[
            "--attach-dir",
            share.to_str().unwrap(),
            "--marker",
            "PROBE kexecd",
        ],
        "secure-boot-shim-kexec",
    );
    let locked = "lockdown=none [integrity] confidentiality";
    assert!(
        r.markers.contains(&format!("PROBE from-grub {locked}"))
            && r.markers.contains(&format!("PROBE kexecd {locked}")),
        "{}",
        r.markers
    );
    assert!(
        r.console.contains("secureboot: Secure boot enabled")
            && r.console.contains("kexec_core: Starting new kernel"),
        "{}",
        r.console
    );
    // Another certificate in the MOK list: shim refuses our GRUB (and
    // waits in MokManager: the run ends at its timeout).
    let r = mok(
        &other,
        &["--timeout", "25", "--marker", "never"],
        "secure-boot-shim-other",
    );
    assert!(
        r.console
            .contains("Verification failed: (0x1A) Security Violation"),
        "{}",
        r.console
    );
    assert!(!r.console.contains("cairn: "), "{}", r.console);
}

pub fn upgrades(store: &Path, work: &Path, v1: &Path, v2: &Path, base: &Path) {
    let up = |profile: &Path, force: bool| -> serde_json::Value {
        let mut a = vec!["upgrade", profile.to_str().unwrap(), "--json"];
        if force {
            a.push("--force");
        }
        serde_json::from_str(&ok(cairn(store, &a))).unwrap()
    };
    // Nothing changed since the image was built: no image.
    let none = up(v1, false);
    assert!(none["version"].is_null(), "{none}");
    let mut depths = Vec::new();
    let mut last = serde_json::Value::Null;
    for _ in 0..4 {
        last = up(v1, true);
        depths.push(last["layers"].as_array().unwrap().len());
    }
    assert_eq!(depths, [2, 3, 4, 1], "{last}");
    assert!(
        last["compacted_because"]
            .as_str()
            .is_some_and(|c| c.contains("5 layers")),
        "{last}"
    );
    let r = up(v2, false);
    assert_eq!(r["layer"], "delta", "{r}");
    assert_eq!(r["added"], serde_json::json!(["less"]), "{r}");
    assert_eq!(r["layers"].as_array().unwrap().len(), 2, "{r}");
    let base_bytes = fs::metadata(base.join("filesystem.squashfs"))
        .unwrap()
        .len();
    let delta = r["new_layer_bytes"].as_u64().unwrap();
    eprintln!("delta layer {delta} bytes, base {base_bytes} bytes");
    assert!(
        delta * 10 < base_bytes,
        "delta {delta} vs base {base_bytes}"
    );
    let img = PathBuf::from(r["path"].as_str().unwrap());
    let v: serde_json::Value = serde_json::from_str(&ok(cairn(
        store,
        &["image", "verify", img.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let diff = ok(cairn(
        store,
        &[
            "image",
            "diff",
            base.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    ));
    assert!(diff.contains("  + less "), "{diff}");

    // A disk made with the delta's parent; the delta is then copied onto it
    // by hand, as a sysadmin would: the menu's "found now" loop offers it,
    // checked like any entry.
    let parent = PathBuf::from(last["path"].as_str().unwrap());
    let (pv, iv) = (version_of(&parent), version_of(&img));
    let disk = work.join("upgrade.img");
    let mnt = work.join("mnt");
    ok(cairn(
        store,
        &[
            "disk",
            "create",
            disk.to_str().unwrap(),
            "--image",
            parent.to_str().unwrap(),
            "--data-size",
            "32M",
            "--timeout",
            "1",
        ],
    ));
    {
        let m = mounted(&disk, &mnt);
        let st = Command::new("cp")
            .arg("-r")
            .arg(&img)
            .arg(m.dir.join(format!("images/webtest/{iv}")))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let found = format!("found>/images/webtest/{iv}");
    let b = vm(store, &disk, "bios", Some(&found), &[], "upgraded");
    assert_eq!(
        b.marker.as_deref(),
        Some(marker_of(&img).as_str()),
        "{}",
        b.markers
    );
    let layers = format!(
        "PROBE layers=filesystem.squashfs {} ",
        r["layers"][1].as_str().unwrap()
    );
    assert!(b.markers.contains(&layers), "{layers:?} in {}", b.markers);
    assert!(
        b.markers.contains("PROBE less=/usr/bin/less"),
        "{}",
        b.markers
    );
    assert!(
        b.markers.contains("PROBE issue.net=absent"),
        "{}",
        b.markers
    );

    let env = grubenv(&disk, &mnt);
    assert!(env.contains(&format!("cairn_good={found}\n")), "{env}");

    // `cairn boot menu` writes the menu again from what the disk holds: the
    // copied delta is the default (on trial), its parent a rollback entry; a
    // copy that broke off (its layers missing) is left out, and says why.
    // (Named older than the delta: apply-live below takes the newest.)
    let partial = format!("/images/webtest/{pv}-partial");
    {
        let m = mounted(&disk, &mnt);
        let dest = m.dir.join(partial.trim_start_matches('/'));
        fs::create_dir_all(&dest).unwrap();
        for e in fs::read_dir(&img).unwrap().flatten() {
            if !e.file_name().to_string_lossy().ends_with(".squashfs") {
                fs::copy(e.path(), dest.join(e.file_name())).unwrap();
            }
        }
    }
    let menu: serde_json::Value = serde_json::from_str(&ok(cairn(
        store,
        &["boot", "menu", "--disk", disk.to_str().unwrap(), "--json"],
    )))
    .unwrap();
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

    live(store, work, &disk, &parent, &img);
    // The kexec'd boot carried the menu's entry for the delta: it ended the
    // delta's trial and is the last good boot.
    let env = grubenv(&disk, &mnt);
    assert!(
        env.contains(&format!("cairn_good=webtest-{iv}\n")) && !env.contains("cairn_trial="),
        "{env}"
    );

    // Retention: keep 2 of webtest's images; the newest still verifies.
    let before = image_count(store, "webtest");
    let gone: Vec<String> = serde_json::from_str(&ok(cairn(
        store,
        &["image", "prune", "--keep", "2", "--json"],
    )))
    .unwrap();
    assert_eq!(gone.len(), before - 2, "{gone:?}");
    assert_eq!(image_count(store, "webtest"), 2);
    let v: serde_json::Value = serde_json::from_str(&ok(cairn(
        store,
        &["image", "verify", img.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

/// On the running parent image (booted from the rollback entry, the store's
/// mirror attached as a disk): `cairn apply-live` brings `less` (the delta's
/// new package) into the running system, and it runs; then `cairn reboot
/// --kexec` switches to the delta image. qemu runs with -no-reboot: a
/// firmware reboot would end the run, so the delta's marker can only come
/// from the kexec'd kernel (and GRUB's first line appears once).
fn live(store: &Path, work: &Path, disk: &Path, parent: &Path, img: &Path) {
    let (pv, iv) = (version_of(parent), version_of(img));
    let share = work.join("share");
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(&share).unwrap();
    let st = std::process::Command::new("cp")
        .arg("-al")
        .arg(store.join("mirror"))
        .arg(&share)
        .status()
        .unwrap();
    assert!(st.success());
    on_boot_share(
        &share,
        &format!(
            r#". /etc/cairn/image.env
[ "$CAIRN_VERSION" = "{pv}" ] || exit 0
say "less-before=$(command -v less || echo none)"
cairn --store /srv/cairn apply-live --json > /run/apply.json 2> /run/apply.err
say "apply-live=$?"
say "applied=$(tr -d ' 
' < /var/lib/cairn/applied-live.json | grep -o '"to":"webtest/[^"]*"' | head -n1)"
say "less-after=$(less --version | head -n1)"
tail -n 5 /run/apply.err | while read -r l; do say "apply-err: $l"; done
say "kexec"
kexec_to webtest/{iv}
"#
        ),
    );
    let want = marker_of(img);
    let entry = format!("rollback>webtest-{pv}");
    let r = vm(
        store,
        disk,
        "bios",
        Some(&entry),
        &[
            "--attach-dir",
            share.to_str().unwrap(),
            "--marker",
            &want,
            "--timeout",
            "600",
        ],
        "live",
    );
    let m = &r.markers;
    assert!(m.contains("PROBE less-before=none"), "{m}");
    assert!(m.contains("PROBE apply-live=0"), "{m}");
    assert!(
        m.contains(&format!("PROBE applied=\"to\":\"webtest/{iv}\"")),
        "{m}"
    );
    assert!(m.contains("PROBE less-after=less "), "{m}");
    assert_eq!(r.marker.as_deref(), Some(want.as_str()), "{m}");
    assert!(m.contains("PROBE issue.net=absent"), "{m}");
    let kexec_lines: Vec<&str> = r
        .console
        .lines()
        .filter(|l| l.contains("kexec_core") || l.contains("checking the signature of"))
        .collect();
    assert!(
        kexec_lines
            .iter()
            .any(|l| l.contains("Starting new kernel")),
        "{kexec_lines:?}"
    );
    assert_eq!(
        kexec_lines
            .iter()
            .filter(|l| l.contains("checking the signature of"))
            .count(),
        1,
        "{kexec_lines:?}"
    );
}

fn image_count(store: &Path, profile: &str) -> usize {
    let l: serde_json::Value =
        serde_json::from_str(&ok(cairn(store, &["image", "list", "--json"]))).unwrap();
    l.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["profile"] == profile)
        .count()
}
