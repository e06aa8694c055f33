//! Reproducible images (root tier): mirror snapshots as hard links that
//! outlive the live mirror; the shared images (built from the fixture's
//! snapshot) rebuilt bit for bit under another clock (faketime), in another
//! work directory and with another compressor thread count, after the live
//! mirror moved on; a changed snapshot named by `image rebuild --check`;
//! an upgrade's delta made twice, identical.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::fixture::{self, SNAPSHOT};
use crate::support::{cairn, cairn_command, fails, have, ok, skip, text};

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The hash SHA256SUMS of `img` records for `file`.
fn recorded_sha256(img: &Path, file: &str) -> String {
    let sums = fs::read_to_string(img.join("SHA256SUMS")).unwrap();
    sums.lines()
        .find_map(|l| {
            let (h, f) = l.split_once("  ")?;
            (f == file).then(|| h.to_string())
        })
        .unwrap_or_else(|| panic!("{file} not in {}/SHA256SUMS", img.display()))
}

/// cairn three days later (faketime) on a build host set up elsewhere by
/// someone else: `umask 077` (what CIS benchmarks ask), German messages
/// (a locale compiled for the test), the Chatham Islands' time zone
/// (UTC+12:45, +13:45 in summer).
pub(crate) fn cairn_elsewhere(store: &Path, args: &[&str]) -> Output {
    let plain = cairn_command();
    let mut c = Command::new("sh");
    c.args(["-c", "umask 077 && exec faketime -f +3d \"$@\"", "sh"])
        .arg(plain.get_program());
    for (k, v) in plain.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("TZ", "Pacific/Chatham")
        .env("LOCPATH", german())
        .env("LANG", "de_DE.UTF-8")
        .env("LC_ALL", "de_DE.UTF-8")
        .env("LANGUAGE", "de");
    crate::support::cairn_through(c, store, args)
}

/// A German UTF-8 locale, compiled once into the test's directory (the
/// host's own locale settings are left alone).
fn german() -> PathBuf {
    static L: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    L.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("locale");
        if !dir.join("de_DE.UTF-8/LC_MESSAGES").exists() {
            fs::create_dir_all(&dir).unwrap();
            let out = Command::new("localedef")
                .args(["-i", "de_DE", "-f", "UTF-8"])
                .arg(dir.join("de_DE.UTF-8"))
                .output()
                .unwrap();
            assert!(
                dir.join("de_DE.UTF-8/LC_MESSAGES").exists(),
                "localedef de_DE.UTF-8 (apt install locales): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The locale really is German: `date` says so.
        let out = Command::new("date")
            .args(["-d", "@0", "+%A"])
            .env("LOCPATH", &dir)
            .env("LC_ALL", "de_DE.UTF-8")
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Donnerstag");
        dir
    })
    .clone()
}

/// The mode and owner column of `unsquashfs -lls` for each of `paths` in
/// `squashfs` (`drwxr-xr-x root/root`).
fn modes_in(squashfs: &Path, paths: &[&str]) -> Vec<(String, String)> {
    let out = Command::new("unsquashfs")
        .args(["-lls", "-d", ""])
        .arg(squashfs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs -lls {}",
        squashfs.display()
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    paths
        .iter()
        .map(|p| {
            let line = listing
                .lines()
                .find(|l| {
                    let at = l.split_whitespace().nth(5).unwrap_or("/");
                    at == *p
                })
                .unwrap_or_else(|| panic!("{p} not in {}", squashfs.display()));
            let f: Vec<&str> = line.split_whitespace().collect();
            (p.to_string(), format!("{} {}", f[0], f[1]))
        })
        .collect()
}

pub(crate) fn need_faketime() -> bool {
    if !have("faketime") {
        skip("needs faketime (apt install faketime): the clock-shift proof");
        return false;
    }
    true
}

/// The first regular file below `dir`.
fn first_file(dir: &Path) -> PathBuf {
    let mut v: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
    v.sort_by_key(|e| e.file_name());
    for e in v {
        let t = e.file_type().unwrap();
        if t.is_file() {
            return e.path();
        }
        if t.is_dir() {
            return first_file(&e.path());
        }
    }
    panic!("no file below {}", dir.display())
}

/// A snapshot is hard links to the live mirror, never changed once made,
/// outlives the live mirror's files, refuses what was not verified, and is
/// not deleted while an image records it.
#[test]
fn snapshots_are_hard_links_that_outlive_the_live_mirror() {
    let Some((f, _heavy)) = fixture::begin() else {
        return;
    };
    let w = f.work("snapshots_are_hard_links_that_outlive_the_live_mirror");
    let store = f.store_copy(w.path());
    let list = json(ok(cairn(&store, &["mirror", "snapshot", "list", "--json"])));
    assert_eq!(list["snapshots"][0]["name"], SNAPSHOT, "{list}");

    let made = json(ok(cairn(
        &store,
        &["mirror", "snapshot", "create", "second", "--json"],
    )));
    assert!(
        made["pool-files"]["debian"].as_u64().unwrap() > 50,
        "{made}"
    );
    let live = first_file(&store.join("mirror/debian/pool"));
    let rel = live.strip_prefix(store.join("mirror/debian")).unwrap();
    let snap = store.join("snapshots/second/mirror/debian").join(rel);
    assert_eq!(
        fs::metadata(&live).unwrap().ino(),
        fs::metadata(&snap).unwrap().ino(),
        "{} is not a hard link of {}",
        snap.display(),
        live.display()
    );
    // Never changed once made; names are names.
    let e = fails(cairn(&store, &["mirror", "snapshot", "create", "second"]));
    assert!(e.contains("snapshot second exists"), "{e}");
    let e = fails(cairn(&store, &["mirror", "snapshot", "create", "../up"]));
    assert!(e.contains("snapshot name \"../up\""), "{e}");
    assert!(!store.join("up").exists() && !store.join("snapshots/up").exists());
    let e = fails(cairn(&store, &["build", "--snapshot", "nosuch"]));
    assert!(e.contains("no snapshot nosuch"), "{e}");

    // The live mirror drops the file: the snapshot keeps it.
    let bytes = fs::read(&live).unwrap();
    fs::remove_file(&live).unwrap();
    assert_eq!(fs::read(&snap).unwrap(), bytes);
    // (A snapshot of a mirror that lacks a file it should have is refused.)
    let e = fails(cairn(&store, &["mirror", "snapshot", "create", "lacking"]));
    assert!(
        e.contains(&live.display().to_string()) && e.contains("missing"),
        "{e}"
    );
    fs::hard_link(&snap, &live).unwrap();

    // A snapshot a build holds is not deleted under it.
    let lock = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(store.join("snapshots/.second.lock"))
        .unwrap();
    lock.lock_shared().unwrap();
    let e = fails(cairn(&store, &["mirror", "snapshot", "delete", "second"]));
    assert!(e.contains("snapshot second is in use"), "{e}");
    drop(lock);

    // Images record the fixture's snapshot: not deleted without --force.
    let e = fails(cairn(&store, &["mirror", "snapshot", "delete", SNAPSHOT]));
    assert!(
        e.contains("recorded input of") && e.contains("default/") && e.contains("--force"),
        "{e}"
    );
    ok(cairn(&store, &["mirror", "snapshot", "delete", "second"]));
    assert!(!store.join("snapshots/second").exists());
    let list = json(ok(cairn(&store, &["mirror", "snapshot", "list", "--json"])));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");

    // A pool file changed since the mirror verified it is not captured.
    let other = first_file(&store.join("mirror/debian-security/pool"));
    let st = Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let e = fails(cairn(&store, &["mirror", "snapshot", "create", "third"]));
    assert!(
        e.contains(&other.display().to_string()) && e.contains("cairn mirror verify"),
        "{e}"
    );
    assert!(!store.join("snapshots/third").exists());
    let left: Vec<_> = fs::read_dir(store.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(left, [SNAPSHOT], "a refused snapshot left {left:?}");
    assert!(
        !store.join("snapshots/.nosuch.lock").exists(),
        "a build from no snapshot made its lock"
    );
}

/// The shared `default` image, rebuilt from its snapshot after the live
/// mirror moved on (a new sync of another selection removed most of the
/// pool files), three days later by the clock, in another store (another
/// work directory), with one compressor thread instead of every core, on a
/// hardened host (umask 077, another locale and time zone; the shared
/// image was built under umask 022): squashfs, kernel and initrd are the
/// image's bytes, and what others read is readable.
#[test]
fn an_image_rebuilds_bit_for_bit_later_elsewhere_after_the_mirror_moved_on() {
    if !need_faketime() {
        return;
    }
    // One core: a rebuild is a bootstrap, one process at a time for most
    // of its time; a VM proof runs beside it.
    let Some((f, _core)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("an_image_rebuilds_bit_for_bit_later_elsewhere_after_the_mirror_moved_on");
    let store = f.store_copy(w.path());
    let m = fixture::manifest(&f.default_img);
    assert_eq!(m["source"]["snapshot"], SNAPSHOT, "{m}");
    let dates: Vec<i64> = m["source"]["releases"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|s| s.as_object().unwrap().values())
        .filter_map(|r| r["date"].as_i64())
        .collect();
    assert_eq!(m["source"]["epoch"].as_i64(), dates.iter().copied().max());

    // The live mirror moves on: only `less` and the base set.
    ok(cairn_elsewhere(
        &store,
        &["mirror", "sync", "--package", "less", "--jobs", "8"],
    ));
    let e = fails(cairn(&store, &["build", "default"]));
    assert!(e.contains("lacks"), "the live mirror did not move on: {e}");
    // What the hardened host wrote into the store is what a web server's
    // workers (www-data) and apt's sandbox (_apt) can read.
    ok(cairn_elsewhere(&store, &["publish", "default"]));
    let gen_dir = fs::canonicalize(store.join("mirror/debian/dists")).unwrap();
    for (p, want) in [
        (gen_dir.clone(), 0o755),
        (gen_dir.join(fixture::host_suite()).join("InRelease"), 0o644),
        (store.join("images/default/index.json"), 0o644),
        (store.join("images/default/index.json.sig"), 0o644),
    ] {
        let mode = fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, want, "{} is {mode:o}", p.display());
    }

    let keep = w.path().join("rebuilt");
    let out = cairn_elsewhere(
        &store,
        &[
            "image",
            "rebuild",
            "default",
            "--check",
            "--processors",
            "1",
            "--keep",
            keep.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = json(String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(r["reproducible"], true, "{r}");
    assert!(r["inputs-changed"].as_array().unwrap().is_empty(), "{r}");
    // Checked here too, not only by cairn: the kept files against the
    // image's own signed sums.
    for file in ["filesystem.squashfs", "vmlinuz", "initrd.img"] {
        assert_eq!(
            sha256(&keep.join("image").join(file)),
            recorded_sha256(&f.default_img, file),
            "{file}"
        );
    }
    // Every directory a service of the system walks through is
    // everyone's (under umask 077 they were drwx------ once).
    let sq = keep.join("image/filesystem.squashfs");
    for (p, m) in modes_in(
        &sq,
        &[
            "/",
            "/etc",
            "/usr",
            "/usr/lib",
            "/usr/lib/cairn",
            "/usr/lib/live",
            "/var",
            "/etc/cairn",
        ],
    ) {
        assert_eq!(m, "drwxr-xr-x root/root", "{p}");
    }
    // The image's name is not in it: /etc/cairn/image.env comes from the
    // kernel command line at boot.
    let ls = Command::new("unsquashfs")
        .args(["-lls", "-d", ""])
        .arg(f.default_img.join("filesystem.squashfs"))
        .arg("etc/cairn/image.env")
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("etc/cairn/image.env -> /run/cairn/image.env"),
        "{ls}"
    );
    // The snapshot build's waiver of Valid-Until stays on the build host:
    // the machines' apt still refuses an expired (replayed) Release.
    let conf = Command::new("unsquashfs")
        .args(["-cat"])
        .arg(f.default_img.join("filesystem.squashfs"))
        .arg("etc/apt/apt.conf.d/99mmdebstrap")
        .output()
        .unwrap();
    let conf = String::from_utf8_lossy(&conf.stdout);
    assert!(
        conf.contains("Acquire::Languages") && !conf.contains("Valid-Until"),
        "{conf}"
    );
}

/// A snapshot changed after the build (a mirror removed from it): the
/// rebuild says which input changed, names the first differing file inside
/// the squashfs, and exits 3.
#[test]
fn rebuild_check_names_the_first_differing_file_when_the_snapshot_changed() {
    // One core: rebuilds, one process at a time for most of their time.
    let Some((f, _core)) = fixture::begin_vm() else {
        return;
    };
    let w = f.work("rebuild_check_names_the_first_differing_file_when_the_snapshot_changed");
    let store = f.store_copy(w.path());
    // Only a signed image is rebuilt: its manifest chooses the inputs. (A
    // copy of links, the manifest replaced, not written through.)
    let t = w.path().join("tampered");
    let st = Command::new("cp")
        .arg("-al")
        .arg(&f.default_img)
        .arg(&t)
        .status()
        .unwrap();
    assert!(st.success());
    let mut m = fixture::manifest(&t);
    m["source"]["epoch"] = 0.into();
    fs::remove_file(t.join("manifest.json")).unwrap();
    fs::write(t.join("manifest.json"), m.to_string()).unwrap();
    let out = cairn(
        &store,
        &["image", "rebuild", t.to_str().unwrap(), "--check"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{}",
        text(&out)
    );
    let snap = store.join("snapshots").join(SNAPSHOT).join("mirror");
    fs::remove_dir_all(snap.join("debian-security")).unwrap();
    fs::remove_dir_all(snap.join(".debian-security.work")).unwrap();
    // A build refuses a snapshot that no longer holds what it recorded.
    let out = cairn(&store, &["build", "default", "--snapshot", SNAPSHOT]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no longer holds what it recorded"),
        "{}",
        text(&out)
    );
    // A rebuild check goes on, and says what changed.
    let out = cairn(
        &store,
        &["image", "rebuild", "default", "--check", "--json"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let r = json(String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(r["reproducible"], false, "{r}");
    assert!(
        r["inputs-changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "debian-security/bookworm-security: gone"),
        "{r}"
    );
    let first = r["first-difference"].as_str().unwrap_or_default();
    assert!(
        first.starts_with("filesystem.squashfs: /") && first.len() > 24,
        "{r}"
    );
    // And in words.
    let out = cairn(&store, &["image", "rebuild", "default", "--check"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("first difference: filesystem.squashfs: /") && t.contains("NOT REPRODUCED"),
        "{t}"
    );
    // A profile that is not the image's is refused before any work.
    let e = fails(cairn(
        &store,
        &[
            "image",
            "rebuild",
            "default",
            "--check",
            "--profile",
            f.webtest.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("was built from profile default"), "{e}");
}

/// The same parent, mirror and profile make the same delta layer, three
/// days later by the clock, in another store, with one compressor thread,
/// on a hardened host (umask 077, another locale and time zone); the
/// delta's top (the `/` machines see) is everyone's.
#[test]
fn an_upgrade_delta_is_made_bit_for_bit_again() {
    if !need_faketime() {
        return;
    }
    let Some(f) = fixture::get() else {
        return;
    };
    let u = f.upgraded();
    let _heavy = crate::support::heavy();
    let w = f.work("an_upgrade_delta_is_made_bit_for_bit_again");
    let store = fixture::copy_store(&u.store, w.path());
    let delta_dir = store
        .join("images/webtest")
        .join(u.delta.file_name().unwrap());
    fs::remove_dir_all(&delta_dir).unwrap();
    let out = cairn_elsewhere(
        &store,
        &[
            "upgrade",
            f.webtest2.to_str().unwrap(),
            "--processors",
            "1",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = json(String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(r["layer"], "delta", "{r}");
    let again = PathBuf::from(r["path"].as_str().unwrap());
    let layer = r["layers"].as_array().unwrap().last().unwrap();
    let layer = layer.as_str().unwrap();
    assert_eq!(
        sha256(&again.join(layer)),
        recorded_sha256(&u.delta, u.delta_layer()),
        "the delta layer"
    );
    for file in ["vmlinuz", "initrd.img"] {
        assert_eq!(
            sha256(&again.join(file)),
            recorded_sha256(&u.delta, file),
            "{file}"
        );
    }
    for (p, m) in modes_in(&again.join(layer), &["/"]) {
        assert_eq!(m, "drwxr-xr-x root/root", "{p} of the delta");
    }
}
