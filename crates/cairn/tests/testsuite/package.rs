//! cairn's Debian package (`scripts/package`): its version is Cargo's;
//! lintian finds no error in it; installed by mmdebstrap into a clean
//! Debian root made from a local mirror (`cairn mirror sync` of the host's
//! archive: minbase, man-db, bash-completion), cairn runs, its man pages
//! and completion are where man and bash look, dpkg knows it and its
//! configuration file is a conffile. Needs root, mmdebstrap, debhelper,
//! lintian and the host's archive.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::support::{cairn, is_root, need_tools, ok, skip, text};

/// debian/changelog's version is the workspace's (scripts/package refuses
/// to build otherwise; this says it before anyone runs it).
#[test]
fn the_debian_version_is_cargos() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let log = fs::read_to_string(top.join("debian/changelog")).unwrap();
    let first = log.lines().next().unwrap();
    let version = first
        .split_once(" (")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(v, _)| v);
    assert_eq!(
        version,
        Some(env!("CARGO_PKG_VERSION")),
        "debian/changelog starts with {first:?}: add an entry for Cargo's version"
    );
}

/// debian/copyright names every crate linked into the binary, with its
/// licence and the licences' texts: what `scripts/copyright` makes of
/// Cargo.lock today (a crate added or updated without it fails here).
#[test]
fn debian_copyright_names_every_crate_in_the_binary() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let triple = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(String::from))
        .unwrap();
    let meta = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &triple])
        .current_dir(&top)
        .output()
        .unwrap();
    assert!(
        meta.status.success(),
        "{}",
        String::from_utf8_lossy(&meta.stderr)
    );
    let mut generator = Command::new(env!("CARGO_BIN_EXE_cairn-gen-docs"))
        .arg("copyright")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        generator
            .stdin
            .take()
            .unwrap()
            .write_all(&meta.stdout)
            .unwrap();
    }
    let out = generator.wait_with_output().unwrap();
    assert!(out.status.success());
    let want = String::from_utf8(out.stdout).unwrap();
    for c in [
        "Files: rust-crates/ureq-",
        "Files: rust-crates/ring-",
        "License: ISC\n",
    ] {
        assert!(want.contains(c), "{c}");
    }
    assert!(
        !want.contains("rust-crates/serde_derive-"),
        "a build-time crate"
    );
    let have = fs::read_to_string(top.join("debian/copyright")).unwrap();
    assert!(
        have == want,
        "debian/copyright is not what Cargo.lock says: run scripts/copyright"
    );
}

/// `sh -c script` in the root; its output, success asserted.
#[track_caller]
fn in_root(root: &Path, script: &str) -> String {
    let o = Command::new("chroot")
        .arg(root)
        .args(["sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", "/root")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "in the root: {script}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_package_installs_into_a_clean_debian_and_works() {
    if !is_root() {
        skip("needs root (mmdebstrap, chroot)");
        return;
    }
    if need_tools(&[
        "mmdebstrap",
        "dpkg-buildpackage",
        "dh",
        "lintian",
        "chroot",
        "gpgv",
    ]) {
        return;
    }
    // One core: dpkg, lintian and a chroot, one process at a time.
    let _core = crate::support::cores::one();
    let t0 = Instant::now();
    let deb = crate::support::package::deb();
    let t_package = t0.elapsed().as_secs_f64();

    // lintian: no error (scripts/package fails on one too; said here).
    let t = Instant::now();
    let l = Command::new("lintian").arg(deb).output().unwrap();
    let report = String::from_utf8_lossy(&l.stdout);
    // No error; no warning either (fix it, or override it in
    // debian/cairn.lintian-overrides with the reason).
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(bad.is_empty(), "lintian:\n{report}");
    let t_lintian = t.elapsed().as_secs_f64();

    // A local mirror of what the root needs, from the host's archive; kept
    // between runs (a sync fetches only what changed) in the target dir.
    let t = Instant::now();
    let tier = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("package-tier");
    let store = tier.join("store");
    let out = cairn(
        &store,
        &[
            "mirror",
            "sync",
            "--priority",
            "required",
            "--package",
            "man-db,bash-completion",
            "--json",
        ],
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("connect") || err.contains("resolve") || err.contains("dns") {
            skip(&format!("the host's archive is not reachable: {err}"));
            return;
        }
        panic!("sync failed:\n{}", text(&out));
    }
    let sources: Vec<String> = ok(cairn(&store, &["mirror", "sources"]))
        .lines()
        .map(String::from)
        .collect();
    let t_mirror = t.elapsed().as_secs_f64();

    // The clean root: minbase, man-db, bash-completion and the package,
    // from the local mirror alone.
    let t = Instant::now();
    let work = tier.join(format!("root-{}", std::process::id()));
    let _ = cairn::fsutil::unmount_below(&work);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let root = work.join("root");
    let o = Command::new("mmdebstrap")
        .args([
            "--mode=root",
            "--format=directory",
            "--variant=minbase",
            "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
            "--aptopt=Acquire::Languages \"none\"",
            "--include=man-db,bash-completion",
        ])
        .arg(format!("--include={}", deb.display()))
        .arg(crate::support::fixture::host_suite())
        .arg(&root)
        .args(&sources)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mmdebstrap with the package failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t_root = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(in_root(&root, "cairn --version"), format!("cairn {v}\n"));
    assert_eq!(in_root(&root, "command -v cairn"), "/usr/bin/cairn\n");
    // dpkg installed it, and /etc/cairn/cairn.toml is its conffile.
    let status = in_root(&root, "dpkg -s cairn");
    assert!(
        status.contains("Status: install ok installed\n")
            && status.contains(&format!("Version: {v}\n")),
        "{status}"
    );
    let conffiles = in_root(&root, "dpkg-query -W -f='${Conffiles}' cairn");
    assert!(conffiles.contains("/etc/cairn/cairn.toml "), "{conffiles}");
    // The man pages, nested subcommands too, where man finds them.
    assert_eq!(
        in_root(&root, "man -w cairn-mirror-sync"),
        "/usr/share/man/man1/cairn-mirror-sync.1.gz\n"
    );
    assert!(in_root(&root, "man -w cairn").ends_with("/man1/cairn.1.gz\n"));
    // bash-completion's loader finds the completion by the command's name,
    // and it completes `cairn mir` to `mirror`.
    let completion = in_root(
        &root,
        "bash -c '. /usr/share/bash-completion/bash_completion; __load_completion cairn; complete -p cairn; \
         COMP_WORDS=(cairn mir); COMP_CWORD=1; COMP_LINE=\"cairn mir\"; COMP_POINT=9; _cairn cairn mir cairn; \
         echo \"REPLY ${COMPREPLY[*]}\"'",
    );
    assert!(
        completion.contains("-F _cairn")
            && completion.contains("cairn\n")
            && completion.lines().any(|l| l == "REPLY mirror"),
        "{completion}"
    );
    for f in [
        "/usr/share/zsh/vendor-completions/_cairn",
        "/usr/share/fish/vendor_completions.d/cairn.fish",
        "/lib/systemd/system/cairn-cycle.service",
        "/lib/systemd/system/cairn-cycle.timer",
        "/usr/share/doc/cairn/copyright",
    ] {
        assert!(root.join(&f[1..]).is_file(), "{f} missing");
    }
    // The timer is installed, not enabled; the unit runs the package's binary.
    assert!(
        !root
            .join("etc/systemd/system/timers.target.wants/cairn-cycle.timer")
            .exists()
    );
    let unit = fs::read_to_string(root.join("lib/systemd/system/cairn-cycle.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/cairn cycle "), "{unit}");
    // A real command, on a fresh store.
    let list: serde_json::Value =
        serde_json::from_str(&in_root(&root, "cairn --store /tmp/s image list --json")).unwrap();
    assert_eq!(
        list,
        serde_json::json!({"schema-version": 1, "images": []}),
        "{list}"
    );
    // The configuration the package installed is read, and sets nothing.
    let shown: serde_json::Value =
        serde_json::from_str(&in_root(&root, "cairn config show --json")).unwrap();
    assert_eq!(shown["files"][0], "/etc/cairn/cairn.toml", "{shown}");
    assert_eq!(shown["settings"][0]["from"], "default", "{shown}");
    let t_checks = t.elapsed().as_secs_f64();
    eprintln!(
        "package test: package {t_package:.0}s, lintian {t_lintian:.0}s, mirror sync {t_mirror:.0}s, \
         root {t_root:.0}s, checks {t_checks:.1}s; {:.0}s in all",
        t0.elapsed().as_secs_f64()
    );
    cairn::fsutil::unmount_below(&work).unwrap();
    fs::remove_dir_all(&work).unwrap();
}
