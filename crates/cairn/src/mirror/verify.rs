//! `cairn mirror verify`: re-checks a published mirror — Release signature and
//! dates, every index, every pool file (in parallel on all cores) — reports
//! what is missing, corrupt or unexpected, and with `--repair` refetches it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_debian::date::format_release_date;
use cairn_debian::{Release, read_packages};
use serde::Serialize;

use super::fetch::{
    Counter, Expect, RetryPolicy, fetch_verified, join_url, partial_path, transport_for,
};
use super::state::{MirrorLock, MirrorPaths, MirrorState, mtime_ns};
use super::sync::walk_files;
use crate::parallel;
use crate::progress::{Mode, Progress};
use crate::trust::hash::sha256_file;
use crate::trust::openpgp::{Keyring, verify_cleartext, verify_detached};

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

/// Names of the mirrors in a store that cairn manages.
pub fn list_mirrors(store: &Path) -> Result<Vec<String>> {
    let dir = store.join("mirror");
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = n.strip_prefix('.').and_then(|n| n.strip_suffix(".work"))
                && e.path().join("state.json").exists()
            {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn verify(name: &str, opts: &VerifyOptions) -> Result<VerifyReport> {
    let paths = MirrorPaths::new(&opts.store, name);
    let _lock = MirrorLock::acquire(&paths, opts.wait)?;
    let mut report = check(&paths, opts)?;
    if opts.repair && !report.ok {
        let repaired = repair(&paths, &report, opts)?;
        report = check(&paths, opts)?;
        report.repaired = repaired;
    }
    Ok(report)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

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
    // Index files to hash: (display path, file, expected size, sha256).
    let mut index_jobs: Vec<(String, PathBuf, u64, String)> = Vec::new();
    let mut listed: HashMap<String, (u64, String)> = HashMap::new();
    for suite in &state.repo.suites {
        let dir = gen_dir.join(suite);
        let shown = |p: &str| format!("dists/{suite}/{p}");
        let release = match read_verified_release(&dir, &keyring, &tmp) {
            Ok((rel, signers)) => {
                let n = now();
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
                    suite: suite.clone(),
                    signed_by: signers,
                    date: rel.date.map(format_release_date),
                    valid_until: rel.valid_until.map(format_release_date),
                });
                rel
            }
            Err(e) => {
                r.release_problems.push(Problem {
                    path: shown("InRelease"),
                    detail: format!("{e:#}"),
                });
                continue;
            }
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
        // The pool as the signed indices describe it.
        for p in &indices {
            if p.ends_with("/Packages") && dir.join(p).exists() && release.files.contains_key(p) {
                let file =
                    fs::File::open(dir.join(p)).with_context(|| format!("reading {}", shown(p)))?;
                let reader = std::io::BufReader::with_capacity(1 << 20, file);
                match read_packages(reader, |pk| {
                    listed.insert(pk.filename, (pk.size, pk.sha256));
                }) {
                    Ok(()) => {}
                    Err(e) => r.corrupt.push(Problem {
                        path: shown(p),
                        detail: format!("unreadable: {e}"),
                    }),
                }
            }
        }
    }
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
            None if !r.release_problems.is_empty() => {}
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
    r.indices_checked = index_jobs.len();
    r.pool_checked = pool_jobs.len();
    let mut jobs: Vec<(String, PathBuf, u64, String)> =
        index_jobs.into_iter().chain(pool_jobs).collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.2));
    let total: u64 = jobs.iter().map(|j| j.2).sum();
    let progress = Progress::start(opts.progress, "verify", jobs.len() as u64, total);
    let bytes = progress.bytes.clone();
    let results = parallel::map(&jobs, opts.jobs, |(_, file, size, sha)| {
        let res = sha256_file(file);
        bytes.fetch_add(*size, std::sync::atomic::Ordering::Relaxed);
        progress.file_done();
        res.map(|(n, got)| {
            if n != *size {
                Some(format!("size {n}, expected {size}"))
            } else if got != *sha {
                Some(format!("sha256 {got}, expected {sha}"))
            } else {
                None
            }
        })
    });
    progress.finish();
    for ((shown, _, size, _), res) in jobs.iter().zip(results) {
        match res {
            Ok(None) => r.bytes_hashed += size,
            Ok(Some(detail)) => r.corrupt.push(Problem {
                path: shown.clone(),
                detail,
            }),
            Err(e) => r.corrupt.push(Problem {
                path: shown.clone(),
                detail: format!("{e:#}"),
            }),
        }
    }
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

/// Verifies a published suite's InRelease (or Release + Release.gpg).
fn read_verified_release(
    dir: &Path,
    keyring: &Keyring,
    tmp: &Path,
) -> Result<(Release, Vec<String>)> {
    let v = if let Ok(data) = fs::read(dir.join("InRelease")) {
        verify_cleartext(&data, keyring, tmp)?
    } else {
        let data =
            fs::read(dir.join("Release")).context("neither InRelease nor Release is present")?;
        let sig = fs::read(dir.join("Release.gpg")).context("Release.gpg is missing")?;
        verify_detached(&data, &sig, keyring, tmp)?
    };
    let text = String::from_utf8(v.text).context("signed text is not UTF-8")?;
    Ok((Release::parse(&text)?, v.signers))
}

/// Refetches missing and corrupt files from the mirror's source, each
/// verified against the published signed indices; removes unexpected pool files.
fn repair(paths: &MirrorPaths, report: &VerifyReport, opts: &VerifyOptions) -> Result<Vec<String>> {
    if !report.release_problems.is_empty() {
        bail!(
            "the published Release of mirror {} does not verify ({}): run `cairn mirror sync` to publish a fresh one",
            paths.name,
            report
                .release_problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.detail))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    fs::create_dir_all(paths.tmp())?;
    let mut state = MirrorState::load(paths)?.context("state vanished")?;
    let gen_dir = paths.current_generation().context("nothing published")?;
    let transport = transport_for(&state.repo.url, opts.jobs)?;
    let retry = RetryPolicy::default();
    let counter = Counter::default();
    let mut targets: Vec<(String, String, PathBuf, Expect)> = Vec::new(); // (shown, url, dest, expect)
    let bad: BTreeSet<&String> = report
        .missing
        .iter()
        .chain(report.corrupt.iter().map(|p| &p.path))
        .collect();
    let mut releases: BTreeMap<String, Release> = BTreeMap::new();
    for shown in bad {
        if let Some(rest) = shown.strip_prefix("dists/") {
            let suite = state
                .repo
                .suites
                .iter()
                .find(|s| rest.starts_with(&format!("{s}/")))
                .context("unknown suite")?;
            let rel_path = &rest[suite.len() + 1..];
            if !releases.contains_key(suite) {
                let (rel, _) = read_verified_release(
                    &gen_dir.join(suite),
                    &Keyring::new(state.repo.keyring.clone()),
                    &paths.tmp(),
                )?;
                releases.insert(suite.clone(), rel);
            }
            let rel = &releases[suite];
            let (expect_path, hash) = match rel_path.split_once("/by-hash/SHA256/") {
                Some((_, h)) => (
                    rel.files
                        .iter()
                        .find(|(_, f)| f.sha256 == h)
                        .map(|(p, _)| p.clone()),
                    h.to_string(),
                ),
                None => (
                    Some(rel_path.to_string()),
                    rel.files
                        .get(rel_path)
                        .map(|f| f.sha256.clone())
                        .unwrap_or_default(),
                ),
            };
            let Some(p) = expect_path else { continue };
            let Some(f) = rel.files.get(&p) else { continue };
            let _ = hash;
            targets.push((
                shown.clone(),
                join_url(&state.repo.url, &format!("dists/{suite}/{p}")),
                gen_dir.join(suite).join(rel_path),
                Expect {
                    size: f.size,
                    sha256: f.sha256.clone(),
                },
            ));
        } else if let Some(e) = state.pool.get(shown) {
            targets.push((
                shown.clone(),
                join_url(&state.repo.url, shown),
                paths.root.join(shown),
                Expect {
                    size: e.size,
                    sha256: e.sha256.clone(),
                },
            ));
        }
    }
    fs::create_dir_all(paths.tmp())?;
    let results = parallel::map(&targets, opts.jobs, |(_, url, dest, expect)| {
        fetch_verified(
            transport.as_ref(),
            url,
            &partial_path(&paths.work, &expect.sha256),
            dest,
            expect,
            &retry,
            &counter,
        )
    });
    let mut repaired = Vec::new();
    let mut failed = Vec::new();
    for ((shown, _, dest, expect), res) in targets.iter().zip(results) {
        match res {
            Ok(_) => {
                if let Some(e) = state.pool.get_mut(shown) {
                    e.mtime_ns = fs::metadata(dest).map(|m| mtime_ns(&m)).unwrap_or(0);
                    let _ = expect;
                }
                repaired.push(shown.clone());
            }
            Err(e) => failed.push(format!("{shown}: {e}")),
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
