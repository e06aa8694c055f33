//! `cairn apply-live`: the running system (its RAM overlay) brought to a
//! newer image's package set now, from the store's mirror, with apt.

use fs_err as fs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{BootMedium, RUN_DIR, booted, find_image, public_key};
use crate::image::{self, Manifest};

/// What `apply-live` applied, kept with the running system (the overlay).
pub use crate::image::paths::APPLIED_LOG;

/// A package as dpkg or a manifest has it.
type Packages = BTreeMap<String, String>;

fn installed_now() -> Result<Packages> {
    Ok(crate::rootfs::installed_packages(Path::new("/"))?
        .into_iter()
        .map(|p| (p.name, p.version))
        .collect())
}

fn of_manifest(m: &Manifest) -> Packages {
    m.packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect()
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    pub package: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What moves the running package set to the target's.
pub fn plan_changes(now: &Packages, target: &Packages) -> Vec<Change> {
    let mut out = Vec::new();
    for (n, v) in target {
        if now.get(n) != Some(v) {
            out.push(Change {
                package: n.clone(),
                from: now.get(n).cloned(),
                to: Some(v.clone()),
            });
        }
    }
    for (n, v) in now {
        if !target.contains_key(n) {
            out.push(Change {
                package: n.clone(),
                from: Some(v.clone()),
                to: None,
            });
        }
    }
    out
}

/// The changes without cairn's own package, which no mirror has (the image
/// installs it from the file cairn was given): a change of it is said,
/// and comes with the image's next boot.
fn without_cairn(changes: Vec<Change>) -> (Vec<Change>, Option<String>) {
    let (own, rest): (Vec<Change>, Vec<Change>) =
        changes.into_iter().partition(|c| c.package == "cairn");
    let said = own.first().map(|c| {
        format!(
            "cairn {} → {}: its package is not in the mirror; it comes with the image's next boot",
            c.from.as_deref().unwrap_or("(none)"),
            c.to.as_deref().unwrap_or("(removed)")
        )
    });
    (rest, said)
}

/// Changes that cannot run without booting: the kernel.
pub fn needs_boot(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| {
            c.package.starts_with("linux-image-") || c.package.starts_with("linux-modules-")
        })
        .map(|c| {
            format!(
                "{} {} → {}",
                c.package,
                c.from.as_deref().unwrap_or("(none)"),
                c.to.as_deref().unwrap_or("(removed)")
            )
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub from: String,
    pub to: String,
    pub image: PathBuf,
    pub changes: Vec<Change>,
    /// What the image changes besides packages (profile files, hooks):
    /// running with the new image's boot.
    pub deferred: Vec<String>,
    /// Packages that differ from the image after apt (should be none).
    pub differs: Vec<String>,
    pub applied_at: i64,
    pub seconds: f64,
    pub dry_run: bool,
}

/// Where apt takes the packages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AptFrom {
    /// The store's mirror (a local path: the build host, an attached disk).
    Store,
    /// The running image's own apt sources: on a fleet machine, the
    /// published mirror over HTTP, with the keyrings the image carries.
    System,
}

pub struct ApplyOptions<'a> {
    pub store: &'a Path,
    pub image: Option<&'a str>,
    pub key: Option<&'a Path>,
    pub dry_run: bool,
    pub apt: AptFrom,
}

/// `cairn apply-live [IMAGE]`.
pub fn apply_live(o: &ApplyOptions) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let running = booted()?;
    let (profile, version) = (running.profile().to_string(), running.version().to_string());
    let medium = BootMedium::find().ok();
    let mut roots: Vec<&Path> = vec![o.store];
    if let Some(m) = &medium {
        roots.push(&m.root);
    }
    let key = public_key(o.key, o.store)?;
    let (dir, target) = find_image(&roots, o.image, &profile, &key)?;
    let v = image::verify_with(&dir, &key, true)?;
    if !v.ok {
        return Err(crate::trust::VerificationFailed::new(format!(
            "REFUSING {}: it does not verify:\n  {}",
            dir.display(),
            v.problems.join("\n  ")
        ))
        .into());
    }
    if target.profile != profile {
        bail!(
            "{} is an image of {}, this system runs {profile}: boot it instead (`cairn reboot --kexec {}/{}`)",
            dir.display(),
            target.profile,
            target.profile,
            target.version
        );
    }
    if target.version == version {
        bail!("this system already runs {profile} {version}");
    }
    if target.version < version {
        bail!(
            "{profile} {} is older than the running {version}: going back is a boot (`cairn reboot --kexec {profile}/{}`)",
            target.version,
            target.version
        );
    }
    let now = installed_now()?;
    let (changes, own) = without_cairn(plan_changes(&now, &of_manifest(&target)));
    let kernel = needs_boot(&changes);
    if !kernel.is_empty() {
        bail!(
            "the kernel changes ({}): a running kernel cannot be replaced; boot the new image: `cairn reboot --kexec {profile}/{}`",
            kernel.join(", "),
            target.version
        );
    }
    let mut deferred: Vec<String> = own.into_iter().collect();
    let running = medium
        .as_ref()
        .and_then(|m| {
            image::read_manifest(&m.root.join("images").join(&profile).join(&version)).ok()
        })
        .or_else(|| {
            image::read_manifest(&image::images_dir(o.store).join(&profile).join(&version)).ok()
        });
    match &running {
        Some(r) if r.profile_hash != target.profile_hash => deferred.push(
            "the profile changed (files, hooks, settings): those changes come with the image's next boot".into(),
        ),
        Some(_) => {}
        None => deferred.push(
            "the running image's manifest was not found: files and hooks are not compared".into(),
        ),
    }
    let mut report = ApplyReport {
        from: format!("{profile}/{version}"),
        to: format!("{profile}/{}", target.version),
        image: dir.clone(),
        changes,
        deferred,
        differs: Vec::new(),
        applied_at: crate::unix_now(),
        seconds: 0.0,
        dry_run: o.dry_run,
    };
    if o.dry_run || report.changes.is_empty() {
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    apt_apply(o.store, o.apt, &target, &report.changes)?;
    let after = installed_now()?;
    report.differs = without_cairn(plan_changes(&after, &of_manifest(&target)))
        .0
        .iter()
        .map(|c| {
            format!(
                "{}: {} (image: {})",
                c.package,
                c.from.as_deref().unwrap_or("not installed"),
                c.to.as_deref().unwrap_or("not in the image")
            )
        })
        .collect();
    report.seconds = t0.elapsed().as_secs_f64();
    record(&report)?;
    Ok(report)
}

/// apt-get against the local mirror only (its own source list, lists and
/// caches under /run/cairn), or the image's own sources (`AptFrom::System`),
/// one transaction: exact versions in, removed packages purged.
fn apt_apply(store: &Path, from: AptFrom, target: &Manifest, changes: &[Change]) -> Result<()> {
    let base = Path::new(RUN_DIR).join("apt");
    let _ = fs::remove_dir_all(&base);
    for d in ["parts", "lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(base.join(d))?;
    }
    let mut dirs = vec![
        ("Dir::State::Lists", base.join("lists")),
        ("Dir::Cache", base.join("cache")),
    ];
    if from == AptFrom::Store {
        dirs.extend(store_sources(store, target, &base)?);
    }
    let opts: Vec<String> = dirs
        .iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={}", v.display())])
        .collect();
    let apt = |args: &[String]| {
        let a: Vec<&str> = opts.iter().chain(args).map(String::as_str).collect();
        crate::rootfs::chroot::apt(Path::new("/"), None, &a)
    };
    apt(&["update".into()])?;
    let mut args: Vec<String> = vec![
        "install".into(),
        "--purge".into(),
        "--allow-downgrades".into(),
    ];
    for c in changes {
        match &c.to {
            Some(v) => args.push(format!("{}={v}", c.package)),
            None => args.push(format!("{}-", c.package)),
        }
    }
    apt(&args)?;
    let _ = fs::remove_dir_all(&base);
    Ok(())
}

/// A source list of the store's mirrors under `base`, as apt options.
fn store_sources(
    store: &Path,
    target: &Manifest,
    base: &Path,
) -> Result<Vec<(&'static str, PathBuf)>> {
    let mirrors = crate::rootfs::mirror_sources(store, &target.suite)?;
    // The store reached this machine on a disk or a share that others may
    // write: its mirror state is no authority on keys. Each keyring apt is
    // to trust must be a file of this (signed) image, under the system's
    // keyring directories; the mirror's names follow the name rule.
    for (paths, state, _) in &mirrors {
        crate::mirror::config::validate_repo(&state.repo)
            .with_context(|| format!("mirror {}", paths.name))?;
        for k in &state.repo.keyring {
            trusted_keyring(k).with_context(|| format!("mirror {}", paths.name))?;
        }
    }
    let lines: Vec<String> = mirrors.iter().flat_map(|(_, _, l)| l.clone()).collect();
    fs::write(base.join("sources.list"), lines.join("\n") + "\n")?;
    Ok(vec![
        ("Dir::Etc::SourceList", base.join("sources.list")),
        ("Dir::Etc::SourceParts", base.join("parts")),
    ])
}

/// A keyring the running image itself holds in a system keyring directory
/// (a regular file, reached without a symlink).
fn trusted_keyring(k: &Path) -> Result<()> {
    const DIRS: [&str; 3] = [
        "/usr/share/keyrings/",
        "/etc/apt/keyrings/",
        "/etc/apt/trusted.gpg.d/",
    ];
    let s = k.to_str().unwrap_or("");
    let name = s.rsplit('/').next().unwrap_or("");
    let under = DIRS.iter().any(|d| s.strip_prefix(d) == Some(name));
    if !under || !crate::names::is_safe(name) {
        bail!(
            "keyring {}: only a file of this image in {} is trusted for apply-live",
            k.display(),
            DIRS.join(", ")
        );
    }
    let m = fs::symlink_metadata(k).with_context(|| format!("keyring {}", k.display()))?;
    if !m.file_type().is_file() {
        bail!("keyring {}: not a regular file of this image", k.display());
    }
    Ok(())
}

/// Appends the report to the record of what was applied to this system.
fn record(r: &ApplyReport) -> Result<()> {
    let p = Path::new(APPLIED_LOG);
    let mut all: Vec<serde_json::Value> = fs::read(p)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    all.push(serde_json::to_value(r)?);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    crate::fsutil::write_atomic(p, &serde_json::to_vec_pretty(&all)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(l: &[(&str, &str)]) -> Packages {
        l.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn changes_and_the_kernel_rule() {
        let now = pk(&[
            ("bash", "5.2-1"),
            ("nano", "7.2-1"),
            ("linux-image-amd64", "6.1.1"),
        ]);
        let target = pk(&[
            ("bash", "5.2-2"),
            ("less", "590-2"),
            ("linux-image-amd64", "6.1.1"),
        ]);
        let c = plan_changes(&now, &target);
        assert_eq!(
            c,
            vec![
                Change {
                    package: "bash".into(),
                    from: Some("5.2-1".into()),
                    to: Some("5.2-2".into())
                },
                Change {
                    package: "less".into(),
                    from: None,
                    to: Some("590-2".into())
                },
                Change {
                    package: "nano".into(),
                    from: Some("7.2-1".into()),
                    to: None
                },
            ]
        );
        assert!(needs_boot(&c).is_empty());
        let k = plan_changes(&now, &pk(&[("linux-image-amd64", "6.1.2")]));
        assert_eq!(needs_boot(&k), ["linux-image-amd64 6.1.1 → 6.1.2"]);
    }

    /// cairn's own package is in no mirror: apply-live leaves it to the
    /// next boot, and says so.
    #[test]
    fn cairn_itself_waits_for_the_next_boot() {
        let now = pk(&[("bash", "5.2-1"), ("cairn", "0.1.0")]);
        let target = pk(&[("bash", "5.2-2"), ("cairn", "0.2.0")]);
        let (c, said) = without_cairn(plan_changes(&now, &target));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].package, "bash");
        assert_eq!(
            said.as_deref(),
            Some(
                "cairn 0.1.0 → 0.2.0: its package is not in the mirror; it comes with the image's next boot"
            )
        );
        let same = pk(&[("cairn", "0.1.0")]);
        assert_eq!(without_cairn(plan_changes(&same, &same)).1, None);
    }

    /// apply-live trusts only keyrings of the running image, by a plain
    /// path in a system keyring directory.
    #[test]
    fn keyrings_come_from_the_image_only() {
        let ok = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
        if ok.is_file() {
            trusted_keyring(ok).unwrap();
        }
        for bad in [
            "/srv/cairn/keys/evil.gpg",
            "/usr/share/keyrings/../../../srv/evil.gpg",
            "/usr/share/keyrings/x trusted=yes",
            "/usr/share/keyrings/sub/k.gpg",
            "relative.gpg",
        ] {
            assert!(trusted_keyring(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
