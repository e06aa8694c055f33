//! Delivery: `cairn publish` writes a signed index, Debian's nginx serves
//! the store on 127.0.0.1, `cairn pull` takes what a boot partition lacks.
//! Here on a boot partition's tree (no VM); in `fleet_vm` machines do it
//! by themselves.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use cairn::trust::keys;

use crate::support::nginx::Nginx;
use crate::support::{cairn, need_tools, ok, skip, text};

pub const V0: &str = "20261130T000001Z";
pub const V1: &str = "20261201T000001Z";
pub const V2: &str = "20261202T000001Z";

/// `n` bytes no compressor shrinks, the same for the same seed.
pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A sealed image of profile `web` made of made-up files: enough for
/// signatures, hashes and dm-verity trees, nothing that boots.
pub(crate) fn fake_image(
    store: &Path,
    key: &keys::SigningKey,
    version: &str,
    parent: Option<&str>,
    layers: &[(&str, &[u8])],
) -> PathBuf {
    let dir = store.join("images/web").join(version);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("vmlinuz"), format!("kernel of {version}\n")).unwrap();
    fs::write(dir.join("initrd.img"), format!("initrd of {version}\n")).unwrap();
    for (n, b) in layers {
        fs::write(dir.join(n), b).unwrap();
    }
    let names: Vec<String> = layers.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let parent = parent.map_or("null".to_string(), |p| format!("\"web/{p}\""));
    fs::write(
        dir.join("manifest.json"),
        format!(
            r#"{{"schema-version":1,"profile":"web","profile-hash":"h","profile-commit":null,"version":"{version}","suite":"s","architecture":"amd64","host-type":"virtual","kernel":"k","kernel-cmdline":["quiet"],"compression":"zstd","level":null,"bootable":true,"parent":{parent},"layers":[{}],"packages":[],"files":{{}},"data":[],"built-at":0,"build-seconds":0.0,"signed-by":null,"cairn-version":"0"}}"#,
            names.join(",")
        ),
    )
    .unwrap();
    cairn::image::seal(&dir, key).unwrap();
    dir
}

pub(crate) struct Setup {
    pub d: tempfile::TempDir,
    pub store: PathBuf,
    pub key: keys::SigningKey,
    pub base: Vec<u8>,
    pub layer2: Vec<u8>,
}

impl Setup {
    /// A store with `web` V1 (one layer) and V2 (V1's layer and a delta of
    /// `delta` bytes), published.
    pub fn new(delta: usize) -> Option<Setup> {
        if need_tools(&["gpg", "gpgv", "veritysetup", "nginx"]) {
            return None;
        }
        // Served by nginx's www-data workers: not a private tempdir.
        let d = crate::support::served_tempdir();
        let store = d.path().join("store");
        ok(cairn(&store, &["key", "generate", "--bits", "2048"]));
        let key = keys::load(&store).unwrap();
        let base = noise(1, 2 << 20);
        let layer2 = noise(2, delta);
        fake_image(&store, &key, V1, None, &[("filesystem.squashfs", &base)]);
        fake_image(
            &store,
            &key,
            V2,
            Some(V1),
            &[
                ("filesystem.squashfs", &base),
                ("layer-2.squashfs", &layer2),
            ],
        );
        ok(cairn(&store, &["publish", "web"]));
        Some(Setup {
            d,
            store,
            key,
            base,
            layer2,
        })
    }

    /// A boot partition's tree holding V1, booted fine (cairn_good), with
    /// `tries` boot tries for a new default.
    pub fn boot_dir(&self, name: &str) -> PathBuf {
        let b = self.d.path().join(name);
        fs::create_dir_all(b.join("images/web")).unwrap();
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(self.store.join("images/web").join(V1))
            .arg(b.join("images/web"))
            .status()
            .unwrap();
        assert!(st.success());
        fs::create_dir_all(b.join("boot/grub")).unwrap();
        let mut vars = Vec::new();
        cairn::boot::env::update(
            &mut vars,
            &[("cairn_good", &format!("found>/images/web/{V1}"))],
        );
        cairn::boot::env::save(&b.join("boot/grub/grubenv"), &vars).unwrap();
        // The whole record a disk cairn made holds (a partial one is not
        // the disk's: its tries would not be taken).
        let record = serde_json::json!({
            "menu": {"timeout": 5, "tries": 2, "default-profile": null},
            "data-label": null,
            "default-entry": format!("web-{V1}"),
            "signed-by": "0123",
            "boot-uuid": "1234-5678",
        });
        fs::write(b.join("boot/cairn.json"), record.to_string()).unwrap();
        b
    }

    pub fn pull(&self, boot: &Path, urls: &[&str], more: &[&str]) -> Output {
        let pubkey = self.key.public_key.to_str().unwrap().to_string();
        let mut a = vec![
            "pull",
            "--boot-dir",
            boot.to_str().unwrap(),
            "--profile",
            "web",
            "--key",
            &pubkey,
            "--json",
        ];
        for u in urls {
            a.push("--url");
            a.push(u);
        }
        a.extend(more);
        cairn(&self.store, &a)
    }
}

pub(crate) fn json(o: Output) -> serde_json::Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub(crate) fn env_of(boot: &Path) -> String {
    String::from_utf8_lossy(&fs::read(boot.join("boot/grub/grubenv")).unwrap())
        .trim_end_matches('#')
        .to_string()
}

/// Every file below `dir` but cairn's own state: path → bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.strip_prefix(dir).unwrap().starts_with("cairn") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A delta is a small download: the layer it shares with the image on the
/// disk is checked by hash and linked, never fetched; the new image is the
/// default on trial with the disk's tries; a second pull fetches nothing.
#[test]
fn a_machine_pulls_only_what_its_disk_lacks() {
    let Some(s) = Setup::new(256 << 10) else {
        return;
    };
    let nginx = Nginx::start(&s.store, 0, "");
    let boot = s.boot_dir("boot");
    let url = nginx.url();
    let r = json(s.pull(&boot, &[&url], &["--machine-id", "m1"]));
    assert_eq!(r["outcome"], "staged", "{r}");
    assert_eq!(r["version"], V2, "{r}");
    assert_eq!(r["entry"], format!("found>/images/web/{V2}"), "{r}");
    assert!(
        r["bytes-reused"].as_u64().unwrap() >= s.base.len() as u64,
        "{r}"
    );
    let hits = nginx.hits();
    assert!(
        hits.iter().all(|h| h.method == "GET" && h.status == 200),
        "{hits:?}"
    );
    let got: Vec<&str> = hits
        .iter()
        .filter(|h| h.path.starts_with(&format!("/images/web/{V2}/")))
        .map(|h| h.path.rsplit('/').next().unwrap())
        .collect();
    assert!(got.contains(&"layer-2.squashfs"), "{got:?}");
    assert!(
        !got.iter().any(|n| n.starts_with("filesystem.squashfs")),
        "the shared layer (or its hash tree) went over the wire: {got:?}"
    );
    let over_wire: u64 = hits
        .iter()
        .filter(|h| h.path.starts_with(&format!("/images/web/{V2}/")))
        .map(|h| h.bytes)
        .sum();
    assert_eq!(over_wire, r["bytes-fetched"].as_u64().unwrap(), "{hits:?}");
    assert!(
        over_wire < s.layer2.len() as u64 + (64 << 10),
        "{over_wire} bytes for a {}-byte delta",
        s.layer2.len()
    );
    use std::os::unix::fs::MetadataExt;
    let ino = |v: &str| {
        fs::metadata(boot.join("images/web").join(v).join("filesystem.squashfs"))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(V1), ino(V2), "the shared layer is one file on the disk");
    let env = env_of(&boot);
    assert!(
        env.contains(&format!("cairn_trial=found>/images/web/{V2}\n"))
            && env.contains("cairn_left=2\n")
            && env.contains(&format!("cairn_good=found>/images/web/{V1}\n")),
        "{env}"
    );
    // What `cairn status` says of that disk.
    let pubkey = s.key.public_key.to_str().unwrap();
    let st = json(cairn(
        &s.store,
        &[
            "status",
            "--boot-dir",
            boot.to_str().unwrap(),
            "--key",
            pubkey,
            "--json",
        ],
    ));
    assert_eq!(st["schema-version"], 1, "{st}");
    assert_eq!(st["next-boot"], format!("found>/images/web/{V2}"), "{st}");
    assert_eq!(st["tries-left"], 2, "{st}");
    assert_eq!(st["last-pull"]["outcome"], "staged", "{st}");
    let imgs = st["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 2, "{st}");
    assert!(imgs.iter().all(|i| i["signed"] == true), "{st}");
    assert!(
        imgs.iter()
            .any(|i| i["version"] == V2 && i["on-trial"] == true),
        "{st}"
    );
    // Again: the index only.
    nginx.clear();
    let r = json(s.pull(&boot, &[&url], &["--machine-id", "m1"]));
    assert_eq!(r["outcome"], "already-there", "{r}");
    assert!(
        nginx.hits().iter().all(|h| h.path.contains("index.json")),
        "{:?}",
        nginx.hits()
    );
    // --dry-run on another disk: the plan, nothing written.
    let other = s.boot_dir("other");
    let before = snapshot(&other);
    let r = json(s.pull(&other, &[&url], &["--machine-id", "m1", "--dry-run"]));
    assert_eq!(r["outcome"], "planned", "{r}");
    let planned = r["bytes-fetched"].as_u64().unwrap();
    assert!(
        planned >= s.layer2.len() as u64 && planned < s.layer2.len() as u64 + (64 << 10),
        "{r}"
    );
    assert_eq!(before, snapshot(&other));
    assert!(!other.join("cairn").exists());
}

/// What a hostile network or a stale mirror serves is refused, and the
/// boot disk is exactly as it was: an index signed by another key, one
/// past its expiry, one older than one already seen (replay), a layer the
/// server cuts short.
#[test]
fn refusals_leave_the_boot_disk_as_it_was() {
    let Some(s) = Setup::new(256 << 10) else {
        return;
    };
    let boot = s.boot_dir("boot");
    let before = snapshot(&boot);
    let now = cairn::unix_now();
    let publish = |store: &Path, key: &keys::SigningKey, now: i64, valid: i64, roll: u8| {
        cairn::fleet::index::publish(
            store,
            key,
            "web",
            &cairn::fleet::index::PublishOptions {
                valid_for: valid,
                rollout: [(V2.to_string(), roll)].into(),
                now,
            },
        )
        .unwrap()
    };
    let refused = |store: &Path, what: &str| {
        let nginx = Nginx::start(store, 0, "");
        let o = s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(before, snapshot(&boot), "{what} changed the boot disk");
        // Tampering, not an outage: the exit code says so.
        if what != "a cut layer" {
            assert_eq!(o.status.code(), Some(3), "{what}: {err}");
        }
        err
    };

    // Another key.
    let other = s.d.path().join("other");
    ok(cairn(&other, &["key", "generate", "--bits", "2048"]));
    let other_key = keys::load(&other).unwrap();
    let st = std::process::Command::new("cp")
        .args(["-al"])
        .arg(s.store.join("images"))
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_file(other.join("images/web/index.json")).unwrap();
    publish(&other, &other_key, now, 86400, 100);
    let err = refused(&other, "another key");
    assert!(
        err.contains("signature missing, bad, or by another key"),
        "{err}"
    );

    // Expired: published ten days ago, valid for one.
    publish(&s.store, &s.key, now - 10 * 86400, 86400, 100);
    let err = refused(&s.store, "an expired index");
    assert!(err.contains("expired"), "{err}");

    // Replay: an index is seen (V2 held back, nothing fetched), then an
    // older one is served again.
    publish(&s.store, &s.key, now, 86400, 100);
    let old = fs::read(s.store.join("images/web/index.json")).unwrap();
    let old_sig = fs::read(s.store.join("images/web/index.json.sig")).unwrap();
    publish(&s.store, &s.key, now + 1, 86400, 0);
    {
        let nginx = Nginx::start(&s.store, 0, "");
        let r = json(s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]));
        assert_eq!(r["outcome"], "held-back", "{r}");
        assert_eq!(before, snapshot(&boot));
    }
    fs::write(s.store.join("images/web/index.json"), &old).unwrap();
    fs::write(s.store.join("images/web/index.json.sig"), &old_sig).unwrap();
    let err = refused(&s.store, "a replayed index");
    assert!(err.contains("refusing a replayed index"), "{err}");

    // A layer cut short by the server: it is fetched (resumed, retried) and
    // never matches the signed index. (Published later than all of the
    // above: the old index put back is the floor of its serial.)
    publish(&s.store, &s.key, now + 10, 86400, 100);
    let layer = s.store.join(format!("images/web/{V2}/layer-2.squashfs"));
    fs::remove_file(&layer).unwrap();
    fs::write(&layer, &s.layer2[..s.layer2.len() / 2]).unwrap();
    let err = refused(&s.store, "a cut layer");
    assert!(
        err.contains("could not be fetched and verified") && err.contains("layer-2.squashfs"),
        "{err}"
    );
    assert!(!boot.join("images/web").join(V2).exists());

    // An index served without its signature: refused data, as a bad
    // signature is (it was an outage, exit 1).
    fs::remove_file(&layer).unwrap();
    fs::write(&layer, &s.layer2).unwrap();
    publish(&s.store, &s.key, now + 20, 86400, 100);
    fs::remove_file(s.store.join("images/web/index.json.sig")).unwrap();
    let err = refused(&s.store, "an index without its signature");
    assert!(err.contains("served without its signature"), "{err}");

    // An image the index lists whose own signatures are another key's: it
    // arrives whole and is refused at its manifest, leaving no staging
    // directory behind.
    let v2 = s.store.join("images/web").join(V2);
    for f in fs::read_dir(&v2).unwrap().flatten() {
        let n = f.file_name().to_string_lossy().into_owned();
        if n.ends_with(".sig") || n.starts_with("SHA") || n == "BOOTSUMS" {
            fs::remove_file(f.path()).unwrap();
        }
    }
    cairn::image::seal(&v2, &other_key).unwrap();
    publish(&s.store, &s.key, now + 30, 86400, 100);
    let err = refused(&s.store, "an image signed by another key");
    assert!(err.contains("the fetched image"), "{err}");
    let left: Vec<_> = fs::read_dir(boot.join("images/web"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [V1], "a refused pull left {left:?}");
}

/// A pull killed with SIGKILL mid-layer leaves the disk as it was (the
/// image is staged in a dot directory GRUB's menu never lists, the GRUB
/// environment untouched); the next pull resumes where it stopped.
#[test]
fn a_killed_pull_leaves_the_disk_bootable_and_the_next_resumes() {
    let Some(s) = Setup::new(6 << 20) else {
        return;
    };
    let nginx = Nginx::start(&s.store, 0, "limit_rate 1m;");
    let boot = s.boot_dir("boot");
    let before = snapshot(&boot);
    let sha = cairn::trust::hash::sha256_hex(&s.layer2);
    let partial = boot.join("cairn/partial").join(&sha);
    let pubkey = s.key.public_key.to_str().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--quiet", "pull", "--boot-dir"])
        .arg(&boot)
        .args(["--profile", "web", "--key", &pubkey, "--machine-id", "m1"])
        .args(["--url", &nginx.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while fs::metadata(&partial).map_or(0, |m| m.len()) < (2 << 20) {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the layer never started to arrive"
        );
        assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let had = fs::metadata(&partial).unwrap().len();
    assert_eq!(
        before,
        snapshot(&boot),
        "a killed pull changed more than cairn/"
    );
    assert!(!boot.join("images/web").join(V2).exists());
    // nginx logs the killed transfer once it sees the connection closed
    // (on a loaded machine, a while after the kill): only then is the
    // log cleared, so the next request is alone in it.
    let t = std::time::Instant::now();
    while !nginx
        .hits()
        .iter()
        .any(|h| h.path.ends_with("/layer-2.squashfs"))
    {
        assert!(
            t.elapsed().as_secs() < 30,
            "nginx never logged the killed transfer"
        );
    }
    nginx.clear();
    let r = json(s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]));
    assert_eq!(r["outcome"], "staged", "{r}");
    let layer_hits: Vec<_> = nginx
        .hits()
        .into_iter()
        .filter(|h| h.path.ends_with("/layer-2.squashfs"))
        .collect();
    assert_eq!(layer_hits.len(), 1, "{layer_hits:?}");
    assert_eq!(layer_hits[0].status, 206, "{layer_hits:?}");
    assert!(
        layer_hits[0].range.starts_with("bytes=")
            && layer_hits[0].bytes <= s.layer2.len() as u64 - had,
        "resumed from {had}: {layer_hits:?}"
    );
    assert!(
        boot.join("images/web")
            .join(V2)
            .join("layer-2.squashfs")
            .is_file()
    );
    assert!(!boot.join(format!("images/web/.pull-{V2}")).exists());
}

/// The index of the first base URL that serves a valid one is taken (a
/// dead or stale mirror is passed over, and said so); a staged rollout
/// holds most machines back at first and takes a stable share of them.
#[test]
fn failover_between_urls_and_staged_rollouts() {
    let Some(s) = Setup::new(64 << 10) else {
        return;
    };
    let nginx = Nginx::start(&s.store, 0, "");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/", l.local_addr().unwrap().port())
    };
    ok(cairn(
        &s.store,
        &["publish", "web", "--rollout", &format!("{V2}=0")],
    ));
    let boot = s.boot_dir("boot");
    let r = json(s.pull(&boot, &[&dead, &nginx.url()], &["--machine-id", "m1"]));
    assert_eq!(r["outcome"], "held-back", "{r}");
    assert_eq!(r["newest"], V2, "{r}");
    assert_eq!(r["url"], nginx.url().trim_end_matches('/'), "{r}");
    assert!(
        r["passed-over"][0]
            .as_str()
            .unwrap()
            .starts_with(dead.trim_end_matches('/')),
        "{r}"
    );
    ok(cairn(
        &s.store,
        &["publish", "web", "--rollout", &format!("{V2}=50")],
    ));
    let takes = |id: &str| {
        let r = json(s.pull(&boot, &[&nginx.url()], &["--machine-id", id, "--dry-run"]));
        r["outcome"] == "planned"
    };
    let ids: Vec<String> = (0..24).map(|i| format!("machine-{i}")).collect();
    let taken: Vec<bool> = ids.iter().map(|i| takes(i)).collect();
    let n = taken.iter().filter(|t| **t).count();
    assert!((4..=20).contains(&n), "{n} of 24 at 50%");
    // Stable: the same machines again.
    assert_eq!(taken, ids.iter().map(|i| takes(i)).collect::<Vec<_>>());
    ok(cairn(
        &s.store,
        &["publish", "web", "--rollout", &format!("{V2}=100")],
    ));
    let r = json(s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]));
    assert_eq!(r["outcome"], "staged", "{r}");
    // nginx serves the published parts only: never the keys, never a dot path.
    for p in [
        "keys/signing.pub",
        "images/web/.pull-x/manifest.json",
        "keys/",
    ] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
        use std::io::{Read, Write};
        write!(conn, "GET /{p} HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 404"), "/{p}: {resp}");
    }
}

/// On a small boot partition (a 6 MiB tmpfs), room is made by removing
/// the profile's oldest image — never the one that booted fine; when even
/// that is not enough, nothing is removed.
#[test]
fn room_is_made_from_old_images_never_the_good_one() {
    if !crate::support::is_root() {
        crate::support::skip("needs root (a small tmpfs as the boot partition)");
        return;
    }
    let Some(s) = Setup::new(1536 << 10) else {
        return;
    };
    let nginx = Nginx::start(&s.store, 0, "");
    let boot = s.d.path().join("small");
    fs::create_dir_all(&boot).unwrap();
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=6m",
            "cairn-test",
            boot.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(boot.clone());
    // V0 (an older image, 2 MiB of its own), V1 (booted fine).
    let v0 = fake_image(
        &s.d.path().join("old"),
        &s.key,
        V0,
        None,
        &[("filesystem.squashfs", &noise(9, 2 << 20))],
    );
    let tree = s.boot_dir("tree");
    for (from, to) in [
        (tree.join("images"), boot.clone()),
        (tree.join("boot"), boot.clone()),
        (v0, boot.join("images/web")),
    ] {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let r = json(s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]));
    assert_eq!(r["outcome"], "staged", "{r}");
    assert_eq!(
        r["removed"],
        serde_json::json!([format!("/images/web/{V0}")]),
        "{r}"
    );
    assert!(
        boot.join("images/web")
            .join(V1)
            .join("filesystem.squashfs")
            .is_file()
    );
    // No image on the disk has booted well (cairn_good cleared): room is
    // never made, whatever would fit.
    let v3 = "20261203T000001Z";
    let envp = boot.join("boot/grub/grubenv");
    let good_env = fs::read(&envp).unwrap();
    let mut vars = cairn::boot::env::parse(&good_env).unwrap();
    cairn::boot::env::update(&mut vars, &[("cairn_good", "")]);
    cairn::boot::env::save(&envp, &vars).unwrap();
    fake_image(
        &s.store,
        &s.key,
        v3,
        None,
        &[("filesystem.squashfs", &noise(4, 3 << 20))],
    );
    ok(cairn(&s.store, &["publish", "web"]));
    let before = snapshot(&boot);
    let o = s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no image on it has booted well yet"),
        "{}",
        text(&o)
    );
    assert_eq!(before, snapshot(&boot));
    fs::write(&envp, &good_env).unwrap();
    // A newer image too large for the disk even without V1's trial: refused,
    // nothing removed.
    fake_image(
        &s.store,
        &s.key,
        v3,
        None,
        &[("filesystem.squashfs", &noise(3, 5 << 20))],
    );
    ok(cairn(&s.store, &["publish", "web"]));
    let before = snapshot(&boot);
    let o = s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing was removed"),
        "{}",
        text(&o)
    );
    assert_eq!(before, snapshot(&boot));
}

/// What someone with the boot partition plants for a pull (a tree pulled
/// with --boot-dir is not mounted nosymfollow): a symlinked partial
/// directory is refused, a symlinked partial file is replaced, never
/// written through; leftovers of other versions' pulls are removed.
#[test]
fn planted_links_and_leftovers_on_the_boot_disk_are_never_followed() {
    let Some(s) = Setup::new(256 << 10) else {
        return;
    };
    let nginx = Nginx::start(&s.store, 0, "");
    let boot = s.boot_dir("boot");
    let victim_dir = s.d.path().join("victim");
    fs::create_dir_all(&victim_dir).unwrap();
    let victim = victim_dir.join("victim.txt");
    fs::write(&victim, "untouched\n").unwrap();
    let layer_sha = cairn::trust::hash::sha256_hex(&s.layer2);
    std::os::unix::fs::symlink(&victim, victim_dir.join(&layer_sha)).unwrap();
    fs::create_dir_all(boot.join("cairn")).unwrap();
    std::os::unix::fs::symlink(&victim_dir, boot.join("cairn/partial")).unwrap();
    let o = s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is a symbolic link"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert!(!boot.join("images/web").join(V2).exists());
    // A real partial directory holding a link named like the layer, and
    // leftovers of an older pull: the link is replaced, the rest removed.
    fs::remove_file(boot.join("cairn/partial")).unwrap();
    fs::create_dir_all(boot.join("cairn/partial")).unwrap();
    std::os::unix::fs::symlink(&victim, boot.join("cairn/partial").join(&layer_sha)).unwrap();
    let junk = "ab".repeat(32);
    fs::create_dir_all(boot.join("cairn/fetched")).unwrap();
    fs::write(boot.join("cairn/fetched").join(&junk), vec![7u8; 100_000]).unwrap();
    fs::write(boot.join("cairn/partial").join(&junk), vec![7u8; 100_000]).unwrap();
    let stale = boot.join("images/web/.pull-20250101T000000Z");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("filesystem.squashfs"), vec![7u8; 100_000]).unwrap();
    let r = json(s.pull(&boot, &[&nginx.url()], &["--machine-id", "m1"]));
    assert_eq!(r["outcome"], "staged", "{r}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert_eq!(
        fs::read(boot.join("images/web").join(V2).join("layer-2.squashfs")).unwrap(),
        s.layer2
    );
    assert!(!boot.join("cairn/fetched").join(&junk).exists());
    assert!(!boot.join("cairn/partial").join(&junk).exists());
    assert!(!stale.exists());
}

/// The build host's units (dist/systemd) are units systemd accepts, and
/// the command they run is one cairn takes: with the test's binary in
/// ExecStart, `systemd-analyze verify` passes, and the command refuses a
/// configuration without [cycle] by naming it (not "nothing to do").
#[test]
fn the_build_hosts_cycle_units_are_valid_and_their_command_is_real() {
    if need_tools(&["systemd-analyze"]) {
        return;
    }
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd");
    let d = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_cairn");
    let mut exec = None;
    let mut gate = None;
    for u in [
        "cairn-cycle.service",
        "cairn-cycle.timer",
        "cairn-gate.service",
        "cairn-gate.timer",
    ] {
        let t = fs::read_to_string(top.join(u)).unwrap();
        if let Some(l) = t.lines().find(|l| l.starts_with("ExecStart=")) {
            let e = Some(l["ExecStart=".len()..].to_string());
            if u.starts_with("cairn-gate") {
                gate = e;
            } else {
                exec = e;
            }
        }
        fs::write(
            d.path().join(u),
            t.replace("ExecStart=/usr/bin/cairn", &format!("ExecStart={bin}"))
                .replace("ConditionPathExists=/etc/cairn/cairn.toml\n", ""),
        )
        .unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(d.path().join("cairn-cycle.timer"))
        .arg(d.path().join("cairn-cycle.service"))
        .arg(d.path().join("cairn-gate.timer"))
        .arg(d.path().join("cairn-gate.service"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exec = exec.expect("cairn-cycle.service has an ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args, ["cycle", "--config", "/etc/cairn/cairn.toml"]);
    let gate = gate.expect("cairn-gate.service has an ExecStart");
    let gate: Vec<&str> = gate.split_whitespace().skip(1).collect();
    assert_eq!(
        gate,
        ["cycle", "--gate-only", "--config", "/etc/cairn/cairn.toml"]
    );
    // The same arguments, on a configuration without [cycle]: refused,
    // naming the file.
    let conf = d.path().join("cairn.toml");
    fs::write(&conf, "schema-version = 1\nstore = \"/srv/x\"\n").unwrap();
    let o = cairn(d.path(), &["cycle", "--config", conf.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no [cycle] section") && e.contains("cairn.toml"),
        "{e}"
    );
    // The gate needs no [cycle]: with no reports and no rollout, nothing
    // to do, and it says so (on a store without a key too).
    let mut g = vec!["cycle"];
    g.extend(&gate[1..gate.len() - 1]);
    g.push(conf.to_str().unwrap());
    g.push("--json");
    let out = ok(cairn(&d.path().join("store"), &g));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["rollouts"].as_array().unwrap().is_empty()
            && v["reports"]["taken"].as_array().unwrap().is_empty(),
        "{v}"
    );
    // An unknown section is refused, named with its line.
    fs::write(&conf, "schema-version = 1\n[other]\n").unwrap();
    let o = cairn(d.path(), &["cycle", "--config", conf.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("other") && e.contains("line 2"), "{e}");
    fs::write(&conf, "schema-version = 1\n[cycle]\nprofiles = []\n").unwrap();
    let o = cairn(d.path(), &["cycle", "--config", conf.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("profiles is empty"));
}

/// The SHA-256 of a file.
fn file_sha256(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// `e2fsck -fn` of the disk's boot partition, through a read-only loop
/// device: its report, and whether the file system is clean.
fn fsck_boot(disk: &Path) -> (bool, String) {
    let p = cairn::boot::disk::find_boot_partition(disk).unwrap();
    let lo = std::process::Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(format!("--offset={}", p.offset()))
        .arg(format!("--sizelimit={}", p.bytes()))
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        lo.status.success(),
        "{}",
        String::from_utf8_lossy(&lo.stderr)
    );
    let dev = String::from_utf8_lossy(&lo.stdout).trim().to_string();
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&dev)
        .output()
        .unwrap();
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev])
        .status();
    (
        fsck.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        ),
    )
}

/// Disk image files on the build host, as an admin meets them: every dry
/// run (pull, disk add, boot menu, boot install, disk create over it)
/// changes not one byte of the disk; `status DISK` checks the images with
/// the store's own key; two pulls of one disk at once — the second through
/// another name of it — take turns on the disk's own lock (the second waits, then
/// finds the image there), and the file system is clean after them (once
/// each mounted it read-write at the same time: e2fsck found block bitmap
/// differences).
#[test]
fn two_pulls_of_one_disk_take_turns_and_dry_runs_write_nothing() {
    if !crate::support::is_root() {
        skip("needs root (loop devices, mounts)");
        return;
    }
    if need_tools(&["grub-mkimage", "sfdisk", "mkfs.ext4", "e2fsck", "losetup"]) {
        return;
    }
    let Some(s) = Setup::new(4 << 20) else {
        return;
    };
    let disk = s.d.path().join("disk.img");
    let d = disk.to_str().unwrap();
    ok(cairn(
        &s.store,
        &[
            "disk",
            "create",
            d,
            "--image",
            &format!("web/{V1}"),
            "--data-size",
            "0",
            "--timeout",
            "1",
        ],
    ));
    let before = file_sha256(&disk);
    // The store's key is the build host's natural default.
    let st: serde_json::Value =
        serde_json::from_str(&ok(cairn(&s.store, &["status", d, "--json"]))).unwrap();
    assert_eq!(st["images"][0]["signed"], true, "{st}");
    let nginx = Nginx::start(&s.store, 0, "limit_rate 1m;");
    let url = nginx.url();
    let pull = |path: &str, more: &[&str]| {
        let mut a = vec!["pull", path, "--url", &url, "--profile", "web", "--json"];
        a.extend(more);
        cairn(&s.store, &a)
    };
    let dry = json(pull(d, &["--dry-run", "--machine-id", "m1"]));
    assert_eq!(dry["outcome"], "planned", "{dry}");
    for args in [
        vec!["disk", "add", d, &format!("web/{V2}"), "--dry-run"],
        vec!["boot", "menu", d, "--dry-run"],
        vec!["boot", "install", d, "--dry-run"],
        vec![
            "disk",
            "create",
            d,
            "--image",
            &format!("web/{V2}"),
            "--dry-run",
        ],
        vec!["status", d],
    ] {
        ok(cairn(&s.store, &args));
        assert_eq!(file_sha256(&disk), before, "{args:?} changed the disk");
    }
    // A dry run of `disk create` signs nothing: no secret key is needed.
    let home = s.store.join("keys/gnupg/private-keys-v1.d");
    let hidden = s.store.join("keys/private-keys-v1.d.hidden");
    fs::rename(&home, &hidden).unwrap();
    let o = cairn(
        &s.store,
        &[
            "disk",
            "create",
            d,
            "--image",
            &format!("web/{V2}"),
            "--dry-run",
        ],
    );
    fs::rename(&hidden, &home).unwrap();
    ok(o);
    assert_eq!(file_sha256(&disk), before);

    // Two pulls at once, the second through another path to the disk (a
    // hard link: cairn refuses a symlinked disk path outright).
    let link = s.d.path().join("same-disk.img");
    fs::hard_link(&disk, &link).unwrap();
    // (The second is neither --quiet nor --json: it says that it waits,
    // and for whom.)
    let loud = |path: &str| {
        crate::support::cairn_command()
            .arg("--store")
            .arg(&s.store)
            .args(["pull", path, "--url", &url, "--profile", "web"])
            .args(["--machine-id", "m1"])
            .env("CAIRN_CONFIG", crate::support::NO_CONFIG)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let first = std::thread::scope(|sc| {
        let a = sc.spawn(|| pull(d, &["--machine-id", "m1"]));
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let b = sc.spawn(|| loud(link.to_str().unwrap()));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (json(first.0), first.1);
    assert_eq!(a["outcome"], "staged", "{a}");
    let waited = String::from_utf8_lossy(&b.stderr).into_owned();
    assert!(
        waited.contains("waiting for another cairn (pid ")
            && waited.contains(&format!("to finish with {}", link.display())),
        "the second pull did not wait for the first: {waited}"
    );
    let b = ok(b);
    assert!(b.contains(": already-there"), "{b}\n{waited}");
    let (clean, report) = fsck_boot(&disk);
    assert!(clean, "the boot partition after two pulls:\n{report}");
    // Each layer crossed the wire once.
    let layer = format!("/images/web/{V2}/layer-2.squashfs");
    assert_eq!(
        nginx.hits().iter().filter(|h| h.path == layer).count(),
        1,
        "{:?}",
        nginx.hits()
    );
}
