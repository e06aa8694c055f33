//! `cairn mirror sync`: verify every Release, fetch and verify the indices,
//! choose the pool files, fetch and verify them, then publish: pool first,
//! then an atomic switch of `dists`.
//!
//! - `indices`: the index files of each suite, checked against Release;
//! - `pool`: the package files of the selection, checked against Packages;
//! - `publish`: the new generation switched in, the state recorded.

mod indices;
mod pool;
mod publish;

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use cairn_debian::date::format_release_date;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::closure::select_families;
use super::config::{MirrorConfig, RepoSpec};
use super::fetch::{Counter, RetryPolicy, Transport, transport_for};
use super::release::{SuiteRelease, check_release, fetch_release};
use super::state::{MirrorPaths, MirrorState, lock_mirror, mtime_ns};
use crate::progress::Mode;
use crate::trust::hash::hex;
use crate::trust::openpgp::Keyring;

pub(crate) use indices::decompress_verified;
/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub store: PathBuf,
    /// Concurrent downloads.
    pub jobs: usize,
    pub keep_obsolete: bool,
    /// Wait for another sync's lock instead of refusing.
    pub wait: bool,
    pub progress: Mode,
    /// Allowed clock skew for a Release `Date` in the future, in seconds.
    pub max_future: i64,
    pub retry: RetryPolicy,
    /// Pool paths (per mirror name) to fetch again whatever is on disk (repair).
    pub refetch: BTreeMap<String, BTreeSet<String>>,
}

impl SyncOptions {
    pub fn new(store: PathBuf) -> SyncOptions {
        SyncOptions {
            store,
            jobs: 20,
            keep_obsolete: false,
            wait: false,
            progress: Mode::Auto,
            max_future: 10,
            retry: RetryPolicy::default(),
            refetch: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SuiteReport {
    pub suite: String,
    pub date: Option<String>,
    pub valid_until: Option<String>,
    pub signature: &'static str,
    pub signed_by: Vec<String>,
    pub indices: usize,
    pub indices_fetched: usize,
    /// Index files the signed Release lists that the mirror does without
    /// (no client reads them, or another copy serves), and why: never a
    /// wrong copy published in their place.
    pub left_out: Vec<LeftOut>,
}

pub use super::state::LeftOut;

#[derive(Debug, Serialize)]
pub struct RepoReport {
    pub name: String,
    pub url: String,
    pub path: PathBuf,
    pub generation: String,
    pub suites: Vec<SuiteReport>,
    pub pool_files: usize,
    pub pool_bytes: u64,
    pub fetched_files: usize,
    pub fetched_bytes: u64,
    pub hashed_files: usize,
    pub removed_obsolete: usize,
}

/// What a sync did; `--json` prints this.
#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub up_to_date: bool,
    pub selection: String,
    pub packages: usize,
    pub unsatisfied: Vec<String>,
    pub repos: Vec<RepoReport>,
    pub fetched_bytes: u64,
    pub seconds: f64,
    pub verified: Vec<&'static str>,
}

struct Repo<'a> {
    spec: &'a RepoSpec,
    paths: MirrorPaths,
    transport: Arc<dyn Transport>,
    state: Option<MirrorState>,
    releases: Vec<SuiteRelease>,
    _lock: crate::fsutil::Lock,
}

/// Syncs every repository of `cfg` into the store.
pub fn sync(cfg: &MirrorConfig, opts: &SyncOptions) -> Result<SyncReport> {
    let t0 = Instant::now();
    let now = crate::unix_now();
    // 1. Lock, then verify every Release before anything else is fetched.
    let repos = open(cfg, opts, now)?;
    tracing::info!(
        "Release files verified after {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let selection_key = selection_key(cfg, &repos)?;

    // 2. Nothing changed upstream nor in the selection: check the pool is intact and stop.
    if opts.refetch.is_empty()
        && let Some(report) = up_to_date(&repos, &selection_key, cfg, t0)?
    {
        return Ok(report);
    }

    // 3. Indices, into a new generation directory per repository.
    let generation = format!(
        "{}-{}",
        cairn_debian::date::format_compact(now),
        std::process::id()
    );
    let counter = Counter::default();
    let ix = indices::fetch_all(&repos, &generation, opts, &counter)?;
    tracing::info!(
        "indices fetched and parsed after {:.2}s",
        t0.elapsed().as_secs_f64()
    );

    // 4. The pool files to have.
    let chosen = select_families(
        &ix.packages,
        &ix.family,
        &ix.families,
        &ix.shared,
        &cfg.selection,
    )?;
    let wanted = pool::wanted(&repos, &ix.packages, &ix.origin, &chosen.chosen)?;
    drop(ix.packages);

    // 5. Fetch what is missing or wrong.
    let fetched = pool::fetch(&repos, &wanted, opts, &counter)?;
    tracing::info!("pool done after {:.2}s", t0.elapsed().as_secs_f64());

    // 6. Publish: switch dists, then drop what is obsolete.
    let publication = publish::Publication {
        cfg,
        generation: &generation,
        selection_key: &selection_key,
        now,
        wanted: &wanted,
    };
    let repo_reports = publish::publish_all(&repos, &publication, fetched, ix.reports, opts)?;
    Ok(SyncReport {
        up_to_date: false,
        selection: cfg.selection.describe(),
        packages: chosen.chosen.len(),
        unsatisfied: chosen.unsatisfied,
        repos: repo_reports,
        fetched_bytes: counter.get(),
        seconds: t0.elapsed().as_secs_f64(),
        verified: verified_list(),
    })
}

/// Locks every repository of `cfg` and verifies each suite's Release
/// (signature, dates, not older than what is published).
fn open<'a>(cfg: &'a MirrorConfig, opts: &SyncOptions, now: i64) -> Result<Vec<Repo<'a>>> {
    for spec in &cfg.repos {
        super::config::validate_repo(spec)
            .with_context(|| format!("repository {:?} ({})", spec.name, spec.url))?;
    }
    let mut repos = Vec::new();
    for spec in &cfg.repos {
        let paths = MirrorPaths::new(&opts.store, &spec.name);
        let lock = lock_mirror(&paths, opts.wait)?;
        let _ = fs::remove_dir_all(paths.tmp());
        fs::create_dir_all(paths.tmp())
            .with_context(|| format!("creating {}", paths.tmp().display()))?;
        publish::clean_stale_generations(&paths)?;
        let state = MirrorState::load(&paths)?;
        let transport = transport_for(&spec.url, opts.jobs)?;
        let keyring = Keyring::new(spec.keyring.clone());
        let mut releases = Vec::new();
        for suite in &spec.suites {
            let r = fetch_release(
                transport.as_ref(),
                &spec.url,
                suite,
                &keyring,
                &paths.tmp(),
                &opts.retry,
            )
            .with_context(|| format!("mirror {}: suite {suite}", spec.name))?;
            // The published Date: from the state, else from the published
            // Release, checked again (a file changed behind cairn's back is
            // an error, not a date).
            let recorded = state
                .as_ref()
                .and_then(|s| s.suites.get(suite))
                .and_then(|s| s.date);
            let published = match (recorded, paths.current_generation()) {
                (Some(d), _) => Some(d),
                (None, Some(cur)) => {
                    super::release::read_published(&cur.join(suite), &keyring, &paths.tmp())
                        .with_context(|| {
                            format!("mirror {}: the published Release of {suite}", spec.name)
                        })?
                        .and_then(|(r, _)| r.date)
                }
                (None, None) => None,
            };
            check_release(&r, now, opts.max_future, published)
                .with_context(|| format!("mirror {}: {}", spec.name, spec.url))?;
            releases.push(r);
        }
        repos.push(Repo {
            spec,
            paths,
            transport,
            state,
            releases,
            _lock: lock,
        });
    }
    Ok(repos)
}

/// What the pool depends on: the selection, each repository's
/// configuration and each suite's verified Release.
fn selection_key(cfg: &MirrorConfig, repos: &[Repo]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&cfg.selection)?);
    for r in repos {
        h.update(serde_json::to_vec(r.spec)?);
        for s in &r.releases {
            h.update(s.sha256.as_bytes());
        }
    }
    Ok(hex(&h.finalize()))
}

fn verified_list() -> Vec<&'static str> {
    vec![
        "Release signature (gpgv, apt's rules)",
        "Release dates and suite name",
        "index files: size + SHA256 against Release",
        "pool files: size + SHA256 against Packages, while streaming",
        "pool paths inside pool/",
    ]
}

fn up_to_date(
    repos: &[Repo],
    key: &str,
    cfg: &MirrorConfig,
    t0: Instant,
) -> Result<Option<SyncReport>> {
    let mut reports = Vec::new();
    let mut packages = 0;
    for repo in repos {
        let Some(state) = &repo.state else {
            return Ok(None);
        };
        if state.selection_key != key
            || repo
                .paths
                .current_generation()
                .is_none_or(|g| !g.ends_with(&state.generation))
        {
            return Ok(None);
        }
        for (path, e) in &state.pool {
            match fs::metadata(repo.paths.root.join(path)) {
                Ok(m) if m.len() == e.size && mtime_ns(&m) == e.mtime_ns => {}
                _ => return Ok(None),
            }
        }
        packages += state.pool.len();
        reports.push(RepoReport {
            name: repo.spec.name.clone(),
            url: repo.spec.url.to_string(),
            path: repo.paths.root.clone(),
            generation: state.generation.clone(),
            suites: repo
                .releases
                .iter()
                .map(|r| SuiteReport {
                    suite: r.suite.clone(),
                    date: r.release.date.map(format_release_date),
                    valid_until: r.release.valid_until.map(format_release_date),
                    signature: r.signature_file(),
                    signed_by: r.signers.clone(),
                    indices: state.suites.get(&r.suite).map_or(0, |s| s.indices.len()),
                    indices_fetched: 0,
                    left_out: state
                        .suites
                        .get(&r.suite)
                        .map(|s| s.left_out.clone())
                        .unwrap_or_default(),
                })
                .collect(),
            pool_files: state.pool.len(),
            pool_bytes: state.pool.values().map(|e| e.size).sum(),
            fetched_files: 0,
            fetched_bytes: 0,
            hashed_files: 0,
            removed_obsolete: 0,
        });
    }
    Ok(Some(SyncReport {
        up_to_date: true,
        selection: cfg.selection.describe(),
        packages,
        unsatisfied: Vec::new(),
        repos: reports,
        fetched_bytes: 0,
        seconds: t0.elapsed().as_secs_f64(),
        verified: verified_list(),
    }))
}
