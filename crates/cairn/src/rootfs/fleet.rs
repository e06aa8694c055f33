//! What a profile's `[health]` and `[fleet]` put in a tree: the check the
//! boot marker runs before it marks a boot good, and the units, network
//! and apt sources with which the image's machines keep themselves up to
//! date. What the profile no longer asks for is removed, so an upgrade's
//! tree says what its profile says.

use fs_err as fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::{Context, Result};

use super::chroot::inside_link;
use super::customize::{remove_in_tree, write};
use crate::image::paths::{
    CAIRN_BIN, FLEET_FILE, HEALTH_ENV, HEALTH_SCRIPT, PULL_SERVICE, PULL_TIMER, REPORT_SERVICE,
    REPORT_TIMER,
};
use crate::mirror::state::{MirrorPaths, MirrorState};
use crate::profile::{Fleet, Health, Profile};

const NETWORK_FILE: &str = "/etc/systemd/network/80-cairn-dhcp.network";
const FLEET_SOURCES: &str = "/etc/apt/sources.list.d/cairn.sources";
/// Links that enable a unit: (link in the tree, target).
const FLEET_LINKS: &[(&str, &str)] = &[
    (
        "/etc/systemd/system/timers.target.wants/cairn-pull.timer",
        PULL_TIMER,
    ),
    (
        "/etc/systemd/system/timers.target.wants/cairn-report.timer",
        REPORT_TIMER,
    ),
    (
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    ),
    (
        "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
        "/lib/systemd/system/systemd-networkd.socket",
    ),
    (
        "/etc/systemd/system/dbus-org.freedesktop.network1.service",
        "/lib/systemd/system/systemd-networkd.service",
    ),
];
/// Files a fleet profile writes (besides the mirrors' keyrings).
const FLEET_FILES: &[&str] = &[
    FLEET_FILE,
    PULL_TIMER,
    PULL_SERVICE,
    REPORT_TIMER,
    REPORT_SERVICE,
    NETWORK_FILE,
    FLEET_SOURCES,
];

/// A mirror the tree's apt reads: its paths, state and the suites used.
pub type Mirror = (MirrorPaths, MirrorState, Vec<String>);

/// The profile's `[health]` check and `[fleet]` settings: the image's
/// machines pull newer images by themselves (a timer, DHCP on their wired
/// interfaces), and apt in the image reads the published mirror at the
/// fleet's URLs, not the build host's paths.
pub fn fleet(root: &Path, p: &Profile, mirrors: &[Mirror]) -> Result<()> {
    health(root, p.health.as_ref())?;
    let Some(f) = &p.fleet else {
        for (link, _) in FLEET_LINKS {
            remove_in_tree(root, link)?;
        }
        for f in FLEET_FILES {
            remove_in_tree(root, f)?;
        }
        return Ok(());
    };
    let file = crate::profile::FleetFile {
        profile: p.name.clone(),
        fleet: f.clone(),
    };
    write(
        root,
        FLEET_FILE,
        format!(
            "# cairn: the profile's [fleet] settings (/etc/cairn/cairn.toml may override them)\n{}",
            toml::to_string(&file)?
        ),
        0o644,
    )?;
    pull_units(root, f)?;
    report_units(root, f)?;
    write(
        root,
        NETWORK_FILE,
        "# cairn: machines of a fleet profile take an address by DHCP on wired interfaces.\n\
         [Match]\nName=e*\n\n[Network]\nDHCP=yes\n",
        0o644,
    )?;
    enable_units(root)?;
    apt_sources(root, f, mirrors)
}

/// The health check script and its timeout, or neither.
fn health(root: &Path, h: Option<&Health>) -> Result<()> {
    let Some(h) = h else {
        remove_in_tree(root, HEALTH_SCRIPT)?;
        return remove_in_tree(root, HEALTH_ENV);
    };
    write(
        root,
        HEALTH_SCRIPT,
        format!(
            "#!/bin/sh\n# cairn: the profile's [health] command; its success marks a boot good.\n{}\n",
            h.command
        ),
        0o755,
    )?;
    write(
        root,
        HEALTH_ENV,
        format!("CAIRN_HEALTH_TIMEOUT={}\n", h.timeout),
        0o644,
    )
}

/// The pull service and the timer that starts it.
fn pull_units(root: &Path, f: &Fleet) -> Result<()> {
    write(
        root,
        PULL_SERVICE,
        format!(
            "[Unit]\nDescription=cairn: pull a newer image of this machine's profile\n\
             # Expiry and serial checks read the clock: after it is set, if\n\
             # the machine syncs it.\n\
             After=cairn-booted.service time-sync.target\n\
             # Machines without a wired interface have nowhere to pull from.\n\
             ConditionPathExistsGlob=/sys/class/net/e*\n\n\
             [Service]\nType=oneshot\n\
             # Never forever (a server trickling bytes): the next run resumes.\n\
             TimeoutStartSec=4h\n\
             ExecStartPre=-/lib/systemd/systemd-networkd-wait-online --any --timeout=60\n\
             ExecStart={} pull\nStandardOutput=journal+console\nStandardError=journal+console\n",
            CAIRN_BIN
        ),
        0o644,
    )?;
    write(
        root,
        PULL_TIMER,
        format!(
            "[Unit]\nDescription=cairn: look for a newer image now and then\n\n\
             [Timer]\nOnBootSec={}\nOnUnitActiveSec={}\nRandomizedDelaySec={}\nAccuracySec=1s\n\n\
             [Install]\nWantedBy=timers.target\n",
            f.first, f.interval, f.delay
        ),
        0o644,
    )
}

/// The report service and its timer: a signed report to the build host
/// soon after each boot (the health check's verdict) and then every
/// `fleet.report`; a pull reports by itself. Never fails the boot.
fn report_units(root: &Path, f: &Fleet) -> Result<()> {
    write(
        root,
        REPORT_SERVICE,
        format!(
            "[Unit]\nDescription=cairn: tell the build host how this machine is\n\
             After=cairn-booted.service time-sync.target\n\
             ConditionPathExistsGlob=/sys/class/net/e*\n\n\
             [Service]\nType=oneshot\nTimeoutStartSec=5min\n\
             ExecStartPre=-/lib/systemd/systemd-networkd-wait-online --any --timeout=60\n\
             ExecStart={} report\nStandardOutput=journal+console\nStandardError=journal+console\n",
            CAIRN_BIN
        ),
        0o644,
    )?;
    write(
        root,
        REPORT_TIMER,
        format!(
            "[Unit]\nDescription=cairn: report to the build host now and then\n\n\
             [Timer]\nOnBootSec=20s\nOnUnitActiveSec={}\nRandomizedDelaySec=30s\nAccuracySec=1s\n\n\
             [Install]\nWantedBy=timers.target\n",
            f.report
        ),
        0o644,
    )
}

/// The links that enable the timer and systemd-networkd.
fn enable_units(root: &Path) -> Result<()> {
    for (link, target) in FLEET_LINKS {
        let l = inside_link(root, link)?;
        if let Some(d) = l.parent() {
            fs::create_dir_all(d)?;
        }
        if fs::read_link(&l).is_ok_and(|t| t == Path::new(target)) {
            continue;
        }
        let _ = fs::remove_file(&l);
        symlink(target, &l).with_context(|| format!("linking {}", l.display()))?;
    }
    Ok(())
}

/// apt: the published mirror at the fleet's URLs, with the mirrors' keys.
fn apt_sources(root: &Path, f: &Fleet, mirrors: &[Mirror]) -> Result<()> {
    let mut text = String::from(
        "# cairn: the published mirror the fleet's machines install from (profile fleet.urls)\n",
    );
    for (_, state, _) in mirrors {
        let r = &state.repo;
        crate::names::check("mirror name", &r.name)?;
        let uris: Vec<String> = f
            .urls
            .iter()
            .map(|u| format!("{}/mirror/{}/", u.trim_end_matches('/'), r.name))
            .collect();
        let mut keys = Vec::new();
        for (i, k) in r.keyring.iter().enumerate() {
            let ext = if k.extension().is_some_and(|e| e == "asc") {
                "asc"
            } else {
                "gpg"
            };
            let dest = format!("/etc/cairn/keyrings/{}-{i}.{ext}", r.name);
            let data = fs::read(k).with_context(|| format!("mirror {}: keyring", r.name))?;
            write(root, &dest, data, 0o644)?;
            keys.push(dest);
        }
        text.push_str(&format!(
            "\nTypes: deb\nURIs: {}\nSuites: {}\nComponents: {}\n",
            uris.join(" "),
            r.suites.join(" "),
            r.components.join(" ")
        ));
        if !keys.is_empty() {
            text.push_str(&format!("Signed-By: {}\n", keys.join(" ")));
        }
    }
    write(root, FLEET_SOURCES, text, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Policy;

    /// A profile's fleet settings land in the tree, and a later profile
    /// without them takes every one of them out again (links included).
    #[test]
    fn fleet_files_come_and_go_with_the_profile() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mut p = crate::profile::builtin_default("bookworm");
        p.health = Some(Health {
            command: "systemctl is-active nginx".into(),
            timeout: 30,
        });
        p.fleet = Some(Fleet {
            urls: vec!["http://10.0.2.2:8080/".into()],
            policy: Policy::Stage,
            window: None,
            interval: "6h".into(),
            first: "5min".into(),
            delay: "30min".into(),
            keep: 2,
            report: "1h".into(),
            rollout: None,
        });
        fleet(root, &p, &[]).unwrap();
        let at = |abs: &str| root.join(abs.trim_start_matches('/'));
        let timer = fs::read_to_string(at(PULL_TIMER)).unwrap();
        assert!(
            timer.contains("OnBootSec=5min\nOnUnitActiveSec=6h\nRandomizedDelaySec=30min"),
            "{timer}"
        );
        assert!(
            fs::read_to_string(at(HEALTH_SCRIPT))
                .unwrap()
                .ends_with("systemctl is-active nginx\n")
        );
        for (link, target) in FLEET_LINKS {
            assert_eq!(fs::read_link(at(link)).unwrap(), Path::new(target));
        }
        for f in FLEET_FILES {
            assert!(at(f).is_file(), "{f}");
        }
        // Written again unchanged: the files are left as they are.
        let before = fs::metadata(at(PULL_SERVICE)).unwrap().modified().unwrap();
        fleet(root, &p, &[]).unwrap();
        assert_eq!(
            fs::metadata(at(PULL_SERVICE)).unwrap().modified().unwrap(),
            before
        );

        p.health = None;
        p.fleet = None;
        fleet(root, &p, &[]).unwrap();
        for f in FLEET_FILES.iter().chain([&HEALTH_SCRIPT, &HEALTH_ENV]) {
            assert!(fs::symlink_metadata(at(f)).is_err(), "{f} stayed");
        }
        for (link, _) in FLEET_LINKS {
            assert!(fs::symlink_metadata(at(link)).is_err(), "{link} stayed");
        }
    }
}
