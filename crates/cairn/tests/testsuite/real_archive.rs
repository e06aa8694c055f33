//! The real archive tier: mirror the closure of what a cairn live image needs
//! from the host's configured Debian archive, then prove it with apt-get
//! update and mmdebstrap from the local mirror alone. Needs root, network and
//! mmdebstrap.

use std::process::{Command, Stdio};

use crate::support::apt::Apt;
use crate::support::{cairn, is_root, need_tools, ok, skip};

#[test]
fn host_archive_closure_installs_with_mmdebstrap() {
    if !is_root() {
        skip("needs root (mmdebstrap)");
        return;
    }
    if need_tools(&["mmdebstrap", "apt-get", "gpgv"]) {
        return;
    }
    // One core: the network, then mmdebstrap (one process at a time).
    let _core = crate::support::cores::one();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Default sources: the host's apt configuration; default selection: the
    // closure of the `default` profile (what `cairn build` needs first).
    let out = cairn(&store, &["mirror", "sync", "--json"]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("connect") || err.contains("resolve") || err.contains("dns") {
            skip(&format!("the host's archive is not reachable: {err}"));
            return;
        }
        panic!("sync failed:\n{}", crate::support::text(&out));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["packages"].as_u64().unwrap() > 80, "{report}");
    ok(cairn(&store, &["mirror", "verify"]));

    // Sources for the local mirror, one line per suite, the host's keyrings.
    let lines: Vec<String> = ok(cairn(&store, &["mirror", "sources"]))
        .lines()
        .map(String::from)
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("deb [signed-by=/") && l.contains(" file:///")),
        "{lines:?}"
    );
    Apt::new(&dir.path().join("apt"), &lines).run(&["update"]);

    let suite = report["repos"][0]["suites"][0]["suite"]
        .as_str()
        .unwrap()
        .to_string();
    let target = dir.path().join("root.tar");
    // Everything the default profile installs (its kernel is this host
    // type's): what `cairn build` with no argument asks of the mirror
    // that `cairn mirror sync` with no argument made.
    let p = cairn::profile::load_arg("default").unwrap();
    let include = p.all_packages(p.resolved_host_type()).join(",");
    let o = Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
        ])
        .arg(format!("--include={include}"))
        .arg(&suite)
        .arg(&target)
        .args(&lines)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mmdebstrap from the local mirror failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&target)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("./usr/lib/live/boot/") || list.contains("./lib/live/boot/"),
        "live-boot missing from the rootfs"
    );
    assert!(
        list.lines().any(|l| l.starts_with("./boot/vmlinuz-")),
        "no kernel in the rootfs"
    );
}
