//! What a build or an upgrade reads: the live mirrors or a snapshot's (its
//! Release files hashed against what was verified), as apt sources; and
//! the check, before any work, that they hold every package it needs.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_debian::{Package, read_packages};

use crate::image;
use crate::mirror::closure::select;
use crate::mirror::config::Selection;
use crate::mirror::state::{MirrorPaths, MirrorState, apt_source_lines, list_mirrors};
use crate::profile::{HostType, Profile};

/// What a build or upgrade reads: the live mirrors or a snapshot's, as apt
/// sources, and the record of them for the manifest.
pub struct Inputs {
    pub mirrors: Vec<(MirrorPaths, MirrorState, Vec<String>)>,
    pub source: image::BuildSource,
    /// How the snapshot differs from what it recorded when it was made
    /// (only with `Strictness::Report`; otherwise such a snapshot is refused).
    pub snapshot_changes: Vec<String>,
    _hold: Option<crate::mirror::snapshot::InUse>,
}

/// What a snapshot that no longer holds what it recorded means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// A build: refused.
    Refuse,
    /// A rebuild check: reported, and the rebuild goes on with what is there.
    Report,
}

impl Inputs {
    /// The mirrors serving `suite`, from snapshot `snapshot` or the store's
    /// live mirrors; the epoch is `epoch`, else the newest Release `Date`
    /// among them. Every Release file is hashed: one that is not what the
    /// mirror verified is refused.
    pub fn read(
        store: &Path,
        suite: &str,
        snapshot: Option<&str>,
        epoch: Option<i64>,
        strictness: Strictness,
    ) -> Result<Inputs> {
        use crate::mirror::snapshot;
        let (base, hold, recorded) = match snapshot {
            Some(n) => {
                // Checked, held, then read (it was not deleted in between).
                snapshot::open(store, n)?;
                let hold = snapshot::hold(store, n)?;
                let s = snapshot::open(store, n)?;
                (s.path, Some(hold), Some(s.releases))
            }
            None => (store.to_path_buf(), None, None),
        };
        let mirrors = mirror_sources(&base, suite)?;
        let pairs: Vec<(MirrorPaths, MirrorState)> = mirrors
            .iter()
            .map(|(p, s, _)| (p.clone(), s.clone()))
            .collect();
        let releases = snapshot::releases_now(&pairs)?;
        let mut snapshot_changes = Vec::new();
        if let (Some(n), Some(recorded)) = (snapshot, recorded) {
            // The suites this build reads, as the snapshot recorded them.
            let mut wanted = snapshot::Releases::new();
            for (m, suites) in recorded {
                let s: std::collections::BTreeMap<_, _> = suites
                    .into_iter()
                    .filter(|(x, _)| in_family(x, suite))
                    .collect();
                if !s.is_empty() {
                    wanted.insert(m, s);
                }
            }
            snapshot_changes = snapshot::release_changes(&wanted, &releases);
            if !snapshot_changes.is_empty() && strictness == Strictness::Refuse {
                return Err(anyhow::Error::new(crate::trust::VerificationFailed::new(
                    snapshot_changes.join("; "),
                )))
                .context(format!(
                    "snapshot {n} no longer holds what it recorded when it was made: not built from"
                ));
            }
        }
        let newest = releases
            .values()
            .flat_map(|s| s.values())
            .filter_map(|r| r.date)
            .max();
        let epoch = epoch.or(newest).with_context(|| {
            format!("the Release files of the mirrors serving {suite} carry no Date: set SOURCE_DATE_EPOCH")
        })?;
        Ok(Inputs {
            mirrors,
            source: image::BuildSource {
                snapshot: snapshot.map(String::from),
                epoch,
                releases,
            },
            snapshot_changes,
            _hold: hold,
        })
    }

    /// apt options the inputs need: a snapshot is a pinned past, whose
    /// Release files may have passed their `Valid-Until` (their signatures
    /// and hashes are still checked).
    pub fn apt_options(&self) -> Vec<(&'static str, &'static str)> {
        if self.source.snapshot.is_some() {
            vec![("Acquire::Check-Valid-Until", "false")]
        } else {
            Vec::new()
        }
    }

    /// `apt_options` as `-o KEY=VALUE` arguments.
    pub fn apt_args(&self) -> Vec<String> {
        self.apt_options()
            .into_iter()
            .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
            .collect()
    }
}

/// Whether `s` is `suite` or one of its siblings (-updates, -security, /updates).
fn in_family(s: &str, suite: &str) -> bool {
    s == suite || s.starts_with(&format!("{suite}-")) || s.starts_with(&format!("{suite}/"))
}

/// The published mirrors that serve `suite` (and its -updates/-security
/// siblings), as apt source lines.
pub fn mirror_sources(
    store: &Path,
    suite: &str,
) -> Result<Vec<(MirrorPaths, MirrorState, Vec<String>)>> {
    let mut out = Vec::new();
    for name in list_mirrors(store)? {
        let paths = MirrorPaths::new(store, &name);
        let Some(mut state) = MirrorState::load(&paths)? else {
            continue;
        };
        state.repo.suites.retain(|s| in_family(s, suite));
        if state.repo.suites.is_empty() || paths.current_generation().is_none() {
            continue;
        }
        let lines = apt_source_lines(&paths, &state, None);
        out.push((paths, state, lines));
    }
    if out.is_empty() {
        bail!(
            "no local mirror serves suite {suite} in {}: run `cairn mirror sync` (cairn builds from the local mirror only)",
            store.join("mirror").display()
        );
    }
    Ok(out)
}

/// Checks that the local mirrors hold every package the build will install
/// (the same closure `cairn mirror sync --profile` mirrors).
pub fn preflight_mirror(
    mirrors: &[(MirrorPaths, MirrorState, Vec<String>)],
    profile: &Profile,
    packages: &[String],
    profile_arg: &str,
    host: HostType,
) -> Result<usize> {
    let mut pkgs: Vec<Package> = Vec::new();
    let mut roots: Vec<PathBuf> = Vec::new();
    for (paths, state, _) in mirrors {
        let gen_dir = paths.current_generation().context("unpublished mirror")?;
        for suite in &state.repo.suites {
            for comp in &state.repo.components {
                let f = gen_dir
                    .join(suite)
                    .join(comp)
                    .join(format!("binary-{}", profile.architecture))
                    .join("Packages");
                let Ok(file) = fs::File::open(&f) else {
                    continue;
                };
                let before = pkgs.len();
                read_packages(std::io::BufReader::with_capacity(1 << 20, file), |p| {
                    pkgs.push(p)
                })
                .with_context(|| format!("reading {}", f.display()))?;
                roots.extend(std::iter::repeat_n(paths.root.clone(), pkgs.len() - before));
            }
        }
    }
    // A command that works: the host type this build is for, when the
    // profile alone would say another.
    let (hint, after) = if host == profile.resolved_host_type() {
        (format!("cairn mirror sync --profile {profile_arg}"), "")
    } else {
        (
            format!(
                "cairn mirror sync --profile {profile_arg} --host-type {}",
                host.name()
            ),
            " (a sync mirrors what it is asked for: name every profile and host type this mirror serves)",
        )
    };
    let sel = Selection {
        packages: packages.to_vec(),
        closure: true,
        ..Default::default()
    };
    let chosen = select(&pkgs, &sel).map_err(|e| {
        anyhow::anyhow!("{e}: the local mirror lacks them; add them with `{hint}`{after}")
    })?;
    let missing: Vec<String> = chosen
        .chosen
        .iter()
        .filter(|&&i| !roots[i].join(&pkgs[i].filename).exists())
        .map(|&i| format!("{} {}", pkgs[i].name, pkgs[i].version))
        .collect();
    if !missing.is_empty() {
        let n = missing.len();
        let shown: Vec<String> = missing.into_iter().take(12).collect();
        bail!(
            "the local mirror lacks {n} package file(s) this build needs ({}{}): add them with `{hint}`{after}",
            shown.join(", "),
            if n > 12 { ", …" } else { "" }
        );
    }
    Ok(chosen.chosen.len())
}
