//! Where output is the contract — `--help`, `--json`, error messages — it
//! is snapshotted: a change shows as a diff to review (`cargo insta review`),
//! never passes unseen.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::text;

/// cairn with a fixed environment: help wraps at 100 columns, no store from
/// the caller's environment.
fn cairn_raw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("COLUMNS", "100")
        .env_remove("CAIRN_STORE")
        .env("CAIRN_CONFIG", crate::support::NO_CONFIG)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running cairn")
}

/// The subcommands a help text lists (not `help` itself).
fn subcommands(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in help.lines() {
        if l == "Commands:" {
            inside = true;
            continue;
        }
        if inside {
            if l.is_empty() {
                break;
            }
            // A command starts at column 2; its wrapped description deeper.
            if let Some(rest) = l.strip_prefix("  ")
                && !rest.starts_with(' ')
                && let Some(name) = rest.split_whitespace().next()
                && name != "help"
            {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Every command's `--help`, in one snapshot per top-level command.
#[test]
fn every_commands_help_is_the_reviewed_one() {
    let top = cairn_raw(&["--help"]);
    assert!(top.status.success(), "{}", text(&top));
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    insta::assert_snapshot!("help", top);
    let commands = subcommands(&top);
    assert!(commands.len() >= 10, "{commands:?}");
    for c in commands {
        let mut all = String::new();
        let mut todo = vec![vec![c.clone()]];
        while let Some(path) = todo.pop() {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let o = cairn_raw(&args);
            assert!(o.status.success(), "cairn {}: {}", path.join(" "), text(&o));
            let h = String::from_utf8_lossy(&o.stdout).into_owned();
            for s in subcommands(&h).into_iter().rev() {
                let mut p = path.clone();
                p.push(s);
                todo.push(p);
            }
            all.push_str(&format!("$ cairn {} --help\n{h}\n", path.join(" ")));
        }
        insta::assert_snapshot!(format!("help-{c}"), all);
    }
}

/// Output with the sandbox's path replaced, so the snapshot is stable.
fn stable(o: &Output, store: &Path) -> String {
    text(o).replace(store.to_str().unwrap(), "[STORE]")
}

/// What scripts read (`--json`) and what a refusal says, on an empty store.
#[test]
fn json_and_refusals_on_an_empty_store_are_the_reviewed_ones() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let s = store.to_str().unwrap();
    for (name, args) in [
        ("image-list-json", &["image", "list", "--json"][..]),
        ("image-show-missing", &["image", "verify", "nosuch"][..]),
        ("mirror-verify-missing", &["mirror", "verify", "nosuch"][..]),
        (
            "build-missing-profile",
            &["build", "/nonexistent/p.toml"][..],
        ),
        (
            "disk-create-no-image",
            &["disk", "create", "/nonexistent/disk.img"][..],
        ),
        ("empty-image-name", &["image", "verify", ""][..]),
        ("name-with-slash", &["image", "verify", "../etc"][..]),
        // Every JSON document is an object with its schema-version; errors too.
        ("error-json", &["image", "verify", "nosuch", "--json"][..]),
        ("usage-error-json", &["image", "frobnicate", "--json"][..]),
        (
            "prune-dry-run-json",
            &["image", "prune", "--keep", "1", "--dry-run", "--json"][..],
        ),
        ("mirror-sources-json", &["mirror", "sources", "--json"][..]),
        (
            "snapshot-list-json",
            &["mirror", "snapshot", "list", "--json"][..],
        ),
        (
            "snapshot-delete-missing",
            &["mirror", "snapshot", "delete", "nosuch"][..],
        ),
        (
            "snapshot-bad-name",
            &["mirror", "snapshot", "delete", "../x"][..],
        ),
        (
            "nginx-config-json",
            &["publish", "--nginx-config", "127.0.0.1:8080", "--json"][..],
        ),
    ] {
        let mut a = vec!["--store", s, "--quiet"];
        a.extend(args);
        let o = cairn_raw(&a);
        insta::assert_snapshot!(name, stable(&o, &store));
    }
}

/// Every argument and flag of every command says what it is (its unit
/// where it has one), and no usage line shows a global flag as required.
#[test]
fn every_argument_has_help_and_usage_lines_show_no_global_flag() {
    use clap::CommandFactory;
    fn walk(c: &mut clap::Command, path: &str, bad: &mut Vec<String>) {
        let usage = c.render_usage().to_string();
        for g in ["--store", "--json", "--quiet", "--verbose"] {
            if usage.contains(g) {
                bad.push(format!("{path}: usage shows {g}: {usage}"));
            }
        }
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            if help.trim().is_empty() {
                bad.push(format!("{path}: {id} has no help"));
            }
            let name = id.to_ascii_lowercase();
            let timed = ["timeout", "seconds", "max_future"]
                .iter()
                .any(|t| name.contains(t));
            if timed && !help.to_lowercase().contains("second") {
                bad.push(format!(
                    "{path}: {id} does not say its unit (seconds): {help}"
                ));
            }
            if (name.ends_with("size") || name == "memory")
                && !["byte", "MiB", "K, M, G"].iter().any(|u| help.contains(u))
            {
                bad.push(format!("{path}: {id} does not say its unit: {help}"));
            }
        }
        let names: Vec<String> = c
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for n in names {
            let s = c.find_subcommand_mut(&n).unwrap();
            walk(s, &format!("{path} {n}"), bad);
        }
    }
    let mut c = cairn::cli::Cli::command();
    c.build();
    let mut bad = Vec::new();
    walk(&mut c, "cairn", &mut bad);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// `-q -v` together is a usage error; `--quiet` leaves stderr empty on
/// success.
#[test]
fn quiet_and_verbose_together_are_refused_and_quiet_is_quiet() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().to_str().unwrap();
    let o = cairn_raw(&["--store", s, "-q", "-v", "image", "list"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be used with"),
        "{}",
        text(&o)
    );
    let o = cairn_raw(&["--store", s, "-q", "config", "show"]);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o));
}

/// URLs, policies and host types are parsed where the command line is
/// read: a bad one is a usage error (exit 2) naming the argument, before
/// any file is touched or any server asked.
#[test]
fn typed_arguments_are_refused_as_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("store");
    let s = s.to_str().unwrap();
    for (args, says) in [
        (
            &[
                "pull",
                "--url",
                "ftp://h/x",
                "--profile",
                "web",
                "--boot-dir",
                "/nonexistent",
            ][..],
            "--url <URL>",
        ),
        (
            &[
                "pull",
                "--url",
                "http://h/a b",
                "--profile",
                "web",
                "--boot-dir",
                "/nonexistent",
            ][..],
            "space or a control character",
        ),
        (
            &[
                "pull",
                "--policy",
                "yolo",
                "--profile",
                "web",
                "--boot-dir",
                "/nonexistent",
            ][..],
            "stage, reboot, kexec, soft-reboot, window or apply-live",
        ),
        (
            &["reboot", "--soft=yolo"][..],
            "[possible values: auto, required]",
        ),
        (
            &[
                "mirror",
                "sync",
                "--url",
                "gopher://h/",
                "--suite",
                "x",
                "--keyring",
                "/k",
            ][..],
            "--url <URL>",
        ),
        (
            &["mirror", "sync", "--host-type", "cloud"][..],
            "[possible values: physical, virtual]",
        ),
        // A count of jobs: none is no work, and each is a thread.
        (
            &["mirror", "verify", "--jobs", "0"][..],
            "0 jobs would do nothing: 1 to 256",
        ),
        (
            &["mirror", "verify", "-j", "100000"][..],
            "100000 jobs: at most 256",
        ),
        (
            &["mirror", "sync", "--jobs", "0"][..],
            "0 jobs would do nothing",
        ),
        (
            &["mirror", "sync", "--jobs=-3"][..],
            "a count of jobs, 1 to 256",
        ),
        (
            &[
                "pull",
                "--jobs",
                "257",
                "--profile",
                "web",
                "--boot-dir",
                "/nonexistent",
            ][..],
            "257 jobs: at most 256",
        ),
    ] {
        let mut all = vec!["--store", s];
        all.extend_from_slice(args);
        let o = cairn_raw(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!d.path().join("store").exists(), "{args:?} made the store");
    }
}

/// A count of jobs from the configuration (`mirror.jobs`) follows the
/// command line's rule: 0, or more than 256, is refused, naming the
/// setting, before a source is read.
#[test]
fn a_configured_count_of_jobs_is_checked_as_the_flag_is() {
    let d = tempfile::tempdir().unwrap();
    for (jobs, says) in [
        ("0", "0 jobs would do nothing"),
        ("70000", "70000 jobs: at most 256"),
    ] {
        let conf = d.path().join(format!("cairn-{jobs}.toml"));
        std::fs::write(
            &conf,
            format!("schema-version = 1\n[mirror]\njobs = {jobs}\n"),
        )
        .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["--store"])
            .arg(d.path().join("store"))
            .args([
                "mirror",
                "sync",
                "--url",
                "http://127.0.0.1:9/debian",
                "--suite",
                "x",
                "--keyring",
                "/nonexistent",
            ])
            .env("CAIRN_CONFIG", &conf)
            .env_remove("CAIRN_STORE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            err.contains(&format!("mirror.jobs in the configuration: {says}")),
            "{err}"
        );
    }
}

/// No colour codes when stderr is not a terminal, nor on a terminal with
/// NO_COLOR set; on a terminal without it clap colours its errors (so the
/// test can fail).
#[test]
fn no_colour_off_a_terminal_or_with_no_color() {
    let o = cairn_raw(&["--no-such-flag"]);
    assert!(
        !o.stderr.is_empty() && !o.stderr.contains(&0x1b),
        "{}",
        text(&o)
    );
    if !crate::support::have("script") {
        crate::support::skip("script (bsdutils) is not installed: the terminal half is untested");
        return;
    }
    let on_tty = |no_color: bool| {
        let mut c = Command::new("script");
        c.args(["-qec"])
            .arg(format!("{} --no-such-flag", env!("CARGO_BIN_EXE_cairn")))
            .arg("/dev/null")
            .env("CAIRN_CONFIG", crate::support::NO_CONFIG)
            .env("TERM", "xterm")
            .stdin(Stdio::null());
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        c.output().unwrap().stdout
    };
    let coloured = on_tty(false);
    assert!(
        coloured.contains(&0x1b),
        "a terminal without NO_COLOR: {}",
        String::from_utf8_lossy(&coloured)
    );
    let plain = on_tty(true);
    assert!(
        !plain.is_empty() && !plain.contains(&0x1b),
        "NO_COLOR: {}",
        String::from_utf8_lossy(&plain)
    );
}

/// Refusals that come before any work name what the user wrote and what
/// to do: a disk file in a missing directory (no GRUB is built first), a
/// VM of a missing file (qemu never starts), a directory that is no image.
#[test]
fn errors_before_work_name_the_users_path() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let s = store.to_str().unwrap();
    let missing = d.path().join("no-such-dir/disk.img");
    let o = cairn_raw(&[
        "--store",
        s,
        "disk",
        "create",
        missing.to_str().unwrap(),
        "--image",
        "web",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        e.contains(&format!(
            "{}: no such directory",
            d.path().join("no-such-dir").display()
        )) && e.contains("create it first"),
        "{e}"
    );
    let logs = d.path().join("vm-logs");
    let o = cairn_raw(&[
        "vm",
        "run",
        d.path().join("nope.img").to_str().unwrap(),
        "--log-dir",
        logs.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(e.contains("nope.img") && e.contains("No such file"), "{e}");
    assert!(
        !logs.exists(),
        "qemu's log directory was made: qemu was about to start"
    );
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = cairn_raw(&["--store", s, "image", "verify", empty.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("is a directory without manifest.json: not a cairn image"),
        "{e}"
    );
    let o = cairn_raw(&[
        "--store",
        s,
        "image",
        "verify",
        d.path().join("gone").to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("gone: no such directory"),
        "{}",
        text(&o)
    );
}

/// The configuration: files and drop-ins by name order, then the
/// environment, then flags; `config show` says where each value came from,
/// as text and as JSON (snapshotted shape).
#[test]
fn config_show_says_where_each_value_came_from() {
    let d = tempfile::tempdir().unwrap();
    let main = d.path().join("cairn.toml");
    let write = |p: &Path, t: &str| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, t).unwrap();
    };
    write(
        &main,
        "schema-version = 1\nstore = \"/srv/from-file\"\n[boot]\ntimeout = 3\ntries = 2\n[mirror]\njobs = 7\n",
    );
    write(
        &d.path().join("cairn.toml.d/50-site.toml"),
        "schema-version = 1\n[boot]\ntimeout = 9\n[cycle]\nprofiles = [\"/etc/cairn/profiles/web.toml\"]\n",
    );
    let run = |env_store: Option<&str>, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .env("CAIRN_CONFIG", &main)
            .env_remove("CAIRN_STORE")
            .stdin(Stdio::null());
        if let Some(s) = env_store {
            c.env("CAIRN_STORE", s);
        }
        c.output().unwrap()
    };
    let o = run(None, &["config", "show"]);
    let t = String::from_utf8_lossy(&o.stdout).replace(d.path().to_str().unwrap(), "[DIR]");
    assert!(o.status.success(), "{}", text(&o));
    insta::assert_snapshot!("config-show", t);
    let o = run(Some("/srv/from-env"), &["config", "show", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let store = &j["settings"][0];
    assert_eq!(
        (
            store["key"].as_str(),
            store["value"].as_str(),
            store["from"].as_str()
        ),
        (Some("store"), Some("/srv/from-env"), Some("env"))
    );
    let o = run(
        Some("/srv/from-env"),
        &["--store", "/srv/from-flag", "config", "show", "--json"],
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["settings"][0]["value"], "/srv/from-flag", "{j}");
    assert_eq!(j["settings"][0]["from"], "flag", "{j}");
    let o = run(None, &["config", "show", "--json"]);
    let t = String::from_utf8_lossy(&o.stdout).replace(d.path().to_str().unwrap(), "[DIR]");
    insta::assert_snapshot!("config-show-json", t);
    // A typo is refused, named with its file and line; so is a file others may write.
    write(
        &d.path().join("cairn.toml.d/60-typo.toml"),
        "schema-version = 1\n[boot]\ntimout = 4\n",
    );
    let o = run(None, &["config", "show"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("60-typo.toml") && e.contains("line 3") && e.contains("timout"),
        "{e}"
    );
    std::fs::remove_file(d.path().join("cairn.toml.d/60-typo.toml")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = run(None, &["config", "show"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("writable by group or others"),
        "{}",
        text(&o)
    );
}

/// Under --json even help and the version are JSON documents; a message
/// that quotes hostile bytes (a profile's text here) reaches the terminal
/// with its control characters escaped.
#[test]
fn json_help_and_escaped_error_messages() {
    let o = cairn_raw(&["image", "list", "--help", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["schema-version"], 1);
    assert!(
        j["help"]
            .as_str()
            .unwrap()
            .contains("Usage: cairn image list"),
        "{j}"
    );
    let o = cairn_raw(&["--version", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["version"].as_str().unwrap().starts_with("cairn "), "{j}");
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("esc.toml");
    std::fs::write(&p, "bogus = 1 # \x1b]0;PWNED\x07\x1b[2J\n").unwrap();
    let o = cairn_raw(&[
        "--store",
        d.path().to_str().unwrap(),
        "build",
        p.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        !o.stderr.contains(&0x1b) && !o.stderr.contains(&0x07),
        "{}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\\u{1b}]0;PWNED"),
        "{}",
        text(&o)
    );
}

/// A reader that goes away (`cairn … | head`) ends the output, not the
/// command: no panic, no message, the exit code it would have had — for a
/// report, a generated configuration and a `--json` document alike.
#[test]
fn a_closed_stdout_ends_the_output_not_the_command() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    for args in [
        vec!["config", "show"],
        vec!["publish", "--nginx-config", "127.0.0.1:8080"],
        vec!["config", "show", "--json"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--store")
            .arg(&store)
            .args(&args)
            .env("CAIRN_CONFIG", crate::support::NO_CONFIG)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before cairn writes a byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked") && !err.contains("failed printing"),
            "{args:?}: {}\n{err}",
            out.status
        );
    }
    // Any other failure of the output (a full disk behind `> file`) fails
    // the command, saying so.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--store")
        .arg(&store)
        .args(["publish", "--nginx-config", "127.0.0.1:8080"])
        .env("CAIRN_CONFIG", crate::support::NO_CONFIG)
        .stdin(Stdio::null())
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("writing the output"),
        "{}\n{err}",
        out.status
    );
}
