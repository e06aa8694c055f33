//! What the build and VM proofs share, made once per test run (the first
//! test that needs it makes it; each proof can still run alone by name): a
//! store with a signing key, a mirror of what the test profiles need from
//! the host's archive, and two signed images — `default` (with its ISO) and
//! the `webtest` profile (probe, data path, cairn inside) built for a virtual
//! host. A proof that changes a store works on a copy of it (images and
//! mirror hard-linked, keys copied), so no proof sees another's images.
//!
//! Everything lives under `target/tmp/vm-tier/`, made fresh by each run; a
//! failed proof's work directory (disks, console logs) stays there for a
//! look, a passing one's is removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::{cairn, is_root, need_tools, ok, skip};

/// The probe the `webtest` profile carries: on every boot it says how many
/// boots its data directory has seen, whether a file written in /etc last
/// time is still there, what the live medium is (ext4 or, toram, tmpfs) and
/// which layers are mounted; then it writes both files. Its unit runs
/// before cairn-booted's (Before=), so every PROBE line is on the marker
/// port before the boot marker that ends a run: a test that stops at the
/// marker has them all, by construction. `PROBE done` is its last line.
pub const PROBE: &str = r#"#!/bin/sh
say() { echo "PROBE $*" > /dev/ttyS1; echo "PROBE $*" > /dev/console; }
d=/var/lib/webtest
n=$(cat "$d/boots" 2>/dev/null || echo 0)
say "data-boots=$n"
say "kernel=$(uname -r)"
say "debian=$(cat /etc/debian_version)"
if [ -e /etc/probe-stamp ]; then say "etc-stamp=present"; else say "etc-stamp=absent"; fi
say "data=$(awk '$2 == "/data" { print $3 }' /proc/mounts)"
say "medium=$(awk '$2 == "/run/live/medium" { print $3 }' /proc/mounts)"
say "medium-opts=$(awk '$2 == "/run/live/medium" { print $4 }' /proc/mounts)"
say "less=$(command -v less || echo none)"
if [ -e /etc/issue.net ]; then say "issue.net=present"; else say "issue.net=absent"; fi
say "layers=$(ls /run/live/rootfs | tr '\n' ' ')"
say "verity=$(for d in /dev/mapper/cairn-layer-*; do veritysetup status "${d##*/}" | awk '$1 == "status:" { printf "%s ", $2 }'; done)"
echo $((n + 1)) > "$d/boots"
sync
date > /etc/probe-stamp
# A store attached by the test (`vm run --attach-dir`): its on-boot script.
dev=$(blkid -L cairn-store 2>/dev/null)
if [ -n "$dev" ]; then
    mkdir -p /srv/cairn
    mount -o ro "$dev" /srv/cairn && [ -x /srv/cairn/on-boot.sh ] && /srv/cairn/on-boot.sh
fi
say "done"
"#;

pub const PROBE_UNIT: &str = "[Unit]\nDescription=cairn test probe\nRequiresMountsFor=/data\nBefore=cairn-booted.service\n\n\
[Service]\nType=oneshot\nTimeoutStartSec=infinity\nExecStart=/usr/local/sbin/cairn-probe\n\n[Install]\nWantedBy=multi-user.target\n";

/// Where a fleet proof serves its store (127.0.0.1 on the host, 10.0.2.2 in
/// a VM on qemu's user network): `webtest`'s fleet.urls names it.
pub const FLEET_PORT: u16 = 18931;

/// Held while a proof serves on FLEET_PORT (two proofs side by side would
/// both want it).
pub fn fleet_port() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// The snapshot of the shared mirror the shared images are built from.
pub const SNAPSHOT: &str = "fixture";

/// Debian 13, today's stable release, mirrored beside the host's own
/// (Debian 12) from the same sources.
pub const TRIXIE: &str = "trixie";

/// The shared store and its images.
pub struct Fixture {
    pub root: PathBuf,
    pub store: PathBuf,
    /// The `webtest` profile (physical host type, probe, data path, cairn,
    /// fleet settings pointing at FLEET_PORT, a health check).
    pub webtest: PathBuf,
    /// The same system bootstrapped by debootstrap.
    pub dbtest: PathBuf,
    /// The next version of webtest: `less` more, /etc/issue.net less, one
    /// more data path.
    pub webtest2: PathBuf,
    /// `webtest` on Debian 13 (trixie) for a virtual host: `trixietest`.
    pub trixietest: PathBuf,
    /// `default`, built with `--iso`.
    pub default_img: PathBuf,
    /// `webtest` built for a virtual host (the cloud kernel boots in qemu).
    pub web_img: PathBuf,
}

/// The `trixietest` image, in a store of its own (the shared store's
/// images stay what every proof expects).
pub struct Trixie {
    pub store: PathBuf,
    pub img: PathBuf,
}

/// The delta layer of `webtest2` on top of `web_img`, in a store of its own.
pub struct Upgraded {
    pub store: PathBuf,
    pub parent: PathBuf,
    pub delta: PathBuf,
    /// `cairn upgrade --json`'s report.
    pub report: serde_json::Value,
}

impl Upgraded {
    /// `cairn upgrade PROFILE ARGS` in `store`, on the copy there of
    /// `parent` (an image of `name`).
    fn make(store: PathBuf, profile: &Path, args: &[&str], name: &str, parent: &Path) -> Upgraded {
        let mut all = vec!["upgrade", profile.to_str().unwrap(), "--json"];
        all.extend_from_slice(args);
        let r = json(ok(cairn(&store, &all)));
        let delta = PathBuf::from(r["path"].as_str().unwrap());
        let parent = store
            .join("images")
            .join(name)
            .join(parent.file_name().unwrap());
        Upgraded {
            store,
            parent,
            delta,
            report: r,
        }
    }

    /// The delta's own layer (named after its version): the report's last.
    pub fn delta_layer(&self) -> &str {
        self.report["layers"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|l| l.as_str())
            .unwrap_or_else(|| panic!("no layers in the upgrade report: {}", self.report))
    }
}

/// Below the test directory, or wherever nginx's www-data workers can
/// reach it (`support::served_root`): proofs serve these stores.
fn root() -> PathBuf {
    crate::support::served_root().join("vm-tier")
}

/// Makes `d` (and its parents) a directory everyone may enter, whatever
/// the test's umask: nginx's workers walk through it.
fn open_dir(d: &Path) {
    fs::create_dir_all(d).unwrap();
    fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Whether this machine can run the build and VM tier; says why not (a
/// failure under CI=true).
pub fn runnable() -> bool {
    if crate::support::need_amd64("the build-and-boot tier (amd64 images in x86 VMs)") {
        return false;
    }
    if !is_root() {
        skip("needs root (mmdebstrap, mksquashfs of a root tree, loop mounts)");
        return false;
    }
    if need_tools(&[
        "mmdebstrap",
        "debootstrap",
        "mksquashfs",
        "unsquashfs",
        "gpg",
        "gpgv",
        "grub-mkrescue",
        "grub-mkimage",
        "xorriso",
        "mformat",
        "mcopy",
        "qemu-system-x86_64",
        "sfdisk",
        "mkfs.fat",
        "mkfs.ext4",
        "sbsign",
        "openssl",
        "losetup",
    ]) {
        return false;
    }
    if !Path::new(cairn::vm::OVMF_CODE).exists() {
        skip("OVMF is not installed (apt-get install ovmf)");
        return false;
    }
    if std::env::consts::ARCH != "x86_64" {
        skip("the VM tier boots amd64 images in qemu-system-x86_64: this host is not amd64");
        return false;
    }
    true
}

/// The shared fixture, made on first use; `None` when this machine cannot
/// run the tier (the reason is printed, and under CI=true it fails).
pub fn get() -> Option<&'static Fixture> {
    if !runnable() {
        return None;
    }
    static F: OnceLock<Result<Fixture, String>> = OnceLock::new();
    let f = F.get_or_init(|| {
        std::panic::catch_unwind(make).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        })
    });
    match f {
        Ok(f) => Some(f),
        Err(e) => panic!("the shared images could not be made: {e}"),
    }
}

/// The host's stable suite (from its apt sources).
pub fn host_suite() -> String {
    let repos = cairn::mirror::config::host_repos(Path::new("/")).unwrap();
    repos
        .into_iter()
        .flat_map(|r| r.suites)
        .find(|s| !s.contains('-'))
        .unwrap()
}

fn write_profiles(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    fs::create_dir_all(dir.join("files")).unwrap();
    fs::write(dir.join("files/motd"), "built by the cairn test suite\n").unwrap();
    fs::write(dir.join("files/probe"), PROBE).unwrap();
    fs::write(dir.join("files/probe.service"), PROBE_UNIT).unwrap();
    fs::write(dir.join("files/blob"), blob()).unwrap();
    fs::write(
        dir.join("files/sysusers.conf"),
        "u cairn-svc - \"a system user the profile asks for\"\n",
    )
    .unwrap();
    let web = dir.join("webtest.toml");
    fs::write(
        &web,
        "schema-version = 1\nsuite = \"SUITE\"\nhost-type = \"physical\"\nhostname = \"webtest\"\ncairn = true\n\
[root]\npassword-hash = \"$6$salt$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstu\"\n\
[[files]]\nsource = \"files/motd\"\ndest = \"/etc/motd\"\nmode = \"0600\"\n\
[[files]]\nsource = \"files/probe\"\ndest = \"/usr/local/sbin/cairn-probe\"\nmode = \"0755\"\n\
[[files]]\nsource = \"files/probe.service\"\ndest = \"/etc/systemd/system/cairn-probe.service\"\n\
[[files]]\nsource = \"files/blob\"\ndest = \"/usr/share/cairn-test/blob\"\n\
[[files]]\nsource = \"files/sysusers.conf\"\ndest = \"/etc/sysusers.d/cairn-svc.conf\"\n\
[[hooks]]\nscript = \"chroot \\\"$1\\\" dpkg-query -W systemd > \\\"$1/etc/hook-ran\\\"\"\n\
[[hooks]]\nscript = \"ln -s /etc/systemd/system/cairn-probe.service \\\"$1/etc/systemd/system/multi-user.target.wants/\\\"\"\n\
[[data]]\npath = \"/var/lib/webtest\"\n\
[image]\ncompression = \"lz4\"\n\
[fleet]\nurls = [\"http://10.0.2.2:PORT/\"]\npolicy = \"kexec\"\nfirst = \"5s\"\ninterval = \"1h\"\ndelay = \"1s\"\n\
[health]\ncommand = \"test -e /etc/hook-ran\"\ntimeout = 30\n"
            .replace("SUITE", &host_suite())
            .replace("PORT", &FLEET_PORT.to_string()),
    )
    .unwrap();
    let db = dir.join("dbtest.toml");
    fs::write(
        &db,
        "schema-version = 1\nextends = \"webtest.toml\"\nbootstrap = \"debootstrap\"\n",
    )
    .unwrap();
    let v2 = dir.join("webtest2.toml");
    fs::write(
        &v2,
        "schema-version = 1\nname = \"webtest\"\nextends = \"webtest.toml\"\npackages = [\"less\"]\n\
[[hooks]]\nscript = \"rm -f \\\"$1/etc/issue.net\\\"\"\n\
[[data]]\npath = \"/srv/webtest-new\"\n",
    )
    .unwrap();
    let trixie = dir.join("trixietest.toml");
    fs::write(
        &trixie,
        format!(
            "schema-version = 1\nname = \"trixietest\"\nextends = \"webtest.toml\"\nsuite = \"{TRIXIE}\"\nhost-type = \"virtual\"\n"
        ),
    )
    .unwrap();
    (web, db, v2, trixie)
}

/// 1 MiB that no compressor shrinks (so mksquashfs stores it as it is and a
/// test can find its bytes inside the squashfs), the same every run.
pub fn blob() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn make() -> Fixture {
    let _heavy = crate::support::heavy();
    let root = root();
    if root.exists() {
        cairn::fsutil::unmount_below(&root).expect("a previous run left mounts below vm-tier");
        fs::remove_dir_all(&root).expect("removing the previous run's vm-tier");
    }
    open_dir(&root);
    let store = root.join("store");
    let (webtest, dbtest, webtest2, trixietest) = write_profiles(&root);
    let t = std::time::Instant::now();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let joined = |h: std::thread::ScopedJoinHandle<'_, serde_json::Value>| {
        h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    };
    let (d, w) = std::thread::scope(|s| {
        // webtest (and the profiles extending it) have `cairn = true`:
        // their images install cairn's package, made while the mirror
        // syncs (the network's time, not the cores').
        let deb = s.spawn(|| {
            crate::support::package::deb();
            serde_json::Value::Null
        });
        ok(cairn(&store, &["key", "generate", "--bits", "2048"]));
        // debootstrap reads one suite: keep every version.
        ok(cairn(
            &store,
            &[
                "mirror",
                "sync",
                "--profile",
                "default",
                "--profile",
                &p(&webtest),
                "--profile",
                &p(&dbtest),
                "--profile",
                &p(&webtest2),
                "--profile",
                &p(&trixietest),
                "--all-versions",
            ],
        ));
        // The shared images come from a snapshot of that mirror, so proofs
        // can rebuild them byte for byte (`reproducible::`).
        ok(cairn(&store, &["mirror", "snapshot", "create", SNAPSHOT]));
        joined(deb);
        // The two shared images side by side (a build is one process at
        // a time for most of its time); webtest a second later, so its
        // version (the build's start, to the second) is the later one.
        let d = s.spawn(|| {
            json(ok(cairn(
                &store,
                &[
                    "build",
                    "default",
                    "--iso",
                    "--snapshot",
                    SNAPSHOT,
                    "--json",
                ],
            )))
        });
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let w = json(ok(cairn(
            &store,
            &[
                "build",
                &p(&webtest),
                "--host-type",
                "virtual",
                "--snapshot",
                SNAPSHOT,
                "--json",
            ],
        )));
        (joined(d), w)
    });
    eprintln!("shared images made in {:.0}s", t.elapsed().as_secs_f64());
    Fixture {
        root,
        store,
        webtest,
        dbtest,
        webtest2,
        trixietest,
        default_img: PathBuf::from(d["path"].as_str().unwrap()),
        web_img: PathBuf::from(w["path"].as_str().unwrap()),
    }
}

impl Fixture {
    /// A fresh work directory for one proof, removed when the proof passes.
    pub fn work(&self, name: &str) -> Work {
        let d = self.root.join("work").join(name);
        if d.exists() {
            cairn::fsutil::unmount_below(&d).unwrap();
            fs::remove_dir_all(&d).unwrap();
        }
        open_dir(d.parent().unwrap());
        open_dir(&d);
        Work(d)
    }

    /// A copy of the shared store in `work` (images and mirror hard-linked,
    /// keys copied): a proof's own images, upgrades and prunes stay there.
    pub fn store_copy(&self, work: &Path) -> PathBuf {
        copy_store(&self.store, work)
    }

    /// `trixietest` (a virtual host's: the cloud kernel boots in qemu)
    /// built from the fixture's snapshot, made once.
    pub fn trixie(&'static self) -> &'static Trixie {
        static T: OnceLock<Trixie> = OnceLock::new();
        T.get_or_init(|| {
            // One core: a build, one process at a time for most of its time.
            let _core = crate::support::cores::one();
            let dir = self.root.join("trixie");
            open_dir(&dir);
            let store = self.store_copy(&dir);
            let r = json(ok(cairn(
                &store,
                &[
                    "build",
                    self.trixietest.to_str().unwrap(),
                    "--snapshot",
                    SNAPSHOT,
                    "--json",
                ],
            )));
            Trixie {
                store,
                img: PathBuf::from(r["path"].as_str().unwrap()),
            }
        })
    }

    /// The next version of `trixietest` — one file more, the same kernel
    /// (the same snapshot) — as a delta on `trixie().img`, in a store of
    /// its own, made once.
    pub fn trixie_upgraded(&'static self) -> &'static Upgraded {
        static U: OnceLock<Upgraded> = OnceLock::new();
        U.get_or_init(|| {
            let t = self.trixie();
            // One core: an upgrade, one process at a time for most of its time.
            let _core = crate::support::cores::one();
            let dir = self.root.join("trixie-upgraded");
            open_dir(&dir);
            let store = copy_store(&t.store, &dir);
            let profile = self.root.join("trixietest2.toml");
            fs::write(
                &profile,
                "schema-version = 1\nname = \"trixietest\"\nextends = \"trixietest.toml\"\n\
[[hooks]]\nscript = \"echo 2 > \\\"$1/etc/cairn-test-next\\\"\"\n",
            )
            .unwrap();
            let args = ["--snapshot", SNAPSHOT];
            Upgraded::make(store, &profile, &args, "trixietest", &t.img)
        })
    }

    /// The delta of `webtest2` on `web_img`, made once.
    pub fn upgraded(&'static self) -> &'static Upgraded {
        static U: OnceLock<Upgraded> = OnceLock::new();
        U.get_or_init(|| {
            let _heavy = crate::support::heavy();
            let dir = self.root.join("upgraded");
            open_dir(&dir);
            let store = self.store_copy(&dir);
            Upgraded::make(store, &self.webtest2, &[], "webtest", &self.web_img)
        })
    }
}

/// A proof's work directory: removed on drop unless the proof failed.
pub struct Work(pub PathBuf);

impl Work {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !std::thread::panicking() && cairn::fsutil::unmount_below(&self.0).is_ok() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// `CAIRN-BOOTED profile=P version=V`, the line an image's boot ends with.
pub fn marker_of(img: &Path) -> String {
    let m = manifest(img);
    format!(
        "CAIRN-BOOTED profile={} version={}",
        m["profile"].as_str().unwrap(),
        m["version"].as_str().unwrap()
    )
}

/// The image's menu entry id, `P-V`.
pub fn id_of(img: &Path) -> String {
    let m = manifest(img);
    format!(
        "{}-{}",
        m["profile"].as_str().unwrap(),
        m["version"].as_str().unwrap()
    )
}

pub fn version_of(img: &Path) -> String {
    img.file_name().unwrap().to_str().unwrap().to_string()
}

pub fn manifest(img: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap()
}

/// The start of a build proof: the shared fixture (made if needed), then
/// both cores (`support::cores`). `None`: skipped (said why).
pub fn begin() -> Option<(&'static Fixture, crate::support::cores::Held<'static>)> {
    let f = get()?;
    Some((f, crate::support::cores::all()))
}

/// The start of a proof that boots one VM at a time: the shared fixture,
/// then one core (two such proofs run side by side; also a build that is
/// mostly one process at a time).
pub fn begin_vm() -> Option<(&'static Fixture, crate::support::cores::Held<'static>)> {
    let f = get()?;
    Some((f, crate::support::cores::one()))
}

/// A copy of `store` in `work/store`: images and mirror hard-linked, keys
/// copied.
pub fn copy_store(store: &Path, work: &Path) -> PathBuf {
    let to = work.join("store");
    open_dir(&to);
    for (what, how) in [
        ("images", "-al"),
        ("mirror", "-al"),
        ("snapshots", "-al"),
        ("keys", "-a"),
    ] {
        if !store.join(what).exists() {
            continue;
        }
        let st = Command::new("cp")
            .arg(how)
            .arg(store.join(what))
            .arg(&to)
            .status()
            .unwrap();
        assert!(st.success(), "copying the store's {what}");
    }
    to
}
