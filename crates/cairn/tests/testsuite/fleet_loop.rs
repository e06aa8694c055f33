//! The fleet's closed loop without a VM: three machines (boot partitions'
//! trees, each with its own key, the real `cairn pull` and `cairn
//! report`), Debian's nginx taking their reports with WebDAV PUT as
//! `www-data` (the server block `cairn publish --nginx-config` prints),
//! the build host's gate (`cairn cycle --gate-only`) halting a rollout
//! whose first stage fails and taking a healthy one to 100 % by itself.
//! (A machine that really boots, fails its check and rolls back:
//! `fleet_vm::a_failing_health_check_rolls_the_machine_back_by_itself`.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fleet::{Setup, V1, V2, env_of, fake_image, json, noise};
use crate::support::nginx::Nginx;
use crate::support::{cairn, fails, ok};

const V3: &str = "20261203T000001Z";
const MACHINES: [&str; 3] = ["m1", "m2", "m3"];

struct Fleet {
    s: Setup,
    nginx: Nginx,
    boots: Vec<(String, PathBuf)>,
}

impl Fleet {
    /// The store with V1 and V2 (and V3 made here), nginx serving it with
    /// the inbox as the printed configuration says, three machines on V1
    /// (booted well), their keys made and enrolled.
    fn new() -> Option<Fleet> {
        let s = Setup::new(64 << 10)?;
        crate::support::nginx::make_inbox(&s.store);
        let nginx = Nginx::start(&s.store, 0, "");
        let mut boots = Vec::new();
        for m in MACHINES {
            let b = s.boot_dir(m);
            let k = json(cairn(
                &s.store,
                &[
                    "report",
                    "--boot-dir",
                    b.to_str().unwrap(),
                    "--machine-id",
                    m,
                    "--print-key",
                    "--json",
                ],
            ));
            assert_eq!(k["key-made"], true, "{k}");
            let key = k["public-key"].as_str().unwrap().to_string();
            ok(cairn(
                &s.store,
                &["fleet", "enroll", m, "--key", &key, "--profile", "web"],
            ));
            boots.push((m.to_string(), b));
        }
        Some(Fleet { s, nginx, boots })
    }

    fn url(&self) -> String {
        self.nginx.url()
    }

    /// Every machine pulls (the outcomes by machine), then reports.
    fn pull_all(&self) -> Vec<(String, String)> {
        let url = self.url();
        let mut out = Vec::new();
        for (m, b) in &self.boots {
            let r = json(self.s.pull(b, &[&url], &["--machine-id", m]));
            out.push((m.clone(), r["outcome"].as_str().unwrap().to_string()));
        }
        out
    }

    fn report(&self, m: &str) -> serde_json::Value {
        let b = &self.boots.iter().find(|(n, _)| n == m).unwrap().1;
        json(cairn(
            &self.s.store,
            &[
                "report",
                "--boot-dir",
                b.to_str().unwrap(),
                "--machine-id",
                m,
                "--profile",
                "web",
                "--url",
                &self.url(),
                "--key",
                self.s.key.public_key.to_str().unwrap(),
                "--json",
            ],
        ))
    }

    /// `v` in stages 1, 50, 100 % (no soak): the rollout, and the first
    /// stage's machines.
    fn stage(&self, v: &str) -> (serde_json::Value, Vec<String>) {
        let st = json(cairn(
            &self.s.store,
            &[
                "publish",
                "web",
                "--rollout",
                &format!("{v}=1,50,100"),
                "--soak",
                "0",
                "--json",
            ],
        ));
        let first = st["rollouts"][0]["in-stage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["machine"].as_str().unwrap().to_string())
            .collect();
        (st, first)
    }

    fn gate(&self) -> serde_json::Value {
        json(cairn(&self.s.store, &["cycle", "--gate-only", "--json"]))
    }

    fn rollout(&self) -> serde_json::Value {
        json(cairn(
            &self.s.store,
            &["rollout", "status", "web", "--json"],
        ))["rollouts"][0]
            .clone()
    }

    fn boot(&self, m: &str) -> &Path {
        &self.boots.iter().find(|(n, _)| n == m).unwrap().1
    }
}

/// What GRUB and cairn-booted leave on a boot partition after the trial
/// of `v` failed its health check on every try: the trial used up, the
/// last good image unchanged, the check's output kept.
fn fail_trial(boot: &Path, v: &str, output: &str) {
    let mut vars =
        cairn::boot::env::parse(&fs::read(boot.join("boot/grub/grubenv")).unwrap()).unwrap();
    assert!(env_of(boot).contains(&format!("cairn_trial=found>/images/web/{v}")));
    cairn::boot::env::update(&mut vars, &[("cairn_left", "0")]);
    cairn::boot::env::save(&boot.join("boot/grub/grubenv"), &vars).unwrap();
    fs::write(
        boot.join("cairn/health-failed"),
        format!("found>/images/web/{v}: failed: exit status 1\n{output}\n"),
    )
    .unwrap();
}

/// What a healthy boot of the trial leaves: it is the last good image.
fn pass_trial(boot: &Path, v: &str) {
    let mut vars =
        cairn::boot::env::parse(&fs::read(boot.join("boot/grub/grubenv")).unwrap()).unwrap();
    cairn::boot::env::update(
        &mut vars,
        &[("cairn_good", &format!("found>/images/web/{v}"))],
    );
    cairn::boot::env::save(&boot.join("boot/grub/grubenv"), &vars).unwrap();
}

/// The page in a real browser (Debian's Chromium, headless) from nginx:
/// it renders (a screenshot), the plot has a segment per report, the
/// halted rollout and the failing machine's output are on it as text.
fn browse(f: &Fleet, html: &Path) {
    if crate::support::need_tools(&["chromium"]) {
        return;
    }
    let url = format!("{}fleet/", f.url());
    let profile = f.s.d.path().join("chromium");
    let run = |what: &[&str]| {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(what)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let shot = html.with_file_name("fleet.png");
    run(&[&format!("--screenshot={}", shot.display())]);
    let png = fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let dom = String::from_utf8(run(&["--dump-dom"]).stdout).unwrap();
    let segments = dom.matches("class=\"seg\"").count();
    assert!(segments >= 6, "{segments} segments in the plot\n{dom}");
    assert!(
        dom.contains("Address in use") && dom.contains("halted"),
        "{dom}"
    );
    assert!(!dom.contains("<&'"), "{dom}");
}

fn index_rollout(store: &Path, v: &str) -> u64 {
    let i: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("images/web/index.json")).unwrap()).unwrap();
    i["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"] == v)
        .map_or(u64::MAX, |x| x["rollout"].as_u64().unwrap())
}

/// v2 fails on the first stage's machine: it rolls back, reports it, the
/// rollout halts by itself and the others never take v2; `fleet status`
/// and the HTML page show it. v3 is healthy: every stage advances,
/// unattended, to 100 %.
#[test]
fn a_failing_stage_halts_the_rollout_and_a_healthy_one_reaches_everyone() {
    let Some(f) = Fleet::new() else {
        return;
    };
    let store = &f.s.store;
    for (m, _) in &f.boots {
        f.report(m);
    }
    f.gate();
    // v2 in stages, as a careful admin would (small stages halt on one failure).
    let (st, first) = f.stage(V2);
    assert!(!first.is_empty() && first.len() < 3, "stage 1: {st}");
    let pulled = f.pull_all();
    for (m, outcome) in &pulled {
        let want = if first.contains(m) {
            "staged"
        } else {
            "held-back"
        };
        assert_eq!(outcome, want, "{m}: {pulled:?}");
    }
    // The stage's machines boot v2, fail the check twice, are back on v1.
    for m in &first {
        fail_trial(
            f.boot(m),
            V2,
            "nginx: [emerg] bind() to 0.0.0.0:80 failed <&'\"> (98: Address in use)",
        );
    }
    for (m, _) in &f.boots {
        f.report(m);
    }
    let g = f.gate();
    assert_eq!(g["rollouts"][0]["did"], "halted", "{g}");
    let r = f.rollout();
    assert_eq!(r["state"], "halted", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains(&first[0]) && reason.contains("Address in use"),
        "{reason}"
    );
    // Signed again without v2 for the machines that lack it: none takes it.
    assert_eq!(index_rollout(store, V2), 0);
    // Whoever publishes next keeps the halt; a share by hand is refused.
    ok(cairn(store, &["publish", "web"]));
    assert_eq!(index_rollout(store, V2), 0);
    let e = fails(cairn(
        store,
        &["publish", "web", "--rollout", &format!("{V2}=100")],
    ));
    assert!(e.contains("staged rollout"), "{e}");
    for (m, outcome) in f.pull_all() {
        assert_ne!(outcome, "staged", "{m} took v2 after the halt");
    }
    // The fleet at a glance, and its page (served by the same nginx).
    let html = store.join("fleet/html");
    let fs_ = json(cairn(
        store,
        &[
            "fleet",
            "status",
            "--html",
            html.to_str().unwrap(),
            "--json",
        ],
    ));
    let machines = fs_["machines"].as_array().unwrap();
    assert_eq!(machines.len(), 3, "{fs_}");
    let failing = machines
        .iter()
        .find(|m| m["machine"] == first[0].as_str())
        .unwrap();
    assert!(
        failing["health"]
            .as_str()
            .unwrap()
            .starts_with("rolled back"),
        "{failing}"
    );
    assert!(
        failing["rollout"].as_str().unwrap().contains("Halted"),
        "{failing}"
    );
    assert_eq!(failing["stale"], false);
    let page = fs::read_to_string(html.join("index.html")).unwrap();
    assert!(
        page.contains("&lt;&amp;&#39;&quot;&gt;") && !page.contains("<&'\">"),
        "unescaped"
    );
    assert!(page.contains("<svg") && page.contains("halted"), "{page}");
    browse(&f, &html);

    // v3, healthy: stage after stage, nobody's hands.
    let l3 = noise(3, 64 << 10);
    fake_image(
        store,
        &f.s.key,
        V3,
        Some(V1),
        &[
            ("filesystem.squashfs", &f.s.base),
            ("layer-2.squashfs", &l3),
        ],
    );
    let st = json(cairn(
        store,
        &[
            "publish",
            "web",
            "--rollout",
            &format!("{V3}=1,50,100"),
            "--soak",
            "0",
            "--json",
        ],
    ));
    assert_eq!(st["rollouts"][0]["state"], "running", "{st}");
    let mut stages = Vec::new();
    for _ in 0..4 {
        for (m, outcome) in f.pull_all() {
            if outcome == "staged" {
                pass_trial(f.boot(&m), V3);
            }
        }
        for (m, _) in &f.boots {
            f.report(m);
        }
        let g = f.gate();
        stages.push(g["rollouts"][0]["did"].as_str().unwrap().to_string());
        if g["rollouts"][0]["did"] == "done" {
            break;
        }
    }
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );
    assert!(!stages.contains(&"halted".to_string()), "{stages:?}");
    assert_eq!(index_rollout(store, V3), 100);
    let r = f.rollout();
    assert_eq!(r["state"], "done", "{r}");
    let healthy = r["in-stage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"] == "healthy")
        .count();
    assert_eq!(healthy, 3, "{r}");
}

/// What the web server's inbox holds is hostile: another machine's key, a
/// replayed report, an unknown machine, an oversized one, a link — each
/// ignored and named; nginx refuses what is not an enrolled machine's PUT;
/// the rollout does not move.
#[test]
fn reports_that_are_not_the_machines_own_are_refused_and_named() {
    let Some(f) = Fleet::new() else {
        return;
    };
    let store = &f.s.store;
    let put = |path: &str, body: &[u8]| -> u16 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "PUT",
                "--data-binary",
                "@-",
            ])
            .arg(format!("{}{}", f.url(), path.trim_start_matches('/')))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(body)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap()
    };
    let inbox = store.join("fleet/inbox");
    let taken = |m: &str| -> Vec<u8> {
        let p = inbox.join(m).join("report.json");
        fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    // A rollout in its first stage, which nothing below may move.
    let (_, first) = f.stage(V2);
    // m1 reports; its report as the inbox got it, kept for a replay.
    f.report("m1");
    let old_m1 = taken("m1");
    f.gate();
    // m2's own report, put into m1's place (signed by another machine's key).
    f.report("m2");
    let m2 = taken("m2");
    assert_eq!(
        put("/reports/m1/report.json", &m2),
        201,
        "{}",
        f.nginx.errors()
    );
    let g = f.gate();
    let refused = g["reports"]["refused"].as_array().unwrap();
    assert!(
        refused.iter().any(|r| r["entry"] == "m1/report.json"
            && r["reason"]
                .as_str()
                .unwrap()
                .contains("not this machine's key")),
        "{g}"
    );
    // m1's older report again: a replay.
    assert_eq!(put("/reports/m1/report.json", &old_m1), 201);
    let g = f.gate();
    assert!(
        g["reports"]["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("replayed")),
        "{g}"
    );
    // An unknown machine: nginx has no place for it, nothing lands.
    let code = put("/reports/intruder/report.json", &m2);
    assert_eq!(code, 404, "{}", f.nginx.errors());
    assert!(!inbox.join("intruder").exists());
    // Oversized: nginx refuses it (413).
    assert_eq!(put("/reports/m1/report.json", &vec![b'x'; 100 << 10]), 413);
    // Other paths and methods: nothing.
    assert_eq!(put("/reports/m1/other.json", b"{}"), 404);
    assert_eq!(put("/images/web/index.json", b"{}"), 405);
    // A report numbered ahead of any clock (it would shut out the
    // machine's later reports), signed by m1's own key: refused.
    let k = cairn::trust::machine::MachineKey::load(f.boot("m1")).unwrap();
    let mut r: cairn::fleet::report::Report =
        serde_json::from_slice(&fs::read(store.join("fleet/reports/m1/last.json")).unwrap())
            .unwrap();
    r.seq = u64::MAX;
    let report = serde_json::to_string(&r).unwrap();
    let env = serde_json::json!({"report": report, "signature": k.sign(report.as_bytes())});
    assert_eq!(
        put("/reports/m1/report.json", env.to_string().as_bytes()),
        201
    );
    let g = f.gate();
    assert!(
        g["reports"]["refused"]
            .to_string()
            .contains("ahead of any clock"),
        "{g}"
    );
    // A machine of the stage that says it runs another profile, healthy on
    // v2: its word does not move web's rollout (nor another's).
    let stage_m = first[0].clone();
    pass_trial(f.boot(&stage_m), V2);
    let b = f.boot(&stage_m);
    ok(cairn(
        store,
        &[
            "report",
            "--boot-dir",
            b.to_str().unwrap(),
            "--machine-id",
            &stage_m,
            "--profile",
            "other",
            "--url",
            &f.url(),
            "--key",
            f.s.key.public_key.to_str().unwrap(),
        ],
    ));
    let g = f.gate();
    assert_eq!(g["rollouts"][0]["did"], "waiting", "{g}");
    // Planted by the web server's user: a directory of an unknown machine,
    // an oversized report, a link to a secret.
    fs::create_dir(inbox.join("intruder")).unwrap();
    fs::write(inbox.join("intruder/report.json"), &m2).unwrap();
    fs::write(inbox.join("m3/report.json"), vec![b' '; 70 << 10]).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", inbox.join("m2/report.json")).unwrap();
    let g = f.gate();
    let reasons: Vec<String> = g["reports"]["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r["entry"].as_str().unwrap(),
                r["reason"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "intruder/report.json: an unknown machine",
        "m3/report.json: oversized",
        "m2/report.json: a symbolic link",
    ] {
        assert!(
            reasons.iter().any(|r| r.starts_with(want)),
            "{want}: {reasons:?}"
        );
    }
    assert!(g["reports"]["taken"].as_array().unwrap().is_empty(), "{g}");
    // A machine's place replaced by a link: named, and the others' reports
    // are still taken.
    fs::remove_dir_all(inbox.join("m3")).unwrap();
    std::os::unix::fs::symlink("/etc", inbox.join("m3")).unwrap();
    f.report("m1");
    let g = f.gate();
    assert!(
        g["reports"]["refused"]
            .to_string()
            .contains("not a directory"),
        "{g}"
    );
    assert_eq!(g["reports"]["taken"][0][0], "m1", "{g}");
    // The rollout never moved.
    let r = f.rollout();
    assert_eq!(
        (r["state"].as_str(), r["stage"].as_u64()),
        (Some("running"), Some(0)),
        "{r}"
    );
    // Named where the admin looks; nothing of the refused was kept.
    let st = json(cairn(store, &["fleet", "status", "--json"]));
    assert!(st["refused"].as_array().unwrap().len() >= 5, "{st}");
    let m1 = st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == "m1")
        .unwrap()
        .clone();
    assert_eq!(m1["machine"], "m1");
    // An enrolment with another key is not taken silently.
    let other = "0".repeat(63) + "1";
    let e = fails(cairn(
        store,
        &["fleet", "enroll", "m1", "--key", &other, "--profile", "web"],
    ));
    assert!(
        e.contains("another key") || e.contains("not an Ed25519"),
        "{e}"
    );
}

/// An edge cache between the machines and the build host (a second
/// nginx, `proxy_cache`, the block `cairn publish --nginx-edge-config`
/// prints) keeps every guarantee: 50 machines take v2 through it while the
/// origin serves each of v2's files once; a machine that saw a newer index
/// refuses the edge's older copy (replay), and an index past its expiry is
/// refused through the edge as without it.
#[test]
fn an_edge_cache_serves_each_file_once_and_changes_no_check() {
    let Some(s) = Setup::new(256 << 10) else {
        return;
    };
    if crate::support::need_tools(&["faketime"]) {
        return;
    }
    let origin = Nginx::start(&s.store, 0, "");
    let edge = Nginx::start_edge(&origin);
    let url = edge.url();
    let machines = 50;
    for i in 0..machines {
        let m = format!("m{i}");
        let b = s.boot_dir(&m);
        let r = json(s.pull(&b, &[&url], &["--machine-id", &m]));
        assert_eq!(r["outcome"], "staged", "{r}");
    }
    let of_v2 =
        |hits: &[crate::support::nginx::Hit]| -> (std::collections::BTreeMap<String, usize>, u64) {
            let mut per = std::collections::BTreeMap::new();
            let mut bytes = 0;
            for h in hits
                .iter()
                .filter(|h| h.path.starts_with(&format!("/images/web/{V2}/")))
            {
                *per.entry(h.path.clone()).or_insert(0) += 1;
                bytes += h.bytes;
            }
            (per, bytes)
        };
    let (at_origin, origin_bytes) = of_v2(&origin.hits());
    let (at_edge, edge_bytes) = of_v2(&edge.hits());
    assert!(!at_origin.is_empty());
    assert!(
        at_origin.values().all(|&n| n == 1),
        "the origin served a file twice: {at_origin:?}"
    );
    assert!(at_edge.values().any(|&n| n == machines), "{at_edge:?}");
    eprintln!(
        "edge: {machines} machines took {edge_bytes} bytes of v2 from the edge, the origin served {origin_bytes} ({:.1}x less)",
        edge_bytes as f64 / origin_bytes.max(1) as f64
    );
    // A newer publication: a machine that took it from the origin refuses
    // the edge's older copy, cached for its max-age.
    ok(cairn(&s.store, &["publish", "web"]));
    let late = s.boot_dir("late");
    json(s.pull(&late, &[&origin.url()], &["--machine-id", "late"]));
    let e = fails(s.pull(&late, &[&url], &["--machine-id", "late"]));
    assert!(e.contains("refusing a replayed index"), "{e}");
    // Past the index's max-age (60 s) the edge asks the origin again: the
    // new index, taken. (A wait, not work: no core is held.)
    std::thread::sleep(std::time::Duration::from_secs(62));
    let r = json(s.pull(&late, &[&url], &["--machine-id", "late"]));
    let published: serde_json::Value =
        serde_json::from_slice(&fs::read(s.store.join("images/web/index.json")).unwrap()).unwrap();
    assert_eq!(r["serial"], published["serial"], "{r}");
    // A week and a day later by the clock, the index is past its expiry:
    // refused through the edge as from the origin.
    let fresh = s.boot_dir("fresh");
    let pubkey = s.key.public_key.to_str().unwrap().to_string();
    let out = Command::new("faketime")
        .arg("+8 days")
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .arg("--store")
        .arg(&s.store)
        .args([
            "pull",
            "--boot-dir",
            fresh.to_str().unwrap(),
            "--profile",
            "web",
            "--key",
            &pubkey,
        ])
        .args(["--machine-id", "fresh", "--url", &url])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("expired"), "{e}");
}
