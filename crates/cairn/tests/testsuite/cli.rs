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
    ] {
        let mut a = vec!["--store", s, "--quiet"];
        a.extend(args);
        let o = cairn_raw(&a);
        insta::assert_snapshot!(name, stable(&o, &store));
    }
}
