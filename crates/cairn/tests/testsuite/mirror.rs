//! `cairn mirror sync|verify` against a Debian-shaped repository served on
//! 127.0.0.1 by the test, with faults.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::apt::Apt;
use crate::support::repo::{Deb, RepoBuilder, deb, now, sha256};
use crate::support::server::{Fault, Server};
use crate::support::{cairn, fails, key, need_tools, ok, other_key, text};

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    repo: RepoBuilder,
    server: Server,
}

impl Fixture {
    fn new(debs: Vec<Deb>) -> Option<Fixture> {
        if need_tools(&["gpg", "gpgv", "dpkg-deb"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("upstream");
        let repo = RepoBuilder::new(&root, debs);
        repo.build(key());
        let server = Server::start(root);
        Some(Fixture {
            store: dir.path().join("store"),
            _dir: dir,
            repo,
            server,
        })
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "mirror",
            "sync",
            "--url",
            &self.server.url,
            "--suite",
            "stable",
            "--name",
            "test",
            "--keyring",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(key().keyring.display().to_string());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn sync(&self, extra: &[&str]) -> std::process::Output {
        let args = self.args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cairn(&self.store, &refs)
    }

    fn mirror(&self) -> PathBuf {
        self.store.join("mirror/test")
    }

    fn rebuild(&mut self, f: impl FnOnce(&mut RepoBuilder)) {
        f(&mut self.repo);
        self.repo.build(key());
    }

    /// The published state a client sees: dists target and its InRelease bytes.
    fn published(&self) -> (PathBuf, Vec<u8>) {
        let m = self.mirror();
        (
            fs::read_link(m.join("dists")).unwrap(),
            fs::read(m.join("dists/stable/InRelease")).unwrap(),
        )
    }

    fn verify(&self, extra: &[&str]) -> std::process::Output {
        let mut a = vec!["mirror", "verify", "test"];
        a.extend_from_slice(extra);
        cairn(&self.store, &a)
    }
}

fn sample() -> Vec<Deb> {
    vec![
        deb("app", "1.0-1").depends("lib (>= 2) | oldlib, mta"),
        deb("lib", "1"),
        deb("lib", "2"),
        deb("oldlib", "1"),
        deb("postfix", "3").provides("mta"),
        deb("exim", "4").provides("mta"),
        deb("base", "1").essential(),
        deb("unrelated", "1"),
    ]
}

fn pool_files(mirror: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), base, out);
            } else {
                out.push(
                    e.path()
                        .strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    walk(&mirror.join("pool"), mirror, &mut out);
    out.sort();
    out
}

fn flip_byte(p: &Path, at: usize) {
    let mut d = fs::read(p).unwrap();
    let i = at.min(d.len() - 1);
    d[i] ^= 1;
    fs::write(p, d).unwrap();
}

#[test]
fn full_sync_is_verified_apt_accepts_it_and_a_noop_rerun_is_free() {
    let Some(f) = Fixture::new(sample()) else {
        return;
    };
    let out = ok(f.sync(&["--full", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["up_to_date"], false);
    assert_eq!(report["packages"], 8);
    assert_eq!(report["repos"][0]["fetched_files"], 8);
    assert_eq!(report["repos"][0]["suites"][0]["signature"], "InRelease");
    assert_eq!(
        report["repos"][0]["suites"][0]["signed_by"][0],
        key().fpr.as_str()
    );
    let m = f.mirror();
    assert_eq!(pool_files(&m).len(), 8);
    assert!(
        fs::read_link(m.join("dists"))
            .unwrap()
            .starts_with(".dists")
    );
    // Signed files are published byte for byte; the uncompressed index was
    // made from the .xz and matches Release.
    let up = f.repo.root.join("dists/stable");
    assert_eq!(
        fs::read(m.join("dists/stable/InRelease")).unwrap(),
        fs::read(up.join("InRelease")).unwrap()
    );
    let packages = fs::read(m.join("dists/stable/main/binary-amd64/Packages")).unwrap();
    let release = fs::read_to_string(up.join("Release")).unwrap();
    assert!(
        release.contains(&format!("{} ", sha256(&packages))),
        "Packages hash not in Release"
    );
    assert!(
        m.join("dists/stable/main/binary-amd64/by-hash/SHA256")
            .join(sha256(&packages))
            .exists()
    );

    // apt, with signature checking on, accepts it and downloads from it.
    if !need_tools(&["apt-get"]) {
        let dir = tempfile::tempdir().unwrap();
        let apt = Apt::new(
            dir.path(),
            &[format!(
                "deb [signed-by={}] file://{} stable main",
                key().keyring.display(),
                m.display()
            )],
        );
        apt.run(&["update"]);
        apt.run(&["download", "app", "postfix"]);
        assert_eq!(fs::read_dir(apt.dir.join("dl")).unwrap().count(), 2);
    }

    // verify: all good.
    let v: serde_json::Value = serde_json::from_str(&ok(f.verify(&["--json"]))).unwrap();
    assert_eq!(v["mirrors"][0]["ok"], true);
    assert_eq!(v["mirrors"][0]["pool_checked"], 8);

    // A no-op re-run asks only for InRelease and publishes nothing new.
    let before = f.published();
    f.server.clear_log();
    let out = ok(f.sync(&["--full", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["up_to_date"], true, "{out}");
    let paths: Vec<String> = f.server.log().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/dists/stable/InRelease"]);
    assert_eq!(f.published(), before);
}

#[test]
fn closure_mirrors_what_apt_needs_and_drops_what_is_obsolete() {
    let Some(f) = Fixture::new(sample()) else {
        return;
    };
    ok(f.sync(&["--package", "app"]));
    assert_eq!(
        pool_files(&f.mirror()),
        [
            "pool/main/a/app/app_1.0-1_amd64.deb",
            "pool/main/b/base/base_1_amd64.deb",
            // Two providers of `mta` at the same priority: the first by name.
            "pool/main/e/exim/exim_4_amd64.deb",
            "pool/main/l/lib/lib_2_amd64.deb",
        ]
    );
    // A new selection: what is no longer wanted goes, after the switch.
    let out = ok(f.sync(&["--package", "unrelated", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["repos"][0]["removed_obsolete"], 3);
    assert_eq!(
        pool_files(&f.mirror()),
        [
            "pool/main/b/base/base_1_amd64.deb",
            "pool/main/u/unrelated/unrelated_1_amd64.deb"
        ]
    );
    // --keep-obsolete keeps them, and verify does not call them unexpected.
    ok(f.sync(&["--package", "app", "--no-closure", "--keep-obsolete"]));
    assert_eq!(pool_files(&f.mirror()).len(), 3);
    ok(f.verify(&[]));
    let err = fails(f.sync(&["--package", "nosuch"]));
    assert!(
        err.contains("package(s) not found in the mirrored indices: nosuch"),
        "{err}"
    );
}

#[test]
fn bad_unknown_and_missing_signatures_leave_the_mirror_unchanged() {
    let Some(mut f) = Fixture::new(sample()) else {
        return;
    };
    ok(f.sync(&["--full"]));
    let before = f.published();
    let inrelease = f.repo.root.join("dists/stable/InRelease");

    // A signed line changed after signing.
    let good = fs::read_to_string(&inrelease).unwrap();
    fs::write(
        &inrelease,
        good.replacen("Label: cairn-test", "Label: cairn-evil", 1),
    )
    .unwrap();
    let err = fails(f.sync(&["--full"]));
    assert!(err.contains("bad signature by key"), "{err}");
    assert!(err.contains("/dists/stable/InRelease"), "{err}");
    assert_eq!(f.published(), before);

    // Signed, but by a key that is not in the keyring.
    f.repo.date += 1;
    f.repo.build(other_key());
    let err = fails(f.sync(&["--full"]));
    assert!(err.contains("not in the keyring"), "{err}");
    assert_eq!(f.published(), before);

    // Not signed at all.
    f.rebuild(|r| {
        r.inrelease = false;
        r.release_gpg = false;
    });
    let o = f.sync(&["--full"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "an unsigned repository is refused data"
    );
    let err = fails(o);
    assert!(
        err.contains("is not signed: neither InRelease nor Release.gpg exists"),
        "{err}"
    );
    assert_eq!(f.published(), before);

    // Unsigned junk after a good signature block is refused, as apt does.
    f.rebuild(|r| r.inrelease = true);
    let mut junk = fs::read_to_string(&inrelease).unwrap();
    junk.push_str("Suite: evil\n");
    fs::write(&inrelease, junk).unwrap();
    let err = fails(f.sync(&["--full"]));
    assert!(err.contains("data after the signature block"), "{err}");
    assert_eq!(f.published(), before);
}

#[test]
fn release_gpg_is_used_when_inrelease_is_missing() {
    let Some(mut f) = Fixture::new(sample()) else {
        return;
    };
    f.rebuild(|r| r.inrelease = false);
    let report: serde_json::Value =
        serde_json::from_str(&ok(f.sync(&["--full", "--json"]))).unwrap();
    assert_eq!(report["repos"][0]["suites"][0]["signature"], "Release.gpg");
    assert!(f.mirror().join("dists/stable/Release.gpg").exists());
    ok(f.verify(&[]));
}

#[test]
fn expired_future_and_replayed_releases_are_refused() {
    let Some(mut f) = Fixture::new(sample()) else {
        return;
    };
    f.rebuild(|r| r.valid_until = Some(now() - 3600));
    let err = fails(f.sync(&["--full"]));
    assert!(
        err.contains("expired on") && err.contains("Valid-Until"),
        "{err}"
    );
    assert!(!f.mirror().join("dists").exists());

    f.rebuild(|r| {
        r.valid_until = Some(now() + 86400);
        r.date = now() + 7200;
    });
    let err = fails(f.sync(&["--full"]));
    assert!(err.contains("in the future"), "{err}");

    let d = now() - 100;
    f.rebuild(|r| r.date = d);
    ok(f.sync(&["--full"]));
    let before = f.published();
    f.rebuild(|r| r.date = d - 86400);
    let err = fails(f.sync(&["--full"]));
    assert!(
        err.contains("older than the published one") && err.contains("replayed"),
        "{err}"
    );
    assert_eq!(f.published(), before);
    // Without cairn's state the published InRelease itself still dates the mirror.
    fs::remove_file(f.store.join("mirror/.test.work/state.json")).unwrap();
    let err = fails(f.sync(&["--full"]));
    assert!(err.contains("older than the published one"), "{err}");
    assert_eq!(f.published(), before);
}

#[test]
fn wrong_bytes_in_an_index_or_a_pool_file_are_named() {
    let Some(mut f) = Fixture::new(sample()) else {
        return;
    };
    ok(f.sync(&["--package", "unrelated", "--no-closure"]));
    let before = f.published();

    // A new index whose bytes do not match Release (same size).
    f.rebuild(|r| r.debs.push(deb("newpkg", "1")));
    for name in ["Packages.xz", "Packages.gz"] {
        let p = f
            .repo
            .root
            .join("dists/stable/main/binary-amd64")
            .join(name);
        f.server
            .fault(&sha256(&fs::read(&p).unwrap()), Fault::Corrupt);
        f.server.fault(name, Fault::Corrupt);
    }
    let err = fails(f.sync(&["--full"]));
    assert!(
        err.contains("main/binary-amd64/Packages.") && err.contains("SHA256 mismatch"),
        "{err}"
    );
    assert_eq!(f.published(), before);
    f.server.clear_faults();

    // A pool file with the right size and wrong bytes.
    f.server.fault("newpkg_1_amd64.deb", Fault::Corrupt);
    let o = f.sync(&["--full"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a pool file that differs is refused data"
    );
    let err = fails(o);
    assert!(
        err.contains("pool/main/n/newpkg/newpkg_1_amd64.deb") && err.contains("SHA256 mismatch"),
        "{err}"
    );
    assert!(err.contains("the published mirror is unchanged"), "{err}");
    assert_eq!(f.published(), before);
    assert!(
        !f.mirror()
            .join("pool/main/n/newpkg/newpkg_1_amd64.deb")
            .exists()
    );
    ok(f.verify(&[]));

    // 404 on a pool file.
    f.server.fault("newpkg_1_amd64.deb", Fault::NotFound);
    let o = f.sync(&["--full"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a 404 is an outage, not tampering"
    );
    let err = fails(o);
    assert!(err.contains("newpkg_1_amd64.deb: not found (404)"), "{err}");
    assert_eq!(f.published(), before);
}

/// An archive caught in a push, as a real one is four times a day: the
/// per-architecture Release lags behind the signed InRelease (by-hash has
/// no copy of it: apt never reads it), the plain Packages.xz is stale while
/// its by-hash copy is right, and Packages.gz is missing for a moment. The
/// sync does what apt does — by hash first, asks again after a pause,
/// leaves out the file no client reads and says so, never publishes a
/// wrong copy; apt accepts the mirror and verify finds it whole. A wrong
/// file a client needs is still refused, the published mirror unchanged.
#[test]
fn an_archive_in_the_middle_of_a_push_is_mirrored_as_apt_reads_it() {
    let Some(mut f) = Fixture::new(sample()) else {
        return;
    };
    let bin = f.repo.root.join("dists/stable/main/binary-amd64");
    let hash_of = |n: &str| sha256(&fs::read(bin.join(n)).unwrap());
    let (release, xz, gz) = (
        hash_of("Release"),
        hash_of("Packages.xz"),
        hash_of("Packages.gz"),
    );
    f.server.fault("binary-amd64/Release", Fault::Corrupt);
    f.server.fault(&release, Fault::NotFound);
    f.server.fault("binary-amd64/Packages.xz", Fault::Corrupt);
    f.server.fault(&gz, Fault::NotFoundFor { times: 2 });
    f.server.fault("binary-amd64/Packages.gz", Fault::NotFound);
    let out = ok(f.sync(&["--full", "--json"]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let left = r["repos"][0]["suites"][0]["left_out"].as_array().unwrap();
    let why = |p: &str| {
        left.iter()
            .find(|l| l["path"] == format!("dists/stable/main/{p}"))
            .unwrap_or_else(|| panic!("{p} not left out: {r}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(left.len(), 1, "{r}");
    let w = why("binary-amd64/Release");
    assert!(
        w.contains("not the one the signed Release lists") && w.contains("never read"),
        "{w}"
    );
    // Never a wrong copy: the stale file is not published at all.
    let m = f.mirror();
    let pbin = m.join("dists/stable/main/binary-amd64");
    assert!(!pbin.join("Release").exists());
    for n in ["Packages.xz", "Packages.gz"] {
        assert_eq!(
            fs::read(pbin.join(n)).unwrap(),
            fs::read(bin.join(n)).unwrap(),
            "{n}"
        );
    }
    // By hash first: the stale Packages.xz by name was never asked for;
    // the missing Packages.gz was asked for again until it came.
    let log: Vec<String> = f.server.log().iter().map(|r| r.path.clone()).collect();
    assert!(log.iter().any(|p| p.ends_with(&xz)), "{log:?}");
    assert!(
        !log.iter().any(|p| p.ends_with("binary-amd64/Packages.xz")),
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|p| p.ends_with(&gz)).count(),
        3,
        "{log:?}"
    );
    if !need_tools(&["apt-get"]) {
        let dir = tempfile::tempdir().unwrap();
        let apt = Apt::new(
            dir.path(),
            &[format!(
                "deb [signed-by={}] file://{} stable main",
                key().keyring.display(),
                m.display()
            )],
        );
        apt.run(&["update"]);
        apt.run(&["download", "app"]);
    }
    let v: serde_json::Value = serde_json::from_str(&ok(f.verify(&["--json"]))).unwrap();
    assert_eq!(v["mirrors"][0]["ok"], true, "{v}");
    // What was left out is said again by a sync that finds nothing new.
    let r: serde_json::Value = serde_json::from_str(&ok(f.sync(&["--full", "--json"]))).unwrap();
    assert_eq!(r["up_to_date"], true, "{r}");
    assert_eq!(
        r["repos"][0]["suites"][0]["left_out"][0]["path"],
        "dists/stable/main/binary-amd64/Release"
    );

    // A file a client needs, wrong in every copy and under every name: the
    // sync is refused (exit 3), the published mirror unchanged.
    let before = f.published();
    f.server.clear_faults();
    f.rebuild(|r| r.debs.push(deb("newpkg", "1")));
    for n in ["Packages.xz", "Packages.gz"] {
        f.server.fault(&hash_of(n), Fault::Corrupt);
        f.server.fault(&format!("binary-amd64/{n}"), Fault::Corrupt);
    }
    let o = f.sync(&["--full"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(f.published(), before);

    // An index apt needs gone for good (the translations' only copy): the
    // sync fails (an outage, exit 1), the published mirror unchanged —
    // apt-get update fails without it.
    f.server.clear_faults();
    let i18n = f.repo.root.join("dists/stable/main/i18n/Translation-en.xz");
    f.server
        .fault(&sha256(&fs::read(&i18n).unwrap()), Fault::NotFound);
    f.server.fault("i18n/Translation-en.xz", Fault::NotFound);
    let o = f.sync(&["--full"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Translation-en"),
        "{}",
        text(&o)
    );
    assert_eq!(f.published(), before);
}

#[test]
fn pool_paths_outside_pool_are_refused() {
    for bad in [
        "pool/../../../etc/passwd",
        "/etc/passwd",
        "dists/stable/InRelease",
    ] {
        let mut d = deb("evil", "1");
        d.filename_override = Some(bad.into());
        let Some(f) = Fixture::new(vec![deb("good", "1"), d]) else {
            return;
        };
        let err = fails(f.sync(&["--full"]));
        assert!(
            err.contains("unsafe path") && err.contains("evil"),
            "{bad}: {err}"
        );
        assert!(!f.mirror().join("dists").exists());
    }
}

/// The published Release is read from verified bytes only: an InRelease
/// changed behind cairn's back (listing a file someone planted in the
/// published tree) lends no by-hash link to the next generation.
#[test]
fn a_published_release_changed_behind_cairns_back_is_not_trusted() {
    let Some(mut f) = Fixture::new(vec![deb("good", "1")]) else {
        return;
    };
    ok(f.sync(&["--full"]));
    let (dists, _) = f.published();
    let suite = f.mirror().join(&dists).join("stable");
    let planted = b"planted by someone without the archive key\n";
    let hash = sha256(planted);
    fs::write(suite.join("main/planted"), planted).unwrap();
    let inrelease = fs::read_to_string(suite.join("InRelease")).unwrap();
    let doctored = inrelease.replacen(
        "SHA256:\n",
        &format!("SHA256:\n {hash} {:>8} main/planted\n", planted.len()),
        1,
    );
    assert_ne!(doctored, inrelease);
    fs::write(suite.join("InRelease"), doctored).unwrap();
    // The archive moves on: a new generation is published.
    f.rebuild(|r| r.debs.push(deb("more", "1")));
    ok(f.sync(&["--full"]));
    let (dists, _) = f.published();
    let linked = f
        .mirror()
        .join(dists)
        .join("stable/main/by-hash/SHA256")
        .join(&hash);
    assert!(
        !linked.exists(),
        "an unverified Release lent a by-hash link"
    );
}

/// A local repository by a `file:` URL, in each of its spellings, mirrors
/// the same (`file:/path` was accepted, then read as a 404).
#[test]
fn file_urls_in_every_spelling_mirror_a_local_tree() {
    let Some(f) = Fixture::new(vec![deb("good", "1")]) else {
        return;
    };
    let root = f.repo.root.display().to_string();
    for (i, url) in [
        format!("file:{root}"),
        format!("file://{root}"),
        format!("file://localhost{root}"),
    ]
    .iter()
    .enumerate()
    {
        let store = f.store.with_file_name(format!("store-file-{i}"));
        let mut a = f.args(&["--full"]);
        let at = a.iter().position(|x| x == "--url").unwrap();
        a[at + 1] = url.clone();
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(cairn(&store, &refs));
        assert!(
            store
                .join("mirror/test")
                .join(deb("good", "1").pool_path())
                .is_file(),
            "{url}"
        );
    }
}

/// Names given on the command line and paths a signed Release lists reach
/// the store only when they stay inside it.
#[test]
fn names_and_release_paths_outside_the_mirror_are_refused() {
    let Some(mut f) = Fixture::new(vec![deb("good", "1")]) else {
        return;
    };
    for (flag, bad) in [
        ("--name", "../../x"),
        ("--suite", "../../y"),
        ("--name", "a b"),
    ] {
        let mut a = f.args(&["--full"]);
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = bad.to_string();
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let err = fails(cairn(&f.store, &refs));
        assert!(err.contains(&format!("{bad:?}")), "{flag} {bad}: {err}");
        assert!(
            !f.store.exists() || !f.store.join("mirror").exists(),
            "{bad}: wrote"
        );
    }
    let err = fails(cairn(&f.store, &["mirror", "verify", "../../etc"]));
    assert!(err.contains("mirror name \"../../etc\""), "{err}");
    // The signed Release lists an index outside its suite (by-hash links
    // are made for every listed path): refused, nothing published.
    f.rebuild(|r| r.extra_listed = vec!["../../../../evil".into()]);
    let err = fails(f.sync(&["--full"]));
    assert!(err.contains("outside its suite"), "{err}");
    assert!(!f.mirror().join("dists").exists());
    assert!(!f.store.join("evil").exists() && !f.mirror().join("evil").exists());
}

#[test]
fn dropped_connections_are_retried_and_resumed() {
    let Some(f) = Fixture::new(vec![deb("big", "1").payload(300_000), deb("small", "1")]) else {
        return;
    };
    f.server.fault(
        "big_1_amd64.deb",
        Fault::DropAfter {
            bytes: 100_000,
            times: 2,
        },
    );
    ok(f.sync(&["--full"]));
    let ranges: Vec<u64> = f
        .server
        .log()
        .iter()
        .filter(|r| r.path.ends_with("big_1_amd64.deb"))
        .filter_map(|r| r.range_from)
        .collect();
    assert!(
        ranges.len() >= 2 && ranges.iter().all(|&r| r > 0),
        "expected resumed requests, got {ranges:?}"
    );
    ok(f.verify(&[]));

    // A server that ignores Range: the download restarts and still verifies.
    let Some(g) = Fixture::new(vec![deb("big", "1").payload(300_000)]) else {
        return;
    };
    g.server.ignore_range(true);
    g.server.fault(
        "big_1_amd64.deb",
        Fault::DropAfter {
            bytes: 100_000,
            times: 1,
        },
    );
    ok(g.sync(&["--full"]));
    ok(g.verify(&[]));
}

#[test]
fn a_killed_sync_leaves_the_old_mirror_and_a_rerun_completes_it() {
    let Some(mut f) = Fixture::new(vec![deb("a", "1"), deb("b", "1")]) else {
        return;
    };
    ok(f.sync(&["--full"]));
    let before = f.published();
    f.rebuild(|r| {
        r.date += 10;
        r.debs.push(deb("large", "1").payload(600_000));
        r.debs.retain(|d| d.name != "b");
        r.debs.push(deb("b", "2"));
    });
    f.server.fault(
        "large_1_amd64.deb",
        Fault::Slow {
            bytes_per_sec: 200_000,
        },
    );
    let args = f.args(&["--full"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--store")
        .arg(&f.store)
        .arg("--quiet")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = f.store.join("mirror/.test.work/partial");
    let t = Instant::now();
    while fs::read_dir(&partial).map(|d| d.count()).unwrap_or(0) == 0
        || fs::read_dir(&partial)
            .unwrap()
            .flatten()
            .all(|e| e.metadata().unwrap().len() < 100_000)
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the slow download never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While it runs, a second sync of the same mirror refuses clearly.
    let err = fails(f.sync(&["--full"]));
    assert!(
        err.contains("mirror test is locked by another cairn (pid"),
        "{err}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Clients still see the complete old mirror.
    assert_eq!(f.published(), before);
    let v: serde_json::Value = serde_json::from_str(&ok(f.verify(&["--json"]))).unwrap();
    assert_eq!(v["mirrors"][0]["ok"], true, "{v}");
    // A re-run resumes the partial file and publishes the new state.
    f.server.clear_faults();
    f.server.clear_log();
    ok(f.sync(&["--full"]));
    let resumed = f
        .server
        .log()
        .iter()
        .any(|r| r.path.ends_with("large_1_amd64.deb") && r.range_from.unwrap_or(0) > 0);
    assert!(resumed, "the re-run did not resume: {:?}", f.server.log());
    assert_ne!(f.published(), before);
    assert!(
        f.mirror()
            .join("pool/main/l/large/large_1_amd64.deb")
            .exists()
    );
    assert!(!f.mirror().join("pool/main/b/b/b_1_amd64.deb").exists());
    ok(f.verify(&[]));
    assert!(
        !f.store
            .join("mirror/test/.dists")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
    );
}

#[test]
fn verify_finds_missing_corrupt_and_unexpected_files_and_repairs_them() {
    let Some(f) = Fixture::new(sample()) else {
        return;
    };
    ok(f.sync(&["--full"]));
    let m = f.mirror();
    flip_byte(&m.join("pool/main/a/app/app_1.0-1_amd64.deb"), 500);
    fs::remove_file(m.join("pool/main/l/lib/lib_2_amd64.deb")).unwrap();
    fs::write(m.join("pool/main/stray.deb"), b"x").unwrap();
    let idx = m.join("dists/stable/main/binary-amd64/Packages");
    let tmp = idx.with_extension("x");
    fs::copy(&idx, &tmp).unwrap();
    fs::remove_file(&idx).unwrap(); // break the by-hash hard link, then corrupt
    fs::rename(&tmp, &idx).unwrap();
    flip_byte(&idx, 20);

    let out = f.verify(&[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CORRUPT pool/main/a/app/app_1.0-1_amd64.deb: sha256"),
        "{stdout}"
    );
    assert!(
        stdout.contains("MISSING pool/main/l/lib/lib_2_amd64.deb"),
        "{stdout}"
    );
    assert!(
        stdout.contains("UNEXPECTED pool/main/stray.deb"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CORRUPT dists/stable/main/binary-amd64/Packages: sha256"),
        "{stdout}"
    );
    // A corrupt index is not read, so it does not make every pool file look bad.
    assert_eq!(stdout.matches("CORRUPT").count(), 2, "{stdout}");

    let out = ok(f.verify(&["--repair", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mirrors"][0]["ok"], true, "{out}");
    assert_eq!(
        v["mirrors"][0]["repaired"].as_array().unwrap().len(),
        4,
        "{out}"
    );
    ok(f.verify(&[]));

    // An index grown without end (sparse: a terabyte on no disk) is named
    // larger than signed under each of its names, read to its signed size
    // and no further, neither to its end nor into memory.
    let dir = m.join("dists/stable/main/binary-amd64");
    let n = fs::metadata(dir.join("Packages")).unwrap().len();
    let by_hash = dir
        .join("by-hash/SHA256")
        .join(sha256(&fs::read(dir.join("Packages")).unwrap()));
    for p in [dir.join("Packages"), by_hash.clone()] {
        let file = fs::OpenOptions::new().write(true).open(&p).unwrap();
        file.set_len(1 << 40).unwrap();
    }
    let out = f.verify(&[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown = by_hash.strip_prefix(&m).unwrap().display().to_string();
    for name in ["dists/stable/main/binary-amd64/Packages", shown.as_str()] {
        assert!(
            stdout.contains(&format!(
                "CORRUPT {name}: larger than the {n} bytes expected"
            )),
            "{stdout}"
        );
    }
}
