//! `cairn mirror verify`: re-checks a published mirror — Release signature and
//! dates, every index, every pool file (in parallel on all cores) — reports
//! what is missing, corrupt or unexpected, and with `--repair` refetches it.

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_debian::date::format_release_date;
use cairn_debian::{PoolEntry as IndexEntry, Release, pool_entries_in_parts};
use serde::Serialize;

use super::fetch::{
    Counter, Expect, FetchError, RetryPolicy, fetch_verified, join_url, partial_for, transport_for,
};
use super::state::walk_files;
use super::state::{MirrorPaths, MirrorState, lock_mirror, mtime_ns};
use super::sync::decompress_verified;
use crate::parallel;
use crate::progress::{Mode, Progress};
use crate::trust::hash::{sha256_regular_file, sha256_regular_file_kept};
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

impl VerifyReport {
    /// A report with nothing checked yet.
    fn empty(name: &str, path: &Path) -> VerifyReport {
        VerifyReport {
            name: name.to_string(),
            path: path.to_path_buf(),
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
        }
    }
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

/// Pool files read at once per job: cold, a hasher mostly waits for the
/// disk, which serves more reads in flight; warm, two share a core at no
/// cost measured (docs/mirror.md). Indices, parsed too, stay at one.
const POOL_READS_PER_JOB: usize = 2;

/// Files to hash: (display path, file, expected size, sha256).
type Job = (String, PathBuf, u64, String);
type Jobs = Vec<Job>;

/// The pool files the signed indices list: path → size and SHA-256.
type Listed = HashMap<String, (u64, String)>;

/// A file's size and SHA-256, and the file read.
type Hashed = Result<crate::trust::hash::FileHash>;

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
    let mut r = VerifyReport::empty(&paths.name, &paths.root);
    // The pool is hashed from the start, against cairn's own record of
    // it, while the Releases are verified and the indices hashed and
    // read; the record is then held against the signed indices (a file
    // whose record differs is corrupt whatever its hash), so the verdicts
    // are those of checking in turn, in the time of the longest part.
    let pool_jobs: Jobs = state
        .pool
        .iter()
        .map(|(p, e)| (p.clone(), paths.root.join(p), e.size, e.sha256.clone()))
        .collect();
    let total = pool_jobs.iter().map(|j| j.2).sum();
    let progress = Progress::start(opts.progress, "verify", pool_jobs.len() as u64, total);
    let stop = AtomicBool::new(false);
    let readers = opts.jobs.saturating_mul(POOL_READS_PER_JOB);
    let (found, signed) = std::thread::scope(|s| {
        let hasher = s.spawn(|| hash_files(&pool_jobs, readers, Some(&progress), &stop));
        let signed = read_signed(paths, &state, &gen_dir, &keyring, &tmp, opts, &mut r);
        if signed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let found = hasher
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (found, signed)
    });
    progress.finish();
    let (listed, bad_indices) = signed?;
    judge_pool(&pool_jobs, found, &listed, &bad_indices, &mut r);
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

/// The signed side: every suite's Release verified, its indices hashed
/// and the Packages among them read (those that hashed right), the pool
/// directory walked for files nobody lists. Returns the pool files the
/// signed indices list, and the indices that did not hash right.
fn read_signed(
    paths: &MirrorPaths,
    state: &MirrorState,
    gen_dir: &Path,
    keyring: &Keyring,
    tmp: &Path,
    opts: &VerifyOptions,
    r: &mut VerifyReport,
) -> Result<(Listed, BTreeSet<String>)> {
    let (index_jobs, to_parse) = check_suites(state, gen_dir, keyring, tmp, opts, r)?;
    r.indices_checked = index_jobs.len();
    // The Packages are read as they are hashed: what is read of them is
    // what was held against the signed Release, read once.
    let (found, mut read) = hash_files_reading(
        &index_jobs,
        opts.jobs,
        None,
        &AtomicBool::new(false),
        &to_parse,
        |bytes| pool_entries(bytes, &state.pool),
    );
    let packages: Vec<(String, Result<Vec<IndexEntry>, String>)> = to_parse
        .iter()
        .filter_map(|i| Some((index_jobs[*i].0.clone(), read.remove(i)?)))
        .collect();
    let mut bad = BTreeSet::new();
    for ((shown, _, _, _), f) in index_jobs.into_iter().zip(found) {
        match f {
            Found::Good(n) => r.bytes_hashed += n,
            Found::Missing => {
                bad.insert(shown.clone());
                r.missing.push(shown);
            }
            Found::Bad(detail) => {
                bad.insert(shown.clone());
                r.corrupt.push(Problem {
                    path: shown,
                    detail,
                });
            }
        }
    }
    let listed = read_indices(packages, r);
    unexpected_in_pool(paths, state, r)?;
    Ok((listed, bad))
}

/// Every suite's signed Release checked (signature, dates), its indices
/// against it, its directory for strays: the index files to hash, and
/// which of them are the Packages to read the pool from.
fn check_suites(
    state: &MirrorState,
    gen_dir: &Path,
    keyring: &Keyring,
    tmp: &Path,
    opts: &VerifyOptions,
    r: &mut VerifyReport,
) -> Result<(Jobs, BTreeSet<usize>)> {
    let mut index_jobs: Jobs = Vec::new();
    let mut to_parse = BTreeSet::new();
    // Every suite's gpgv at once (a process each, mostly its start-up).
    let suites = &state.repo.suites;
    let verified = parallel::map(suites, suites.len(), |suite| {
        read_verified_release(&gen_dir.join(suite), keyring, tmp)
    });
    for (suite, verified) in suites.iter().zip(verified) {
        let dir = gen_dir.join(suite);
        let shown = |p: &str| format!("dists/{suite}/{p}");
        let Some(release) = check_release_file(suite, verified, opts, r) else {
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
                Some(f) => {
                    // The pool as the signed indices describe it (read once they verify).
                    if p.ends_with("/Packages") {
                        to_parse.insert(index_jobs.len());
                    }
                    index_jobs.push((shown(p), file, f.size, f.sha256.clone()));
                }
            }
        }
        // Everything else in the suite directory must be a by-hash copy or a Release file.
        walk_files(&dir, &mut |f| {
            let rel = f
                .strip_prefix(&dir)
                .unwrap_or(f)
                .to_string_lossy()
                .into_owned();
            if let Some((d, hash)) = rel.split_once("/by-hash/SHA256/") {
                // The signed size of the index it stands for (a link lent
                // by the previous Release, for clients holding it: its own).
                let size = release
                    .files
                    .iter()
                    .find(|(p, e)| e.sha256 == hash && Path::new(p).parent() == Some(Path::new(d)))
                    .map_or_else(|| fs::metadata(f).map_or(0, |m| m.len()), |(_, e)| e.size);
                index_jobs.push((shown(&rel), f.to_path_buf(), size, hash.to_string()));
            } else if !indices.contains(&rel)
                && !matches!(rel.as_str(), "InRelease" | "Release" | "Release.gpg")
            {
                r.unexpected.push(shown(&rel));
            }
        })?;
    }
    Ok((index_jobs, to_parse))
}

/// A suite's Release, verified by apt's rules (`verified`), checked for
/// its dates (a problem is recorded in `r`; None when it does not verify).
fn check_release_file(
    suite: &str,
    verified: Result<(Release, Vec<String>)>,
    opts: &VerifyOptions,
    r: &mut VerifyReport,
) -> Option<Release> {
    let shown = |p: &str| format!("dists/{suite}/{p}");
    match verified {
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

/// The pool entries of a Packages text (`bytes`: those that hashed
/// right) of the files cairn recorded (`wanted`), read as read_packages
/// reads it, without a Package made of each stanza, in parts on every
/// core; or why it does not read.
fn pool_entries(
    bytes: &[u8],
    wanted: &BTreeMap<String, super::state::PoolEntry>,
) -> Result<Vec<IndexEntry>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    pool_entries_in_parts(text, parallel::cpus(), |f| wanted.contains_key(f))
        .map_err(|e| e.to_string())
}

/// The pool files the signed Packages list (`packages`: each one's name
/// and what reading it found): path → size and SHA-256. An index that
/// does not read is corrupt.
fn read_indices(
    packages: Vec<(String, Result<Vec<IndexEntry>, String>)>,
    r: &mut VerifyReport,
) -> Listed {
    let mut listed = Listed::new();
    for (shown, read) in packages {
        match read {
            Ok(entries) => listed.extend(entries.into_iter().map(|(f, n, h)| (f, (n, h)))),
            Err(e) => r.corrupt.push(Problem {
                path: shown,
                detail: format!("unreadable: {e}"),
            }),
        }
    }
    listed
}

/// The pool as cairn recorded it, against the signed indices and what
/// hashing found: what is missing or corrupt goes to `r`.
fn judge_pool(
    pool_jobs: &Jobs,
    found: Vec<Found>,
    listed: &Listed,
    bad_indices: &BTreeSet<String>,
    r: &mut VerifyReport,
) {
    for ((p, _, size, sha), f) in pool_jobs.iter().zip(found) {
        match listed.get(p) {
            Some((s, h)) if s == size && h == sha => {}
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
        match f {
            Found::Missing => r.missing.push(p.clone()),
            Found::Good(n) => {
                r.pool_checked += 1;
                r.bytes_hashed += n;
            }
            Found::Bad(detail) => {
                r.pool_checked += 1;
                r.corrupt.push(Problem {
                    path: p.clone(),
                    detail,
                });
            }
        }
    }
}

/// Pool files cairn has no record of: retained, pending or unexpected.
fn unexpected_in_pool(
    paths: &MirrorPaths,
    state: &MirrorState,
    r: &mut VerifyReport,
) -> Result<()> {
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
    })
}

/// What hashing a file found: good (the bytes hashed for it: 0 when its
/// inode was hashed for another name), missing, or not what was expected.
enum Found {
    Good(u64),
    Missing,
    Bad(String),
}

/// Hashes files on `jobs` threads, largest first, each inode once (an
/// index's by-hash name is a hard link to it): what each one's hash says,
/// in order. A name shares another's hash only if, once hashing is done,
/// it still names the very file that was read for it (kept open until
/// then, so that no other file can have its inode); otherwise it is
/// hashed on its own. Only regular files are read, never past the size
/// expected of them. `stop` ends the work early (what is left is not
/// judged).
fn hash_files(
    files: &[Job],
    jobs: usize,
    progress: Option<&Progress>,
    stop: &AtomicBool,
) -> Vec<Found> {
    hash_files_reading(files, jobs, progress, stop, &BTreeSet::new(), |_| ()).0
}

/// `hash_files`, and for the files `keep` names (by their place in
/// `files`) that were found good, what `read` makes of the very bytes
/// hashed: read in the hashing job once they hashed right, never read
/// from the file again, and let go of then (one such file in memory per
/// job). Each of those is read under its own name, never past its own
/// size: a twin that expects more of the file is read on its own.
fn hash_files_reading<T: Send>(
    files: &[Job],
    jobs: usize,
    progress: Option<&Progress>,
    stop: &AtomicBool,
    keep: &BTreeSet<usize>,
    read: impl Fn(&[u8]) -> T + Sync,
) -> (Vec<Found>, HashMap<usize, T>) {
    let id = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    // One name read per inode (a file that cannot be looked at is read on
    // its own: opening it says why); read up to the largest size any of
    // its names expects.
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    let mut reps: Vec<usize> = Vec::new();
    let mut rep = vec![0usize; files.len()];
    let mut limit: HashMap<usize, u64> = HashMap::new();
    let mut twinned: BTreeSet<usize> = BTreeSet::new();
    for (i, (_, file, size, _)) in files.iter().enumerate() {
        let k = id(file);
        let earlier = k.and_then(|k| first.get(&k).copied()).filter(|&r| {
            // A kept file is its own; no twin raises its limit.
            let greedy = keep.contains(&r) && *size > files[r].2;
            !keep.contains(&i) && !greedy
        });
        rep[i] = match earlier {
            Some(r) => {
                twinned.insert(r);
                r
            }
            None => {
                if let Some(k) = k {
                    first.entry(k).or_insert(i);
                }
                reps.push(i);
                i
            }
        };
        let l = limit.entry(rep[i]).or_insert(0);
        *l = (*l).max(*size);
    }
    reps.sort_by_key(|&i| std::cmp::Reverse(files[i].2));
    let hashed = parallel::map(&reps, jobs, |&i| {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let (_, path, size, sha) = &files[i];
        let (mut res, made) = if keep.contains(&i) {
            match sha256_regular_file_kept(path, limit[&i]) {
                Ok((h, b)) => {
                    let right = h.whole && h.size == *size && h.sha256 == *sha;
                    (Ok(h), right.then(|| read(&b)))
                }
                Err(e) => (Err(e), None),
            }
        } else {
            (sha256_regular_file(path, limit[&i]), None)
        };
        if let Ok(h) = &mut res
            && !twinned.contains(&i)
        {
            h.file = None;
        }
        if let Some(p) = progress {
            p.bytes.fetch_add(*size, Ordering::Relaxed);
            p.file_done();
        }
        Some((res, made))
    });
    let mut result: HashMap<usize, Option<Hashed>> = HashMap::new();
    let mut made: HashMap<usize, T> = HashMap::new();
    for (i, h) in reps.into_iter().zip(hashed) {
        let h = h.map(|(res, m)| {
            made.extend(m.map(|m| (i, m)));
            res
        });
        result.insert(i, h);
    }
    let mut counted = BTreeSet::new();
    let mut judge = |got: &Hashed, size: u64, sha: &str| match got {
        Ok(h) if !h.whole => Found::Bad(format!("larger than the {size} bytes expected")),
        Ok(h) if h.size != size => Found::Bad(format!("size {}, expected {size}", h.size)),
        Ok(h) if h.sha256 != sha => Found::Bad(format!("sha256 {}, expected {sha}", h.sha256)),
        Ok(h) => Found::Good(if counted.insert(h.id) { h.size } else { 0 }),
        Err(e) if not_found(e) => Found::Missing,
        Err(e) => Found::Bad(format!("{e:#}")),
    };
    let found: Vec<Found> = (0..files.len())
        .map(|i| {
            let (_, file, size, sha) = &files[i];
            match result.get(&rep[i]) {
                Some(Some(got)) if rep[i] == i => judge(got, *size, sha),
                // (The file read is still open: its inode is its own.)
                Some(Some(got @ Ok(h))) if h.file.is_some() && id(file) == Some(h.id) => {
                    judge(got, *size, sha)
                }
                // Another file under this name by now: read on its own.
                Some(Some(_)) if !stop.load(Ordering::Relaxed) => {
                    judge(&sha256_regular_file(file, *size), *size, sha)
                }
                _ => Found::Bad("not hashed (verification stopped)".into()),
            }
        })
        .collect();
    made.retain(|i, _| matches!(found[*i], Found::Good(_)));
    (found, made)
}

/// An error that says the file is not there.
fn not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::hash::sha256_hex;

    fn job(dir: &Path, name: &str, content: &[u8]) -> (String, PathBuf, u64, String) {
        (
            name.into(),
            dir.join(name),
            content.len() as u64,
            sha256_hex(content),
        )
    }

    fn hash(files: &[(String, PathBuf, u64, String)], stop: bool) -> Vec<Found> {
        hash_files(files, 2, None, &AtomicBool::new(stop))
    }

    fn good(f: &Found) -> Option<u64> {
        match f {
            Found::Good(n) => Some(*n),
            _ => None,
        }
    }

    /// A by-hash name hard-linked to its index is read once (its bytes
    /// counted once); two equal files that are not links are read each.
    #[test]
    fn a_hard_link_is_read_once_a_copy_twice() {
        let d = tempfile::tempdir().unwrap();
        let body = vec![7u8; 300_000];
        fs::write(d.path().join("Packages"), &body).unwrap();
        std::fs::hard_link(d.path().join("Packages"), d.path().join("by-hash")).unwrap();
        fs::write(d.path().join("copy"), &body).unwrap();
        let files = [
            job(d.path(), "Packages", &body),
            job(d.path(), "by-hash", &body),
            job(d.path(), "copy", &body),
        ];
        let found: Vec<Option<u64>> = hash(&files, false).iter().map(good).collect();
        let n = body.len() as u64;
        assert_eq!(found.iter().flatten().sum::<u64>(), 2 * n, "{found:?}");
        assert!(found.iter().all(|f| f.is_some()), "{found:?}");
        assert_eq!(found[2], Some(n));
    }

    /// A changed file shared by two names is corrupt under both; a file
    /// that is not there is missing; a wrong size is named.
    #[test]
    fn a_changed_linked_file_is_corrupt_under_every_name() {
        let d = tempfile::tempdir().unwrap();
        let body = b"the signed bytes".to_vec();
        fs::write(d.path().join("Packages"), b"other bytes here").unwrap();
        std::fs::hard_link(d.path().join("Packages"), d.path().join("by-hash")).unwrap();
        fs::write(d.path().join("short"), b"the signed").unwrap();
        let files = [
            job(d.path(), "Packages", &body),
            job(d.path(), "by-hash", &body),
            job(d.path(), "gone", &body),
            job(d.path(), "short", &body),
        ];
        let found = hash(&files, false);
        for f in &found[..2] {
            assert!(matches!(f, Found::Bad(d) if d.starts_with("sha256 ")));
        }
        assert!(matches!(found[2], Found::Missing));
        assert!(matches!(&found[3], Found::Bad(d) if d.starts_with("size 10, expected 16")));
    }

    /// A FIFO or an endless device in a file's place is refused at once,
    /// never waited on or read without end.
    #[test]
    fn a_fifo_or_a_device_in_a_files_place_is_refused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero")).unwrap();
        let found = hash(
            &[job(d.path(), "fifo", b"x"), job(d.path(), "zero", b"x")],
            false,
        );
        for f in &found {
            assert!(matches!(f, Found::Bad(d) if d.contains("not a regular file")));
        }
    }

    /// A Packages index is read for its entries only from the bytes that
    /// hashed right: as they were hashed, never read again (the file may
    /// change after it was hashed), under its own name even when a
    /// by-hash twin comes first, and never past its own signed size even
    /// when a twin expects more of the file; an index that does not read
    /// is corrupt.
    #[test]
    fn an_index_read_must_be_the_signed_bytes() {
        let d = tempfile::tempdir().unwrap();
        let h = "a".repeat(64);
        let text = format!(
            "Package: a\nVersion: 1\nArchitecture: all\nFilename: pool/a.deb\nSize: 1\nSHA256: {h}\n"
        );
        fs::write(d.path().join("Packages"), &text).unwrap();
        std::fs::hard_link(d.path().join("Packages"), d.path().join("by-hash")).unwrap();
        fs::write(
            d.path().join("Grown"),
            format!("{text}{}", "x".repeat(1000)),
        )
        .unwrap();
        std::fs::hard_link(d.path().join("Grown"), d.path().join("by-hash2")).unwrap();
        let signed = job(d.path(), "Packages", text.as_bytes());
        let twin = job(d.path(), "by-hash", text.as_bytes());
        let mut wrong = signed.clone();
        wrong.3 = "b".repeat(64);
        // A grown index, and a twin that claims it is huge: the kept read
        // stays within the index's own signed size (the twin is read on
        // its own, to its limit).
        let grown = job(d.path(), "Grown", text.as_bytes());
        let mut greedy = job(d.path(), "by-hash2", text.as_bytes());
        greedy.2 = 1 << 40;
        let stop = AtomicBool::new(false);
        let keep: BTreeSet<usize> = [1, 2, 3].into();
        let seen = std::sync::Mutex::new(Vec::new());
        let files = [twin, signed, wrong, grown, greedy];
        let (found, read) = hash_files_reading(&files, 2, None, &stop, &keep, |b| {
            seen.lock().unwrap().push(b.len());
            b.to_vec()
        });
        assert!(
            found[..2].iter().all(|f| good(f).is_some()),
            "{:?}",
            found.iter().map(good).collect::<Vec<_>>()
        );
        assert!(matches!(&found[2], Found::Bad(d) if d.starts_with("sha256 ")));
        let n = text.len();
        assert!(
            matches!(&found[3], Found::Bad(d) if *d == format!("larger than the {n} bytes expected")),
            "{:?}",
            good(&found[3])
        );
        assert!(matches!(&found[4], Found::Bad(d) if d.starts_with("size ")));
        assert_eq!(read.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(read[&1], text.as_bytes());
        assert_eq!(
            *seen.lock().unwrap(),
            [text.len()],
            "only bytes that hashed right are read"
        );
        let wanted: BTreeMap<String, super::super::state::PoolEntry> = [(
            "pool/a.deb".to_string(),
            super::super::state::PoolEntry {
                size: 1,
                sha256: h.clone(),
                mtime_ns: 0,
            },
        )]
        .into();
        let mut r = VerifyReport::empty("t", Path::new(""));
        let entries = pool_entries(&read[&1], &wanted);
        let listed = read_indices(vec![("P".into(), entries)], &mut r);
        assert_eq!(listed["pool/a.deb"], (1, h.clone()));
        assert!(r.corrupt.is_empty());
        let torn = text.replace("Size: 1\n", "");
        let listed = read_indices(
            vec![("P".into(), pool_entries(torn.as_bytes(), &wanted))],
            &mut r,
        );
        assert!(listed.is_empty());
        assert!(
            r.corrupt[0].detail.contains("unreadable"),
            "{:?}",
            r.corrupt
        );
    }

    /// Stopped early (the signed side failed): nothing is judged good.
    #[test]
    fn a_stopped_hash_judges_nothing_good() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"a").unwrap();
        let found = hash(&[job(d.path(), "a", b"a")], true);
        assert!(matches!(&found[0], Found::Bad(d) if d.contains("stopped")));
    }
}
