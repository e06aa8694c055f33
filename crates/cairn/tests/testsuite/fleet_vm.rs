//! Delivery, proven in VMs: a machine on qemu's user network pulls from
//! nginx on the host's 127.0.0.1 (10.0.2.2 in the guest) by its own timer,
//! switches with kexec, and its health check decides; a version whose
//! health check fails is tried the disk's number of times, then the
//! machine is back on the last good image by itself. Each proof is a test
//! of its own (`cargo test --test testsuite fleet_vm::NAME`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::fixture::{self, FLEET_PORT, marker_of, version_of};
use crate::support::nginx::{Nginx, free_port};
use crate::support::vm::boot;
use crate::support::{cairn, ok};

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A disk holding only `img`, `tries` boots for a new default.
fn disk_of(store: &Path, disk: &Path, img: &Path, tries: &str) {
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
            "--tries",
            tries,
        ],
    ));
}

fn grubenv(disk: &Path, mnt: &Path) -> String {
    let m = cairn::boot::disk::MountedBoot::mount(disk, mnt).unwrap();
    String::from_utf8_lossy(&fs::read(m.dir.join("boot/grub/grubenv")).unwrap())
        .trim_end_matches('#')
        .to_string()
}

/// A machine booted from a disk holding v1 pulls by itself (its timer,
/// nothing typed): the signed index from nginx, only the delta's files
/// (the layer it shares with v1 never crosses the wire, by nginx's own
/// log), v2 staged as the default on trial, then kexec into v2 (the try
/// counted), whose health check passes and marks it good.
#[test]
fn a_machine_pulls_the_delta_by_itself_and_kexecs_into_it() {
    let Some(f) = fixture::get() else {
        return;
    };
    // (upgraded() takes both cores itself while it makes the delta.)
    let u = f.upgraded();
    // The port before the core: a proof waiting for the port holds none.
    let _port = fixture::fleet_port();
    let _core = crate::support::cores::one();
    let w = f.work("a_machine_pulls_the_delta_by_itself_and_kexecs_into_it");
    let store = fixture::copy_store(&u.store, w.path());
    ok(cairn(&store, &["publish", "webtest"]));
    let (v1, v2) = (version_of(&u.parent), version_of(&u.delta));
    let nginx = Nginx::start(&store, FLEET_PORT, "");
    let disk = w.path().join("disk.img");
    disk_of(&store, &disk, &store.join("images/webtest").join(&v1), "3");
    let want = marker_of(&u.delta);
    let r = boot(
        &store,
        &disk,
        "bios",
        None,
        &[
            "--net",
            "--stay-up",
            "--marker",
            &want,
            "--event",
            &marker_of(&u.parent),
        ],
        "fleet-pull",
        900,
    );
    r.reached(&want);
    // v1 came up first, then pulled: what its pull service said.
    r.console_has("webtest: index serial");
    r.console_has(&format!("  {v2}: "));
    r.console_has(&format!(
        "cairn: policy kexec: switching to webtest/{v2} with kexec"
    ));
    let hits = nginx.hits();
    let new_layer = format!("/{}", u.delta_layer());
    let of_v2: Vec<_> = hits
        .iter()
        .filter(|h| h.path.starts_with(&format!("/images/webtest/{v2}/")))
        .collect();
    assert!(
        of_v2
            .iter()
            .any(|h| h.path.ends_with(&new_layer) && h.status == 200),
        "{hits:?}"
    );
    assert!(
        !of_v2
            .iter()
            .any(|h| h.path.contains("/filesystem.squashfs")),
        "v1's layer crossed the wire: {hits:?}"
    );
    let sent: u64 = of_v2.iter().map(|h| h.bytes).sum();
    let delta: u64 = u.report["new_layer_bytes"].as_u64().unwrap();
    let full: u64 = fs::read_dir(&u.delta)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".iso"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    eprintln!("pulled {sent} bytes for v2 (delta layer {delta}, whole image {full})");
    assert!(sent < full / 2, "{sent} of {full} bytes");
    let env = grubenv(&disk, &w.path().join("mnt"));
    let entry = format!("found>/images/webtest/{v2}");
    assert!(
        env.contains(&format!("cairn_good={entry}\n"))
            && env.contains(&format!("cairn_trial={entry}\n"))
            && env.contains("cairn_left=2\n"),
        "{env}"
    );
}

/// v3's health check fails. Pulled onto a disk whose v2 booted fine, v3 is
/// the default on trial; each of its boots fails the check and reboots;
/// after the disk's two tries GRUB boots v2 again, by itself. A new pull
/// does not try v3 again.
#[test]
fn a_failing_health_check_rolls_the_machine_back_by_itself() {
    let Some(f) = fixture::get() else {
        return;
    };
    // (upgraded() takes both cores itself while it makes the delta.)
    let u = f.upgraded();
    // Both cores while it builds an image, then one while its VM runs.
    let all = crate::support::cores::all();
    let w = f.work("a_failing_health_check_rolls_the_machine_back_by_itself");
    let store = fixture::copy_store(&u.store, w.path());
    let p3 = w.path().join("webtest3.toml");
    fs::write(
        &p3,
        format!(
            "schema-version = 1\nname = \"webtest\"\nextends = \"{}\"\n\
             [health]\ncommand = \"echo broken on purpose; exit 3\"\ntimeout = 20\n",
            f.webtest2.display()
        ),
    )
    .unwrap();
    let r3 = json(ok(cairn(
        &store,
        &["upgrade", p3.to_str().unwrap(), "--force", "--json"],
    )));
    let v3_dir = PathBuf::from(r3["path"].as_str().unwrap());
    let (v2, v3) = (version_of(&u.delta), version_of(&v3_dir));
    ok(cairn(&store, &["publish", "webtest"]));
    drop(all);
    // The machine reports to the fleet URL its images carry. (The port
    // before the core: a proof waiting for the port holds none.)
    let _port = fixture::fleet_port();
    let _core = crate::support::cores::one();
    crate::support::nginx::make_inbox(&store);
    let nginx = Nginx::start(&store, FLEET_PORT, "");
    let disk = w.path().join("disk.img");
    // (The disk's machine is enrolled by `disk create`.)
    disk_of(&store, &disk, &store.join("images/webtest").join(&v2), "2");
    // v3 in stages that gate themselves: the first holds this machine.
    let st = json(ok(cairn(
        &store,
        &[
            "publish",
            "webtest",
            "--rollout",
            &format!("{v3}=1,50,100"),
            "--soak",
            "0",
            "--json",
        ],
    )));
    assert_eq!(
        st["rollouts"][0]["in-stage"].as_array().unwrap().len(),
        1,
        "{st}"
    );
    let v2_entry = format!("webtest-{v2}");
    {
        // v2 booted fine before (as `boot_counting…` proves it would).
        let m = cairn::boot::disk::MountedBoot::mount(&disk, &w.path().join("mnt")).unwrap();
        let envp = m.dir.join("boot/grub/grubenv");
        let mut vars = cairn::boot::env::parse(&fs::read(&envp).unwrap()).unwrap();
        cairn::boot::env::update(
            &mut vars,
            &[
                ("cairn_good", &v2_entry),
                ("cairn_trial", &v2_entry),
                ("cairn_left", "1"),
            ],
        );
        cairn::boot::env::save(&envp, &vars).unwrap();
    }
    let key = cairn::trust::keys::load(&store).unwrap().public_key;
    let pull = |expect: &str| {
        let r = json(ok(cairn(
            &store,
            &[
                "pull",
                disk.to_str().unwrap(),
                "--url",
                &nginx.url(),
                "--profile",
                "webtest",
                "--key",
                key.to_str().unwrap(),
                "--json",
            ],
        )));
        assert_eq!(r["outcome"], expect, "{r}");
        r
    };
    let r = pull("staged");
    assert_eq!(r["entry"], format!("found>/images/webtest/{v3}"), "{r}");
    assert_eq!(r["tries"], 2, "{r}");
    let want = marker_of(&u.delta);
    let bad = format!("CAIRN-UNHEALTHY profile=webtest version={v3}");
    // Back on v2, the machine reports (its pull's report, or its report
    // timer's): the marker is a report sent from v2 (written after the
    // report reached nginx; one sent by a failing v3 boot never ends the run).
    let reported = &format!("CAIRN-REPORTED image=webtest/{v2} ");
    let b = boot(
        &store,
        &disk,
        "bios",
        None,
        &[
            "--reboots",
            "--net",
            "--stay-up",
            "--marker",
            reported,
            "--event",
            &bad,
            "--event",
            &want,
        ],
        "fleet-rollback",
        1200,
    );
    assert!(
        b.marker.as_deref().is_some_and(|m| m.starts_with(reported)),
        "{}",
        b.why()
    );
    assert!(
        b.console.contains(&want) || b.markers.contains(&want),
        "v2 did not come back\n{}",
        b.why()
    );
    assert_eq!(
        b.markers.matches(&bad).count(),
        2,
        "v3 should be tried twice\n{}",
        b.why()
    );
    // (GRUB wraps its console lines at 80 columns.)
    b.console_has_wrapped("never reported a good boot; falling back to");
    let env = grubenv(&disk, &w.path().join("mnt"));
    assert!(
        env.contains(&format!("cairn_good={v2_entry}\n"))
            && env.contains(&format!("cairn_trial=found>/images/webtest/{v3}\n"))
            && env.contains("cairn_left=0\n"),
        "{env}"
    );
    // The build host's gate takes the report in: v3 failed on the first
    // stage's machine, the rollout halts by itself, with the check's output.
    let g = json(ok(cairn(&store, &["cycle", "--gate-only", "--json"])));
    assert_eq!(g["reports"]["refused"].as_array().unwrap().len(), 0, "{g}");
    assert_eq!(g["rollouts"][0]["did"], "halted", "{g}");
    let reason = g["rollouts"][0]["detail"].as_str().unwrap();
    assert!(
        reason.contains("broken on purpose") && reason.contains(&v3),
        "{reason}"
    );
    let fleet = json(ok(cairn(&store, &["fleet", "status", "--json"])));
    let m = &fleet["machines"][0];
    assert_eq!(m["booted"], format!("webtest/{v2}"), "{fleet}");
    assert!(
        m["health"].as_str().unwrap().starts_with("passed"),
        "{fleet}"
    );
    assert!(m["rollout"].as_str().unwrap().contains("Halted"), "{fleet}");
    // No machine that lacks v3 takes it now (it is at 0 %); this one,
    // which had it, is held back too, waiting for a newer version.
    pull("held-back");
}

/// The apply-live policy, over HTTP: a machine running v1 (policy
/// apply-live, fleet URL on a port of this test's) pulls v2 by its timer,
/// stages it on trial, then installs v2's new package (`less`) into the
/// running system with apt from the published mirror — the image's own apt
/// sources, through nginx, not the build host's paths. No reboot.
#[test]
fn the_apply_live_policy_installs_the_new_packages_from_the_published_mirror() {
    let Some(f) = fixture::get() else {
        return;
    };
    // (upgraded() takes both cores itself while it makes the delta.)
    let u = f.upgraded();
    // Both cores while it builds two images, then one while its VM runs.
    let all = crate::support::cores::all();
    let w = f.work("the_apply_live_policy_installs_the_new_packages_from_the_published_mirror");
    let store = fixture::copy_store(&u.store, w.path());
    let port = free_port();
    let fleet = format!(
        "[fleet]\nurls = [\"http://10.0.2.2:{port}/\"]\npolicy = \"apply-live\"\n\
         first = \"5s\"\ninterval = \"1h\"\ndelay = \"1s\"\n"
    );
    // v1 also reports, once apply-live has recorded what it did (a path
    // unit on its record), the version of `less` now installed and the
    // record, on the second serial port.
    let files = w.path().join("files");
    fs::create_dir_all(&files).unwrap();
    fs::write(
        files.join("applied"),
        "#!/bin/sh\nfor i in $(seq 30); do grep -q '\"to\"' /var/lib/cairn/applied-live.json && break; sleep 1; done\n\
         v=$(dpkg-query -W -f='${Version}' less 2>/dev/null || echo none)\n\
         echo \"PROBE less=${v:-none}\" > /dev/ttyS1\n\
         for i in $(seq 30); do a=$(journalctl -u cairn-pull.service -o cat | grep -E 'policy apply-live: (apply-live|none) ' | tail -n 1); [ -n \"$a\" ] && break; sleep 1; done\n\
         echo \"PROBE action=$a\" > /dev/ttyS1\n\
         echo \"APPLIED-LIVE $(tr -d '\\n' < /var/lib/cairn/applied-live.json | grep -o '\"to\": *\"webtest/[^\"]*\"' | tail -n 1)\" > /dev/ttyS1\n",
    )
    .unwrap();
    fs::write(
        files.join("applied.path"),
        "[Unit]\nDescription=test: apply-live recorded\n[Path]\nPathExists=/var/lib/cairn/applied-live.json\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    fs::write(
        files.join("applied.service"),
        "[Unit]\nDescription=test: report apply-live\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/cairn-test-applied\n",
    )
    .unwrap();
    let report = "[[files]]\nsource = \"files/applied\"\ndest = \"/usr/local/sbin/cairn-test-applied\"\nmode = \"0755\"\n\
         [[files]]\nsource = \"files/applied.path\"\ndest = \"/etc/systemd/system/cairn-test-applied.path\"\n\
         [[files]]\nsource = \"files/applied.service\"\ndest = \"/etc/systemd/system/cairn-test-applied.service\"\n\
         [[hooks]]\nscript = \"ln -s /etc/systemd/system/cairn-test-applied.path \\\"$1/etc/systemd/system/multi-user.target.wants/\\\"\"\n";
    // v1: webtest's packages; v2: webtest2's (one more, `less`).
    let mut dirs = Vec::new();
    for (name, base, more) in [("al1", &f.webtest, report), ("al2", &f.webtest2, "")] {
        let p = w.path().join(format!("{name}.toml"));
        fs::write(
            &p,
            format!(
                "schema-version = 1\nname = \"webtest\"\nextends = \"{}\"\n{more}{fleet}",
                base.display()
            ),
        )
        .unwrap();
        let r = json(ok(cairn(
            &store,
            &["upgrade", p.to_str().unwrap(), "--force", "--json"],
        )));
        dirs.push(PathBuf::from(r["path"].as_str().unwrap()));
    }
    let (v1, v2) = (version_of(&dirs[0]), version_of(&dirs[1]));
    ok(cairn(&store, &["publish", "webtest"]));
    drop(all);
    let _core = crate::support::cores::one();
    let nginx = Nginx::start(&store, port, "");
    let disk = w.path().join("disk.img");
    disk_of(&store, &disk, &dirs[0], "3");
    let want = "APPLIED-LIVE";
    let r = boot(
        &store,
        &disk,
        "bios",
        None,
        &[
            "--net",
            "--stay-up",
            "--marker",
            want,
            "--event",
            &marker_of(&dirs[0]),
        ],
        "fleet-apply-live",
        900,
    );
    // What apply-live recorded, and `less` installed in the running system.
    assert!(
        r.marker
            .as_deref()
            .is_some_and(|m| m.contains(&format!("\"webtest/{v2}\""))),
        "{}",
        r.why()
    );
    // The boot's probe saw no `less`; after apply-live, the report has it.
    let less: Vec<&str> = r
        .markers
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PROBE less="))
        .collect();
    assert_eq!(less.first(), Some(&"none"), "{}", r.why());
    assert!(
        less.len() == 2 && less[1] != "none",
        "less was not installed live: {less:?}\n{}",
        r.why()
    );
    r.console_has(&format!("  {v2}: "));
    r.console_has(&format!(
        "cairn: policy apply-live: applying webtest/{v2}'s packages live"
    ));
    // The pull's own verdict, read from its journal before the marker (its
    // console line may come after the line that ends the run).
    r.markers_have("package change(s) applied");
    assert!(!r.markers.contains("differs from the image"), "{}", r.why());
    let hits = nginx.hits();
    let got = |pat: &str| {
        hits.iter()
            .any(|h| h.path.starts_with("/mirror/") && h.path.contains(pat) && h.status == 200)
    };
    assert!(got("/InRelease") || got("/Release.gpg"), "{hits:?}");
    assert!(
        got("/less_"),
        "less did not come from the published mirror: {hits:?}"
    );
    // The image stays staged on trial: it boots at the next reboot.
    let env = grubenv(&disk, &w.path().join("mnt"));
    assert!(
        env.contains(&format!("cairn_trial=found>/images/webtest/{v2}\n")),
        "{env}"
    );
    assert_ne!(v1, v2);
}
