//! `cairn mirror verify`: re-checks a published mirror — Release signature and
//! dates, every index, every pool file (in parallel on all cores) — reports
//! what is missing, corrupt or unexpected, and with `--repair` refetches it.

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_debian::date::format_release_date;
use cairn_debian::{Release, read_packages};
use serde::Serialize;

use super::fetch::{
    Counter, Expect, FetchError, RetryPolicy, fetch_verified, join_url, partial_for, transport_for,
};
use super::state::walk_files;
use super::state::{MirrorPaths, MirrorState, lock_mirror, mtime_ns};
use super::sync::decompress_verified;
use crate::parallel;
use crate::progress::{Mode, Progress};
use crate::trust::hash::sha256_file;
use crate::trust::openpgp::Keyring;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub store: PathBuf,
    pub jobs: usize,
    pub repair: bool,
    pub wait: bool,
    pub progress: Mode,
    pub max_future: i64,
}

#[derive(Debug, Serialize, Clone)]
pub struct Problem {
    pub path: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct SuiteCheck {
    pub suite: String,
    pub signed_by: Vec<String>,
    pub date: Option<String>,
    pub valid_until: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub name: String,
    pub path: PathBuf,
    pub ok: bool,
    pub suites: Vec<SuiteCheck>,
    pub indices_checked: usize,
    pub pool_checked: usize,
    pub bytes_hashed: u64,
    pub seconds: f64,
    /// Signature, date or listing problems of Release files.
    pub release_problems: Vec<Problem>,
    pub missing: Vec<String>,
    pub corrupt: Vec<Problem>,
    pub unexpected: Vec<String>,
    /// Obsolete pool files kept on purpose (`sync --keep-obsolete`).
    pub retained: usize,
    /// Pool files fetched by a sync that has not published yet.
    pub pending: usize,
    /// What `--repair` fixed.
    pub repaired: Vec<String>,
}

pub fn verify(name: &str, opts: &VerifyOptions) -> Result<VerifyReport> {
    let paths = MirrorPaths::new(&opts.store, name);
    let _lock = lock_mirror(&paths, opts.wait)?;
    let mut report = check(&paths, opts)?;
    if opts.repair && !report.ok {
        let repaired = repair(&paths, &report, opts)?;
        report = check(&paths, opts)?;
        report.repaired = repaired;
    }
    Ok(report)
}

/// Index files to hash: (display path, file, expected size, sha256).
type Jobs = Vec<(String, PathBuf, u64, String)>;

fn check(paths: &MirrorPaths, opts: &VerifyOptions) -> Result<VerifyReport> {
    let t0 = Instant::now();
    let state = MirrorState::load(paths)?.with_context(|| {
        format!(
            "mirror {} has no cairn state in {}: was it made by `cairn mirror sync`?",
            paths.name,
            paths.work.display()
        )
    })?;
    let gen_dir = paths.current_generation().with_context(|| {
        format!(
            "mirror {} has nothing published ({} is missing)",
            paths.name,
            paths.dists().display()
        )
    })?;
    let keyring = Keyring::new(state.repo.keyring.clone());
    let tmp = paths.work.join("verify-tmp");
    fs::create_dir_all(&tmp)?;
    let mut r = VerifyReport {
        name: paths.name.clone(),
        path: paths.root.clone(),
        ok: false,
        suites: Vec::new(),
        indices_checked: 0,
        pool_checked: 0,
        bytes_hashed: 0,
        seconds: 0.0,
        release_problems: Vec::new(),
        missing: Vec::new(),
        corrupt: Vec::new(),
        unexpected: Vec::new(),
        retained: 0,
        pending: 0,
        repaired: Vec::new(),
    };
    let (index_jobs, to_parse) = check_suites(&state, &gen_dir, &keyring, &tmp, opts, &mut r)?;
    r.indices_checked = index_jobs.len();
    let bad_indices = hash_all(index_jobs, opts, "verify indices", &mut r);
    let listed = read_indices(to_parse, &bad_indices, &mut r)?;
    let pool_jobs = check_pool(paths, &state, &listed, &bad_indices, &mut r)?;
    r.pool_checked = pool_jobs.len();
    hash_all(pool_jobs, opts, "verify pool", &mut r);
    r.missing.sort();
    r.unexpected.sort();
    r.corrupt.sort_by(|a, b| a.path.cmp(&b.path));
    r.ok = r.release_problems.is_empty()
        && r.missing.is_empty()
        && r.corrupt.is_empty()
        && r.unexpected.is_empty();
    r.seconds = t0.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(&tmp);
    Ok(r)
}

/// Every suite's signed Release checked (signature, dates), its indices
/// against it, its directory for strays: the index files to hash and the
/// Packages to read the pool from.
fn check_suites(
    state: &MirrorState,
    gen_dir: &Path,
    keyring: &Keyring,
    tmp: &Path,
    opts: &VerifyOptions,
    r: &mut VerifyReport,
) -> Result<(Jobs, Vec<(String, PathBuf)>)> {
    let mut index_jobs: Jobs = Vec::new();
    let mut to_parse: Vec<(String, PathBuf)> = Vec::new();
    for suite in &state.repo.suites {
        let dir = gen_dir.join(suite);
        let shown = |p: &str| format!("dists/{suite}/{p}");
        let Some(release) = check_release_file(suite, &dir, keyring, tmp, opts, r) else {
            continue;
        };
        let indices: BTreeSet<String> = state
            .suites
            .get(suite)
            .map(|s| s.indices.iter().cloned().collect())
            .unwrap_or_default();
        for p in &indices {
            let file = dir.join(p);
            match release.files.get(p) {
                None => r.corrupt.push(Problem {
                    path: shown(p),
                    detail: "not listed in the signed Release".into(),
                }),
                Some(_) if !file.exists() => r.missing.push(shown(p)),
                Some(f) => index_jobs.push((shown(p), file, f.size, f.sha256.clone())),
            }
        }
        // Everything else in the suite directory must be a by-hash copy or a Release file.
        walk_files(&dir, &mut |f| {
            let rel = f
                .strip_prefix(&dir)
                .unwrap_or(f)
                .to_string_lossy()
                .into_owned();
            if let Some((_, hash)) = rel.split_once("/by-hash/SHA256/") {
                let size = fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                index_jobs.push((shown(&rel), f.to_path_buf(), size, hash.to_string()));
            } else if !indices.contains(&rel)
                && !matches!(rel.as_str(), "InRelease" | "Release" | "Release.gpg")
            {
                r.unexpected.push(shown(&rel));
            }
        })?;
        // The pool as the signed indices describe it (parsed once they verify).
        for p in &indices {
            if p.ends_with("/Packages") && dir.join(p).exists() && release.files.contains_key(p) {
                to_parse.push((shown(p), dir.join(p)));
            }
        }
    }
    Ok((index_jobs, to_parse))
}

/// A suite's Release, verified by apt's rules and checked for its dates
/// (a problem is recorded in `r`; None when it does not verify).
fn check_release_file(
    suite: &str,
    dir: &Path,
    keyring: &Keyring,
    tmp: &Path,
    opts: &VerifyOptions,
    r: &mut VerifyReport,
) -> Option<Release> {
    let shown = |p: &str| format!("dists/{suite}/{p}");
    match read_verified_release(dir, keyring, tmp) {
        Ok((rel, signers)) => {
            let n = crate::unix_now();
            if let Some(u) = rel.valid_until
                && u < n
            {
                r.release_problems.push(Problem {
                    path: shown("InRelease"),
                    detail: format!("expired on {}", format_release_date(u)),
                });
            }
            if let Some(d) = rel.date
                && d > n + opts.max_future
            {
                r.release_problems.push(Problem {
                    path: shown("InRelease"),
                    detail: format!("dated in the future: {}", format_release_date(d)),
                });
            }
            r.suites.push(SuiteCheck {
                suite: suite.to_string(),
                signed_by: signers,
                date: rel.date.map(format_release_date),
                valid_until: rel.valid_until.map(format_release_date),
            });
            Some(rel)
        }
        Err(e) => {
            r.release_problems.push(Problem {
                path: shown("InRelease"),
                detail: format!("{e:#}"),
            });
            None
        }
    }
}

/// The pool files the signed Packages list (those whose index hashed
/// right): path → size and SHA-256.
fn read_indices(
    to_parse: Vec<(String, PathBuf)>,
    bad_indices: &BTreeSet<String>,
    r: &mut VerifyReport,
) -> Result<HashMap<String, (u64, String)>> {
    let mut listed: HashMap<String, (u64, String)> = HashMap::new();
    for (shown, path) in to_parse {
        if bad_indices.contains(&shown) {
            continue;
        }
        let file = fs::File::open(&path).with_context(|| format!("reading {shown}"))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        if let Err(e) = read_packages(reader, |pk| {
            listed.insert(pk.filename, (pk.size, pk.sha256));
        }) {
            r.corrupt.push(Problem {
                path: shown,
                detail: format!("unreadable: {e}"),
            });
        }
    }
    Ok(listed)
}

/// The pool as cairn recorded it, against the signed indices: the files to
/// hash; what is missing, corrupt, retained, pending or unexpected goes to
/// `r`.
fn check_pool(
    paths: &MirrorPaths,
    state: &MirrorState,
    listed: &HashMap<String, (u64, String)>,
    bad_indices: &BTreeSet<String>,
    r: &mut VerifyReport,
) -> Result<Jobs> {
    let mut pool_jobs = Vec::new();
    for (p, e) in &state.pool {
        match listed.get(p) {
            Some((size, sha)) if *size == e.size && *sha == e.sha256 => {}
            Some(_) => {
                r.corrupt.push(Problem {
                    path: p.clone(),
                    detail: "cairn's record differs from the signed index".into(),
                });
                continue;
            }
            // Its index could not be read: judge the file by cairn's record alone.
            None if !r.release_problems.is_empty() || !bad_indices.is_empty() => {}
            None => {
                r.corrupt.push(Problem {
                    path: p.clone(),
                    detail: "not listed in any signed index".into(),
                });
                continue;
            }
        }
        let file = paths.root.join(p);
        if file.exists() {
            pool_jobs.push((p.clone(), file, e.size, e.sha256.clone()));
        } else {
            r.missing.push(p.clone());
        }
    }
    walk_files(&paths.root.join("pool"), &mut |f| {
        let rel = f
            .strip_prefix(&paths.root)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        if !state.pool.contains_key(&rel) {
            if state.retained.contains(&rel) {
                r.retained += 1;
            } else if state.pending.contains(&rel) {
                r.pending += 1;
            } else {
                r.unexpected.push(rel);
            }
        }
    })?;
    Ok(pool_jobs)
}

/// Hashes files on all cores; records problems in the report and returns the
/// names of the files that did not match.
fn hash_all(
    mut jobs: Vec<(String, PathBuf, u64, String)>,
    opts: &VerifyOptions,
    label: &str,
    r: &mut VerifyReport,
) -> BTreeSet<String> {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.2));
    let total: u64 = jobs.iter().map(|j| j.2).sum();
    let progress = Progress::start(opts.progress, label, jobs.len() as u64, total);
    let bytes = progress.bytes.clone();
    let results = parallel::map(&jobs, opts.jobs, |(_, file, size, sha)| {
        let res = sha256_file(file);
        bytes.fetch_add(*size, std::sync::atomic::Ordering::Relaxed);
        progress.file_done();
        match res {
            Ok((n, _)) if n != *size => Some(format!("size {n}, expected {size}")),
            Ok((_, got)) if got != *sha => Some(format!("sha256 {got}, expected {sha}")),
            Ok(_) => None,
            Err(e) => Some(format!("{e:#}")),
        }
    });
    progress.finish();
    let mut bad = BTreeSet::new();
    for ((shown, _, size, _), problem) in jobs.into_iter().zip(results) {
        match problem {
            None => r.bytes_hashed += size,
            Some(detail) => {
                bad.insert(shown.clone());
                r.corrupt.push(Problem {
                    path: shown,
                    detail,
                });
            }
        }
    }
    bad
}

/// Verifies a published suite's InRelease (or Release + Release.gpg).
fn read_verified_release(
    dir: &Path,
    keyring: &Keyring,
    tmp: &Path,
) -> Result<(Release, Vec<String>)> {
    super::release::read_published(dir, keyring, tmp)?
        .context("neither InRelease nor Release is present")
}

/// A file to put back: where it goes, what it must be, where to get it.
struct Fix {
    shown: String,
    dest: PathBuf,
    expect: Expect,
    /// A local compressed copy to decompress instead of fetching (uncompressed indices).
    local: Option<PathBuf>,
    urls: Vec<String>,
}

/// Refetches missing and corrupt files from the mirror's source, each
/// verified against the published signed indices; removes unexpected pool files.
fn repair(paths: &MirrorPaths, report: &VerifyReport, opts: &VerifyOptions) -> Result<Vec<String>> {
    if !report.release_problems.is_empty() {
        let what: Vec<String> = report
            .release_problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.detail))
            .collect();
        return Err(crate::trust::VerificationFailed::new(format!(
            "the published Release of mirror {} does not verify ({}): run `cairn mirror sync` to publish a fresh one",
            paths.name,
            what.join("; ")
        ))
        .into());
    }
    fs::create_dir_all(paths.tmp())?;
    let mut state = MirrorState::load(paths)?.context("state vanished")?;
    let fixes = plan_fixes(paths, &state, report)?;
    let results = apply_fixes(paths, &state, &fixes, opts)?;
    let mut repaired = Vec::new();
    let mut failed = Vec::new();
    for (fix, res) in fixes.iter().zip(results) {
        match res {
            Ok(()) => {
                if let Some(e) = state.pool.get_mut(&fix.shown) {
                    e.mtime_ns = fs::metadata(&fix.dest).map(|m| mtime_ns(&m)).unwrap_or(0);
                }
                repaired.push(fix.shown.clone());
            }
            Err(e) => failed.push(format!("{}: {e:#}", fix.shown)),
        }
    }
    for u in &report.unexpected {
        if u.starts_with("pool/") {
            fs::remove_file(paths.root.join(u)).with_context(|| format!("removing {u}"))?;
            repaired.push(format!("removed {u}"));
        }
    }
    state.save(paths)?;
    let _ = fs::remove_dir_all(paths.tmp());
    if !failed.is_empty() {
        bail!(
            "could not repair {} file(s) (the source may have moved on: run `cairn mirror sync`):\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(repaired)
}

/// What repairs each missing or corrupt file: a pool file from its
/// recorded hash, an index from the published signed Release (by hash
/// first; a plain index from its compressed sibling when that is right).
fn plan_fixes(paths: &MirrorPaths, state: &MirrorState, report: &VerifyReport) -> Result<Vec<Fix>> {
    let gen_dir = paths.current_generation().context("nothing published")?;
    let keyring = Keyring::new(state.repo.keyring.clone());
    let mut releases: BTreeMap<String, Release> = BTreeMap::new();
    let mut fixes = Vec::new();
    let bad: BTreeSet<&String> = report
        .missing
        .iter()
        .chain(report.corrupt.iter().map(|p| &p.path))
        .collect();
    for shown in bad {
        if let Some(e) = state.pool.get(shown) {
            fixes.push(Fix {
                shown: shown.clone(),
                dest: paths.root.join(shown),
                expect: Expect {
                    size: e.size,
                    sha256: e.sha256.clone(),
                },
                local: None,
                urls: vec![join_url(&state.repo.url, shown)],
            });
            continue;
        }
        let Some(rest) = shown.strip_prefix("dists/") else {
            continue;
        };
        let Some(suite) = state
            .repo
            .suites
            .iter()
            .find(|s| rest.starts_with(&format!("{s}/")))
        else {
            continue;
        };
        let rel_path = &rest[suite.len() + 1..];
        if !releases.contains_key(suite) {
            releases.insert(
                suite.clone(),
                read_verified_release(&gen_dir.join(suite), &keyring, &paths.tmp())?.0,
            );
        }
        let rel = &releases[suite];
        // A by-hash name stands for the index with that hash.
        let index = match rel_path.split_once("/by-hash/SHA256/") {
            Some((_, h)) => rel
                .files
                .iter()
                .find(|(_, f)| f.sha256 == h)
                .map(|(p, _)| p.clone()),
            None => Some(rel_path.to_string()),
        };
        let Some(index) = index else { continue };
        let Some(f) = rel.files.get(&index) else {
            continue;
        };
        let suite_dir = gen_dir.join(suite);
        let local = [".xz", ".gz"]
            .iter()
            .map(|c| suite_dir.join(format!("{index}{c}")))
            .find(|p| p.exists());
        let dir = Path::new(&index)
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        fixes.push(Fix {
            shown: shown.clone(),
            dest: suite_dir.join(rel_path),
            expect: Expect {
                size: f.size,
                sha256: f.sha256.clone(),
            },
            local,
            urls: vec![
                join_url(
                    &state.repo.url,
                    &format!("dists/{suite}/{dir}/by-hash/SHA256/{}", f.sha256),
                ),
                join_url(&state.repo.url, &format!("dists/{suite}/{index}")),
            ],
        });
    }
    Ok(fixes)
}

/// Fetches (or decompresses) every fix, each checked while it streams.
fn apply_fixes(
    paths: &MirrorPaths,
    state: &MirrorState,
    fixes: &[Fix],
    opts: &VerifyOptions,
) -> Result<Vec<Result<()>>> {
    let transport = transport_for(&state.repo.url, opts.jobs)?;
    let retry = RetryPolicy::default();
    let counter = Counter::default();
    let results = parallel::map(fixes, opts.jobs, |fix| -> Result<()> {
        if let Some(src) = &fix.local
            && decompress_verified(src, &fix.dest, &fix.expect).is_ok()
        {
            return Ok(());
        }
        let partial = partial_for(&paths.work, &fix.expect.sha256, &fix.dest.to_string_lossy());
        let mut last = None;
        for url in &fix.urls {
            match fetch_verified(
                transport.as_ref(),
                url,
                &partial,
                &fix.dest,
                &fix.expect,
                &retry,
                &counter,
            ) {
                Ok(_) => return Ok(()),
                Err(e @ FetchError::NotFound { .. }) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no source"), Into::into))
    });
    Ok(results)
}
