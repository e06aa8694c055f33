//! `cairn mirror sync`: verify every Release, fetch and verify the indices,
//! choose the pool files, fetch and verify them, then publish: pool first,
//! then an atomic switch of `dists`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_debian::date::format_release_date;
use cairn_debian::{Package, read_packages};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::closure::select;
use super::config::{MirrorConfig, RepoSpec};
use super::fetch::{
    Counter, Expect, FetchError, RetryPolicy, Transport, fetch_verified, join_url, partial_path,
    transport_for,
};
use super::release::{SuiteRelease, check_release, fetch_release};
use super::state::{MirrorPaths, MirrorState, PoolEntry, SuiteState, lock_mirror, mtime_ns};
use crate::fsutil::{safe_relative, sync_dir};
use crate::parallel;
use crate::progress::{Mode, Progress};
use crate::trust::hash::{hex, sha256_file};
use crate::trust::openpgp::Keyring;

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
}

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
    let mut repos = Vec::new();
    for spec in &cfg.repos {
        super::config::validate_repo(spec)
            .with_context(|| format!("repository {:?} ({})", spec.name, spec.url))?;
    }
    for spec in &cfg.repos {
        let paths = MirrorPaths::new(&opts.store, &spec.name);
        let lock = lock_mirror(&paths, opts.wait)?;
        let _ = fs::remove_dir_all(paths.tmp());
        fs::create_dir_all(paths.tmp())
            .with_context(|| format!("creating {}", paths.tmp().display()))?;
        clean_stale_generations(&paths)?;
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
            // The published Date (cairn verified that file before publishing it).
            let published = state
                .as_ref()
                .and_then(|s| s.suites.get(suite))
                .and_then(|s| s.date)
                .or_else(|| {
                    let cur = paths.current_generation()?;
                    read_published_release(&cur.join(suite))?.date
                });
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
    tracing::info!(
        "Release files verified after {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let selection_key = {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&cfg.selection)?);
        for r in &repos {
            h.update(serde_json::to_vec(r.spec)?);
            for s in &r.releases {
                h.update(s.sha256.as_bytes());
            }
        }
        hex(&h.finalize())
    };

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
    let mut suite_reports: Vec<Vec<SuiteReport>> = Vec::new();
    let mut all_pkgs: Vec<Package> = Vec::new();
    let mut origin: Vec<usize> = Vec::new();
    for (ri, repo) in repos.iter().enumerate() {
        let gen_tmp = repo.paths.generations().join(format!("{generation}.tmp"));
        fs::create_dir_all(&gen_tmp).with_context(|| format!("creating {}", gen_tmp.display()))?;
        let mut reports = Vec::new();
        for rel in &repo.releases {
            let (n, fetched, pkgs) = fetch_indices(repo, rel, &gen_tmp, opts, &counter)
                .with_context(|| format!("mirror {}: indices of {}", repo.spec.name, rel.suite))?;
            for p in pkgs {
                all_pkgs.push(p);
                origin.push(ri);
            }
            reports.push(SuiteReport {
                suite: rel.suite.clone(),
                date: rel.release.date.map(format_release_date),
                valid_until: rel.release.valid_until.map(format_release_date),
                signature: rel.signature_file(),
                signed_by: rel.signers.clone(),
                indices: n,
                indices_fetched: fetched,
            });
        }
        suite_reports.push(reports);
    }

    tracing::info!(
        "indices fetched and parsed after {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    // 4. The pool files to have.
    let chosen = select(&all_pkgs, &cfg.selection)?;
    let mut wanted: Vec<BTreeMap<String, (u64, String)>> = vec![BTreeMap::new(); repos.len()];
    for &i in &chosen.chosen {
        let p = &all_pkgs[i];
        safe_relative(&p.filename, "pool").with_context(|| {
            format!(
                "package {} {} in mirror {}",
                p.name, p.version, repos[origin[i]].spec.name
            )
        })?;
        let w = &mut wanted[origin[i]];
        if let Some((size, sha)) = w.get(&p.filename)
            && (*size != p.size || *sha != p.sha256)
        {
            bail!(
                "{} is listed twice with different contents (sha256 {} and {}): the archive is inconsistent",
                p.filename,
                sha,
                p.sha256
            );
        }
        w.insert(p.filename.clone(), (p.size, p.sha256.clone()));
    }
    drop(all_pkgs);

    // 5. Fetch what is missing or wrong, verifying while it streams. New pool
    // files are recorded as pending first, so `verify` knows them for what
    // they are if this run is killed before the switch.
    for (ri, repo) in repos.iter().enumerate() {
        if let Some(state) = &repo.state {
            let mut st = state.clone();
            st.pending.extend(
                wanted[ri]
                    .keys()
                    .filter(|p| !st.pool.contains_key(*p))
                    .cloned(),
            );
            st.save(&repo.paths)?;
        }
    }
    let mut items = Vec::new();
    for (ri, w) in wanted.iter().enumerate() {
        for (path, (size, sha)) in w {
            items.push((ri, path.clone(), *size, sha.clone()));
        }
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.2));
    let total_bytes: u64 = items.iter().map(|i| i.2).sum();
    let progress = Progress::start(opts.progress, "pool", items.len() as u64, total_bytes);
    let bytes = progress.bytes.clone();
    let results = parallel::map(&items, opts.jobs, |(ri, path, size, sha)| {
        let repo = &repos[*ri];
        let r = ensure_pool_file(repo, path, *size, sha, opts, &counter);
        bytes.fetch_add(*size, std::sync::atomic::Ordering::Relaxed);
        progress.file_done();
        r
    });
    progress.finish();
    tracing::info!("pool done after {:.2}s", t0.elapsed().as_secs_f64());
    let mut failures = Vec::new();
    let mut pool_state: Vec<BTreeMap<String, PoolEntry>> = vec![BTreeMap::new(); repos.len()];
    let mut fetched = vec![(0usize, 0u64, 0usize); repos.len()];
    for ((ri, path, _, _), r) in items.iter().zip(results) {
        match r {
            Ok((entry, how)) => {
                match how {
                    Got::Fetched(n) => {
                        fetched[*ri].0 += 1;
                        fetched[*ri].1 += n;
                    }
                    Got::Hashed => fetched[*ri].2 += 1,
                    Got::Known => {}
                }
                pool_state[*ri].insert(path.clone(), entry);
            }
            Err(e) => failures.push(format!("{path}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(10);
        bail!(
            "{n} pool file(s) could not be fetched and verified; the published mirror is unchanged (a re-run resumes):\n  {}",
            failures.join("\n  ")
        );
    }

    // 6. Publish: switch dists, then drop what is obsolete.
    let mut repo_reports = Vec::new();
    for (ri, repo) in repos.iter().enumerate() {
        let gen_tmp = repo.paths.generations().join(format!("{generation}.tmp"));
        publish(repo, &gen_tmp, &generation)?;
        let keep: BTreeSet<&String> = wanted[ri].keys().collect();
        let (removed, retained) = remove_obsolete(&repo.paths.root, &keep, opts.keep_obsolete)?;
        prune_partials(&repo.paths, &wanted[ri])?;
        let mut suites = BTreeMap::new();
        for rel in &repo.releases {
            suites.insert(
                rel.suite.clone(),
                SuiteState {
                    release_sha256: rel.sha256.clone(),
                    date: rel.release.date,
                    signers: rel.signers.clone(),
                    indices: index_list(&repo.paths, &generation, &rel.suite)?,
                },
            );
        }
        let state = MirrorState {
            schema_version: 1,
            repo: repo.spec.clone(),
            selection: cfg.selection.clone(),
            selection_key: selection_key.clone(),
            generation: generation.clone(),
            suites,
            pool: std::mem::take(&mut pool_state[ri]),
            retained,
            pending: BTreeSet::new(),
            synced_at: now,
        };
        state.save(&repo.paths)?;
        let _ = fs::remove_dir_all(repo.paths.tmp());
        repo_reports.push(RepoReport {
            name: repo.spec.name.clone(),
            url: repo.spec.url.clone(),
            path: repo.paths.root.clone(),
            generation: generation.clone(),
            suites: std::mem::take(&mut suite_reports[ri]),
            pool_files: wanted[ri].len(),
            pool_bytes: wanted[ri].values().map(|v| v.0).sum(),
            fetched_files: fetched[ri].0,
            fetched_bytes: fetched[ri].1,
            hashed_files: fetched[ri].2,
            removed_obsolete: removed,
        });
    }
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
            url: repo.spec.url.clone(),
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

/// Removes generation directories a killed run left half-built.
fn clean_stale_generations(paths: &MirrorPaths) -> Result<()> {
    let Ok(rd) = fs::read_dir(paths.generations()) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with(".tmp") {
            fs::remove_dir_all(e.path())
                .with_context(|| format!("removing stale {}", e.path().display()))?;
        }
    }
    Ok(())
}

const COMPRESSIONS: &[&str] = &[".xz", ".gz", ".bz2", ".lzma", ".zst", ".lz4"];

fn strip_compression(p: &str) -> (&str, Option<&str>) {
    for c in COMPRESSIONS {
        if let Some(b) = p.strip_suffix(c) {
            return (b, Some(c));
        }
    }
    (p, None)
}

/// The Release entries of a suite that a client of this mirror needs.
fn wanted_indices(spec: &RepoSpec, rel: &SuiteRelease) -> Result<Vec<String>> {
    let r = &rel.release;
    for c in &spec.components {
        if !r.components.is_empty()
            && !r
                .components
                .iter()
                .any(|x| x == c || x.rsplit('/').next() == Some(c))
        {
            bail!(
                "component {c} is not in suite {} (it has: {})",
                rel.suite,
                r.components.join(" ")
            );
        }
    }
    for a in &spec.architectures {
        if !r.architectures.is_empty() && !r.architectures.contains(a) {
            bail!(
                "architecture {a} is not in suite {} (it has: {})",
                rel.suite,
                r.architectures.join(" ")
            );
        }
    }
    let mut archs = spec.architectures.clone();
    if r.architectures.iter().any(|a| a == "all")
        && !r.no_support_arch_all
        && !archs.iter().any(|a| a == "all")
    {
        archs.push("all".into());
    }
    let mut out = Vec::new();
    for path in r.files.keys() {
        let Some((comp, rest)) = path.split_once('/') else {
            continue;
        };
        if !spec.components.iter().any(|c| c == comp) {
            continue;
        }
        let keep = if let Some(f) = archs
            .iter()
            .find_map(|a| rest.strip_prefix(&format!("binary-{a}/")))
        {
            !f.contains('/')
        } else if let Some(f) = rest.strip_prefix("i18n/Translation-") {
            let lang = strip_compression(f).0;
            spec.translations.iter().any(|l| l == lang)
        } else {
            false
        };
        // A signed Release is trusted, but a path still never leaves its suite.
        if keep
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Fetches (or reuses from the published generation) every wanted index of a
/// suite into `gen_tmp/<suite>/`, verified against Release. Returns the count,
/// the count downloaded, and the parsed packages of the selected architectures.
fn fetch_indices(
    repo: &Repo,
    rel: &SuiteRelease,
    gen_tmp: &Path,
    opts: &SyncOptions,
    counter: &Counter,
) -> Result<(usize, usize, Vec<Package>)> {
    let wanted = wanted_indices(repo.spec, rel)?;
    let suite_dir = gen_tmp.join(&rel.suite);
    let current = repo.paths.current_generation().map(|g| g.join(&rel.suite));
    // Compressed and plain files that can be fetched directly; plain files
    // whose compressed sibling we fetch are made by decompressing it.
    let mut direct = Vec::new();
    let mut derived = Vec::new();
    for p in &wanted {
        let (base, comp) = strip_compression(p);
        let has_sibling = wanted.iter().any(|q| {
            let (b, c) = strip_compression(q);
            b == base && matches!(c, Some(".xz" | ".gz"))
        });
        if comp.is_none() && has_sibling {
            derived.push(p.clone());
        } else {
            direct.push(p.clone());
        }
    }
    // What Release says a file is; None when the published copy is still
    // right and was linked into the new generation.
    let needed = |p: &str| -> Result<Option<(Expect, PathBuf)>> {
        let f = &rel.release.files[p];
        let expect = Expect {
            size: f.size,
            sha256: f.sha256.clone(),
        };
        let dest = suite_dir.join(p);
        match &current {
            Some(cur) if reuse(&cur.join(p), &dest, &expect)? => Ok(None),
            _ => Ok(Some((expect, dest))),
        }
    };
    let results = parallel::map(&direct, opts.jobs, |p| -> Result<bool> {
        let Some((expect, dest)) = needed(p)? else {
            return Ok(false);
        };
        let f = &rel.release.files[p];
        let mut urls = Vec::new();
        if rel.release.acquire_by_hash {
            let dir = Path::new(p)
                .parent()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            urls.push(join_url(
                &repo.spec.url,
                &format!("dists/{}/{dir}/by-hash/SHA256/{}", rel.suite, f.sha256),
            ));
        }
        urls.push(join_url(
            &repo.spec.url,
            &format!("dists/{}/{p}", rel.suite),
        ));
        let partial = partial_path(&repo.paths.work, &f.sha256);
        let mut last = None;
        for url in &urls {
            match fetch_verified(
                repo.transport.as_ref(),
                url,
                &partial,
                &dest,
                &expect,
                &opts.retry,
                counter,
            ) {
                Ok(_) => return Ok(true),
                Err(e @ FetchError::NotFound { .. }) => last = Some(e),
                Err(e) => return Err(e).with_context(|| format!("fetching {p}")),
            }
        }
        Err(last.expect("at least one URL")).with_context(|| format!("fetching {p}"))
    });
    let mut fetched = 0;
    let mut missing_compressed = Vec::new();
    for (p, r) in direct.iter().zip(results) {
        match r {
            Ok(true) => fetched += 1,
            Ok(false) => {}
            Err(e) if strip_compression(p).1.is_some() && is_not_found(&e) => {
                missing_compressed.push(p.clone())
            }
            Err(e) => return Err(e),
        }
    }
    for p in &missing_compressed {
        tracing::warn!(
            "{} lists {p} but the server has no such file; apt will use another compression",
            rel.suite
        );
    }
    let dres = parallel::map(
        &derived,
        opts.jobs.min(parallel::cpus()),
        |p| -> Result<()> {
            let Some((expect, dest)) = needed(p)? else {
                return Ok(());
            };
            let src = [".xz", ".gz"]
                .iter()
                .map(|c| format!("{p}{c}"))
                .find(|c| suite_dir.join(c).exists());
            let Some(src) = src else {
                bail!("{p}: no compressed copy of it could be fetched")
            };
            decompress_verified(&suite_dir.join(&src), &dest, &expect)
                .with_context(|| format!("decompressing {src}"))
        },
    );
    for r in dres {
        r?;
    }
    // Parse the Packages of the selected architectures.
    let mut pkgs = Vec::new();
    for p in &wanted {
        if !p.ends_with("/Packages") || !p.contains("/binary-") {
            continue;
        }
        let path = suite_dir.join(p);
        let file = fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        read_packages(std::io::BufReader::with_capacity(1 << 20, file), |pk| {
            pkgs.push(pk)
        })
        .with_context(|| format!("parsing {}/{p}", rel.suite))?;
    }
    Ok((wanted.len() - missing_compressed.len(), fetched, pkgs))
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<FetchError>(),
            Some(FetchError::NotFound { .. })
        )
    })
}

/// Hard-links a published file into the new generation when it still has the
/// expected size and hash.
fn reuse(published: &Path, dest: &Path, expect: &Expect) -> Result<bool> {
    match fs::metadata(published) {
        Ok(m) if m.len() == expect.size => {}
        _ => return Ok(false),
    }
    let (_, sha) = sha256_file(published)?;
    if sha != expect.sha256 {
        return Ok(false);
    }
    if let Some(d) = dest.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fs::hard_link(published, dest)
        .with_context(|| format!("linking {} to {}", published.display(), dest.display()))?;
    Ok(true)
}

/// Decompresses `src` (xz or gzip) into `dest`, checking size and SHA-256 of
/// the output against what Release says.
pub(crate) fn decompress_verified(src: &Path, dest: &Path, expect: &Expect) -> Result<()> {
    let f = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut reader: Box<dyn Read> = match src.extension().and_then(|e| e.to_str()) {
        Some("xz") => Box::new(liblzma::read::XzDecoder::new_multi_decoder(
            std::io::BufReader::new(f),
        )),
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            f,
        ))),
        other => bail!("cannot decompress {other:?}"),
    };
    let tmp = dest.with_extension("tmp-decompress");
    let mut out = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let r = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", src.display()))?;
        if r == 0 {
            break;
        }
        n += r as u64;
        if n > expect.size {
            bail!(
                "decompressed data is larger than the {} bytes Release lists",
                expect.size
            );
        }
        h.update(&buf[..r]);
        out.write_all(&buf[..r])
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    let got = hex(&h.finalize());
    if n != expect.size || got != expect.sha256 {
        let _ = fs::remove_file(&tmp);
        bail!(
            "decompressed {} does not match Release: {n} bytes, sha256 {got}",
            dest.display()
        );
    }
    out.sync_all()?;
    fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(())
}

enum Got {
    /// Known from the last sync: size and mtime unchanged.
    Known,
    /// On disk and re-hashed.
    Hashed,
    /// Downloaded: bytes over the wire.
    Fetched(u64),
}

fn ensure_pool_file(
    repo: &Repo,
    path: &str,
    size: u64,
    sha: &str,
    opts: &SyncOptions,
    counter: &Counter,
) -> Result<(PoolEntry, Got)> {
    let dest = repo.paths.root.join(path);
    let force = opts
        .refetch
        .get(&repo.spec.name)
        .is_some_and(|s| s.contains(path));
    let entry = |m: &fs::Metadata| PoolEntry {
        size,
        sha256: sha.to_string(),
        mtime_ns: mtime_ns(m),
    };
    if !force
        && let Ok(m) = fs::metadata(&dest)
        && m.len() == size
    {
        let known = repo.state.as_ref().and_then(|s| s.pool.get(path));
        if known.is_some_and(|k| k.sha256 == sha && k.size == size && k.mtime_ns == mtime_ns(&m)) {
            return Ok((entry(&m), Got::Known));
        }
        if sha256_file(&dest)?.1 == sha {
            return Ok((entry(&m), Got::Hashed));
        }
    }
    let url = join_url(&repo.spec.url, path);
    let expect = Expect {
        size,
        sha256: sha.to_string(),
    };
    let n = fetch_verified(
        repo.transport.as_ref(),
        &url,
        &partial_path(&repo.paths.work, sha),
        &dest,
        &expect,
        &opts.retry,
        counter,
    )?;
    let m = fs::metadata(&dest).with_context(|| format!("reading {}", dest.display()))?;
    Ok((entry(&m), Got::Fetched(n)))
}

/// Finishes the new generation (signed Release files, by-hash, fsync) and
/// switches `dists` to it with one rename.
fn publish(repo: &Repo, gen_tmp: &Path, generation: &str) -> Result<()> {
    let previous = repo.paths.current_generation();
    for rel in &repo.releases {
        let dir = gen_tmp.join(&rel.suite);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, data) in &rel.files {
            let p = dir.join(name);
            let mut f =
                fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        if rel.release.acquire_by_hash {
            // This generation's indices, and the previous generation's so a
            // client holding the old InRelease still finds its files.
            let mut links: Vec<(PathBuf, String, PathBuf)> = Vec::new();
            for (p, f) in &rel.release.files {
                let src = dir.join(p);
                if src.exists() {
                    let d = Path::new(p).parent().unwrap_or(Path::new(""));
                    links.push((dir.join(d).join("by-hash/SHA256"), f.sha256.clone(), src));
                }
            }
            if let Some(prev) = &previous {
                let prev_suite = prev.join(&rel.suite);
                if let Some(prev_rel) = read_published_release(&prev_suite) {
                    for (p, f) in &prev_rel.files {
                        let src = prev_suite.join(p);
                        if src.exists() {
                            let d = Path::new(p).parent().unwrap_or(Path::new(""));
                            links.push((dir.join(d).join("by-hash/SHA256"), f.sha256.clone(), src));
                        }
                    }
                }
            }
            for (bydir, hash, src) in links {
                let dest = bydir.join(&hash);
                if dest.exists() {
                    continue;
                }
                fs::create_dir_all(&bydir)
                    .with_context(|| format!("creating {}", bydir.display()))?;
                fs::hard_link(&src, &dest)
                    .with_context(|| format!("linking {}", dest.display()))?;
            }
        }
    }
    sync_tree(gen_tmp)?;
    let final_dir = repo.paths.generations().join(generation);
    fs::rename(gen_tmp, &final_dir)
        .with_context(|| format!("renaming {} to {}", gen_tmp.display(), final_dir.display()))?;
    sync_dir(&repo.paths.generations())?;
    let link_tmp = repo
        .paths
        .root
        .join(format!(".dists.new-{}", std::process::id()));
    let _ = fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(Path::new(".dists").join(generation), &link_tmp)
        .with_context(|| format!("creating {}", link_tmp.display()))?;
    fs::rename(&link_tmp, repo.paths.dists())
        .with_context(|| format!("switching {}", repo.paths.dists().display()))?;
    sync_dir(&repo.paths.root)?;
    // Keep the new and the previous generation (a client may be mid-read).
    let keep_prev = previous.and_then(|p| p.file_name().map(|n| n.to_os_string()));
    for e in fs::read_dir(repo.paths.generations())?.flatten() {
        let n = e.file_name();
        if n != generation && Some(&n) != keep_prev.as_ref() {
            fs::remove_dir_all(e.path())
                .with_context(|| format!("removing old generation {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The Release of a published suite directory (already verified when it was published).
pub fn read_published_release(suite_dir: &Path) -> Option<cairn_debian::Release> {
    if let Ok(data) = fs::read_to_string(suite_dir.join("Release")) {
        return cairn_debian::Release::parse(&data).ok();
    }
    let data = fs::read_to_string(suite_dir.join("InRelease")).ok()?;
    cairn_debian::Release::parse(&cleartext_body(&data)?).ok()
}

/// The body of a clear-signed message (dash-unescaped), for files cairn itself
/// verified before publishing them.
fn cleartext_body(text: &str) -> Option<String> {
    let start = text.find("\n\n")? + 2;
    let end = text.find("-----BEGIN PGP SIGNATURE-----")?;
    let body = text.get(start..end)?;
    Some(
        body.lines()
            .map(|l| l.strip_prefix("- ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    sync_dir(dir)
}

fn index_list(paths: &MirrorPaths, generation: &str, suite: &str) -> Result<Vec<String>> {
    let dir = paths.generations().join(generation).join(suite);
    let mut out = Vec::new();
    walk_files(&dir, &mut |p| {
        let rel = p
            .strip_prefix(&dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        if !rel.contains("/by-hash/")
            && !matches!(rel.as_str(), "InRelease" | "Release" | "Release.gpg")
        {
            out.push(rel);
        }
    })?;
    out.sort();
    Ok(out)
}

pub fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk_files(&e.path(), f)?;
        } else {
            f(&e.path());
        }
    }
    Ok(())
}

/// Removes pool files no longer selected (or lists them, with `keep`).
fn remove_obsolete(
    root: &Path,
    wanted: &BTreeSet<&String>,
    keep: bool,
) -> Result<(usize, BTreeSet<String>)> {
    let pool = root.join("pool");
    let mut obsolete = Vec::new();
    walk_files(&pool, &mut |p| {
        let rel = p
            .strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        if !wanted.contains(&rel) {
            obsolete.push((p.to_path_buf(), rel));
        }
    })?;
    if keep {
        return Ok((0, obsolete.into_iter().map(|o| o.1).collect()));
    }
    for (p, _) in &obsolete {
        fs::remove_file(p).with_context(|| format!("removing obsolete {}", p.display()))?;
        let mut d = p.parent();
        while let Some(dir) = d {
            if dir == pool || fs::remove_dir(dir).is_err() {
                break;
            }
            d = dir.parent();
        }
    }
    Ok((obsolete.len(), BTreeSet::new()))
}

/// Drops partial downloads that are no longer wanted.
fn prune_partials(paths: &MirrorPaths, wanted: &BTreeMap<String, (u64, String)>) -> Result<()> {
    let keep: HashSet<&str> = wanted.values().map(|(_, s)| s.as_str()).collect();
    if let Ok(rd) = fs::read_dir(paths.partial()) {
        for e in rd.flatten() {
            if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}
