//! `cairn cycle`: the build host's unattended round (its timer runs it):
//! sync the mirror for the profiles it serves, upgrade each profile (build
//! it the first time), publish their indices, so machines always find a
//! fresh, signed index.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::index::{Index, PublishOptions, publish};

/// `[cycle]` of /etc/cairn/cairn.toml on the build host.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CycleConfig {
    /// Profile files to keep up to date and publish.
    pub profiles: Vec<PathBuf>,
    /// How long each published index is valid (publish more often).
    #[serde(default = "week")]
    pub valid_for: String,
    /// Sync the mirror first (from the host's apt sources, or
    /// `mirror-config`), for the closure of the profiles.
    #[serde(default = "yes")]
    pub sync: bool,
    pub mirror_config: Option<PathBuf>,
    /// Keep every version in the mirror (profiles with bootstrap = debootstrap).
    #[serde(default)]
    pub all_versions: bool,
}

fn week() -> String {
    "7d".into()
}

fn yes() -> bool {
    true
}

/// The `[cycle]` section of the host's configuration (its files merged).
pub fn load(config: &crate::config::Config) -> Result<CycleConfig> {
    let files = config
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let t = config.section("cycle").with_context(|| {
        format!(
            "no [cycle] section (profiles = [...]) in {}",
            if files.is_empty() {
                "the configuration (no file exists)".to_string()
            } else {
                files.clone()
            }
        )
    })?;
    let c: CycleConfig = t
        .clone()
        .try_into()
        .map_err(|e| anyhow::anyhow!("[cycle] of {files}: {e}"))?;
    if c.profiles.is_empty() {
        bail!("[cycle] profiles is empty in {files}: nothing to do");
    }
    // Read by a timer whose working directory is nobody's choice.
    for p in c.profiles.iter().chain(c.mirror_config.iter()) {
        if !p.is_absolute() {
            bail!(
                "[cycle] of {files}: {} is a relative path: write it from / (the timer's working directory is not this file's)",
                p.display()
            );
        }
    }
    super::parse_duration(&c.valid_for).context("[cycle] valid-for")?;
    Ok(c)
}

#[derive(Debug, Serialize)]
pub struct CycleImage {
    pub profile: String,
    /// `built`, `upgraded` or `unchanged`.
    pub action: String,
    pub version: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CycleReport {
    pub synced: Option<crate::mirror::sync::SyncReport>,
    pub images: Vec<CycleImage>,
    pub published: Vec<Index>,
    /// Reports taken in (and refused) this round.
    pub reports: super::inbox::Ingested,
    /// Rollouts started, advanced, halted, or waiting.
    pub rollouts: Vec<super::rollout::Step>,
    pub seconds: f64,
}

/// The gate alone (`cairn cycle --gate-only`, a short timer): reports
/// taken in, rollouts advanced or halted — minutes after a machine failed,
/// not at the next round.
pub fn gate_only(store: &Path, valid_for: &str, quiet: bool) -> Result<CycleReport> {
    let t0 = Instant::now();
    let steps = crate::progress::Steps::start(quiet);
    let valid_for = super::parse_duration(valid_for)?;
    let _lock = super::inbox::lock(store)?;
    steps.say("take in the machines' reports");
    let reports = super::inbox::ingest(store, crate::unix_now())?;
    // The key signs a halt or a stage: needed only when a rollout runs.
    let rollouts = if super::rollout::any_running(store)? {
        let key = crate::trust::keys::load(store)?;
        super::rollout::step_all(store, &key, valid_for, crate::unix_now())?
    } else {
        Vec::new()
    };
    Ok(CycleReport {
        synced: None,
        images: Vec::new(),
        published: Vec::new(),
        reports,
        rollouts,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The gate before a round; one that fails is said, and the round goes on
/// (indices must not expire because a report could not be read).
fn gate_first(store: &Path, valid_for: &str) -> CycleReport {
    match gate_only(store, valid_for, true) {
        Ok(r) => r,
        Err(e) => {
            crate::progress::note(&format!("cairn: the rollouts' gate failed: {e:#}"));
            CycleReport {
                synced: None,
                images: Vec::new(),
                published: Vec::new(),
                reports: Default::default(),
                rollouts: Vec::new(),
                seconds: 0.0,
            }
        }
    }
}

/// One round for the store `store`.
pub fn cycle(store: &Path, c: &CycleConfig, quiet: bool) -> Result<CycleReport> {
    let t0 = Instant::now();
    let steps = crate::progress::Steps::start(quiet);
    // The gate first: a halt never waits for a sync or a build, nor fails
    // with them; a gate that fails is said, and the round goes on (indices
    // must not expire because a report could not be read).
    let early = gate_first(store, &c.valid_for);
    let profiles = c
        .profiles
        .iter()
        .map(|p| crate::profile::load(p))
        .collect::<Result<Vec<_>>>()?;
    let synced = if c.sync {
        steps.say("mirror sync");
        let cfg = crate::mirror::config::resolve(&crate::mirror::config::SyncRequest {
            config: c.mirror_config.as_deref(),
            url: None,
            name: None,
            suites: &[],
            components: &[],
            architectures: &[],
            keyring: &[],
            needs: &profiles
                .iter()
                .map(|p| p.mirror_needs(&[]))
                .collect::<Vec<_>>(),
            packages: &[],
            priorities: &[],
            full: false,
            no_closure: false,
            recommends: false,
            all_versions: c.all_versions,
        })?;
        let mut o = crate::mirror::sync::SyncOptions::new(store.to_path_buf());
        o.progress = crate::progress::Mode::Quiet;
        Some(crate::mirror::sync::sync(&cfg, &o).context("mirror sync")?)
    } else {
        None
    };
    let mut images = Vec::new();
    for (p, path) in profiles.iter().zip(&c.profiles) {
        let arg = path.to_string_lossy();
        let has_image = crate::image::list(store)?
            .iter()
            .any(|e| e.profile == p.name);
        if has_image {
            steps.say(&format!("upgrade {}", p.name));
            let r = crate::upgrade::upgrade(
                p,
                &arg,
                &crate::upgrade::UpgradeOptions {
                    store: store.to_path_buf(),
                    mode: crate::upgrade::LayerMode::Auto,
                    max_depth: 4,
                    max_delta_share: 0.5,
                    force: false,
                    host_type: None,
                    snapshot: None,
                    epoch: None,
                    processors: None,
                    quiet: true,
                },
            )
            .with_context(|| format!("upgrading {}", p.name))?;
            images.push(CycleImage {
                profile: p.name.clone(),
                action: if r.version.is_some() {
                    "upgraded"
                } else {
                    "unchanged"
                }
                .into(),
                version: r.version.or(Some(r.parent)),
            });
        } else {
            steps.say(&format!("build {}", p.name));
            let r = crate::rootfs::build(
                p,
                &arg,
                &crate::rootfs::BuildOptions::new(store.to_path_buf()),
            )
            .with_context(|| format!("building {}", p.name))?;
            images.push(CycleImage {
                profile: p.name.clone(),
                action: "built".into(),
                version: Some(r.version),
            });
        }
    }
    let key = crate::trust::keys::load(store)?;
    let o = PublishOptions {
        valid_for: super::parse_duration(&c.valid_for)?,
        rollout: Default::default(),
        now: crate::unix_now(),
    };
    let _lock = super::inbox::lock(store)?;
    let mut rollouts = gate(store, &key, &profiles, &images, &o, &steps)?;
    rollouts.0.taken.splice(0..0, early.reports.taken);
    rollouts.0.refused.splice(0..0, early.reports.refused);
    rollouts.1.splice(0..0, early.rollouts);
    let mut published = Vec::new();
    for p in &profiles {
        steps.say(&format!("publish {}", p.name));
        let o = super::rollout::with_shares(store, &p.name, &o)?;
        published.push(publish(store, &key, &p.name, &o)?);
    }
    Ok(CycleReport {
        synced,
        images,
        published,
        reports: rollouts.0,
        rollouts: rollouts.1,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The closed loop's part of a round: the machines' reports taken in; a
/// new version of a profile with `[fleet.rollout]` starts its staged
/// rollout; every running rollout advances, halts or waits by the reports.
fn gate(
    store: &Path,
    key: &crate::trust::keys::SigningKey,
    profiles: &[crate::profile::Profile],
    images: &[CycleImage],
    o: &PublishOptions,
    steps: &crate::progress::Steps,
) -> Result<(super::inbox::Ingested, Vec<super::rollout::Step>)> {
    steps.say("take in the machines' reports");
    let reports = super::inbox::ingest(store, o.now)?;
    let mut out = Vec::new();
    for (p, i) in profiles.iter().zip(images) {
        let (Some(policy), "upgraded", Some(v)) = (
            p.fleet.as_ref().and_then(|f| f.rollout.as_ref()),
            i.action.as_str(),
            &i.version,
        ) else {
            continue;
        };
        steps.say(&format!("rollout of {}/{v}", p.name));
        let r = super::rollout::start(store, key, &p.name, v, policy, o.valid_for, o.now)?;
        out.push(super::rollout::Step {
            profile: p.name.clone(),
            version: v.clone(),
            did: "started".into(),
            detail: format!(
                "stage 1 ({}%) published at {}%",
                r.stage_percent(),
                r.percent
            ),
        });
    }
    out.extend(super::rollout::step_all(store, key, o.valid_for, o.now)?);
    Ok((reports, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_err as fs;

    /// The packaged /etc/cairn/cairn.toml (dist/cairn.toml): as shipped,
    /// every setting commented out (it sets nothing, and names no
    /// [cycle]); with its settings uncommented, a valid configuration with
    /// the defaults it documents — so the file cannot drift from what
    /// cairn reads.
    #[test]
    fn the_packaged_config_documents_the_settings() {
        let text = include_str!("../../../../dist/cairn.toml");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cairn.toml");
        fs::write(&p, text).unwrap();
        let c = crate::config::Config::load(&p).unwrap();
        assert!(c.settings.store.is_none());
        let e = load(&c).unwrap_err();
        assert!(e.to_string().contains("no [cycle] section"), "{e:#}");
        let settings: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with('[')
                    || l.split_once(" = ")
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&p, &settings).unwrap();
        let cf = crate::config::Config::load(&p).unwrap_or_else(|e| panic!("{e:#}\n{settings}"));
        let c = load(&cf).unwrap_or_else(|e| panic!("{e:#}\n{settings}"));
        assert_eq!(c.valid_for, week());
        assert_eq!((c.sync, c.all_versions), (yes(), false));
        assert_eq!(c.profiles.len(), 1);
        let s = &cf.settings;
        assert_eq!(
            s.store.as_deref(),
            Some(std::path::Path::new(crate::config::DEFAULT_STORE))
        );
        assert_eq!(
            s.key.public.as_deref(),
            Some(std::path::Path::new(crate::config::DEFAULT_PUBLIC_KEY))
        );
        assert_eq!(
            s.build.profile_dir.as_deref(),
            Some(std::path::Path::new(crate::config::DEFAULT_PROFILE_DIR))
        );
        let menu = crate::boot::menu::MenuOptions::default();
        assert_eq!(
            (s.boot.timeout, s.boot.tries),
            (Some(menu.timeout), Some(menu.tries))
        );
        assert_eq!(s.mirror.jobs, Some(crate::cli::DEFAULT_MIRROR_JOBS));
        assert_eq!(
            s.mirror.profiles.as_deref(),
            Some(&["default".to_string()][..])
        );
    }
}
