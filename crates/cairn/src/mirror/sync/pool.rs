//! Steps 4 and 5 of a sync: the pool files the selection needs, fetched
//! or found intact, each checked against the verified Packages while it
//! streams; afterwards, what is no longer selected goes.

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use cairn_debian::Package;

use super::{Repo, SyncOptions};
use crate::fsutil::safe_relative;
use crate::mirror::fetch::{Counter, Expect, fetch_verified, join_url, partial_for};
use crate::mirror::state::{MirrorPaths, PoolEntry, mtime_ns, walk_files};
use crate::parallel;
use crate::progress::Progress;
use crate::trust::hash::sha256_file;

/// Pool path → (size, SHA-256), per repository.
pub(super) type Wanted = Vec<BTreeMap<String, (u64, String)>>;

/// The pool files of the chosen packages, per repository. A path outside
/// pool/ or one listed twice with different contents is an error.
pub(super) fn wanted(
    repos: &[Repo],
    packages: &[Package],
    origin: &[usize],
    chosen: &[usize],
) -> Result<Wanted> {
    let mut wanted: Wanted = vec![BTreeMap::new(); repos.len()];
    for &i in chosen {
        let p = &packages[i];
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
    Ok(wanted)
}

/// What step 5 leaves: each repository's pool as recorded, and per
/// repository (files fetched, bytes fetched, files re-hashed).
pub(super) struct Pool {
    pub entries: Vec<BTreeMap<String, PoolEntry>>,
    pub fetched: Vec<(usize, u64, usize)>,
}

/// Fetches what is missing or wrong, verifying while it streams, largest
/// first, `opts.jobs` at a time. New pool files are recorded as pending
/// first, so `verify` knows them for what they are if this run is killed
/// before the switch. Any failure fails the whole (nothing is published).
pub(super) fn fetch(
    repos: &[Repo],
    wanted: &Wanted,
    opts: &SyncOptions,
    counter: &Counter,
) -> Result<Pool> {
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
        let r = ensure_pool_file(repo, path, *size, sha, opts, counter);
        bytes.fetch_add(*size, std::sync::atomic::Ordering::Relaxed);
        progress.file_done();
        r
    });
    progress.finish();
    let mut failures = Vec::new();
    let mut refused = false;
    let mut pool = Pool {
        entries: vec![BTreeMap::new(); repos.len()],
        fetched: vec![(0usize, 0u64, 0usize); repos.len()],
    };
    for ((ri, path, _, _), r) in items.iter().zip(results) {
        match r {
            Ok((entry, how)) => {
                match how {
                    Got::Fetched(n) => {
                        pool.fetched[*ri].0 += 1;
                        pool.fetched[*ri].1 += n;
                    }
                    Got::Hashed => pool.fetched[*ri].2 += 1,
                    Got::Known => {}
                }
                pool.entries[*ri].insert(path.clone(), entry);
            }
            Err(e) => {
                refused |= crate::trust::is_verification_failure(&e);
                failures.push(format!("{path}: {e:#}"))
            }
        }
    }
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(10);
        let msg = format!(
            "{n} pool file(s) could not be fetched and verified; the published mirror is unchanged (a re-run resumes):\n  {}",
            failures.join("\n  ")
        );
        if refused {
            return Err(crate::trust::VerificationFailed::new(msg).into());
        }
        bail!("{msg}");
    }
    Ok(pool)
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
    let entry = |m: &std::fs::Metadata| PoolEntry {
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
        &partial_for(&repo.paths.work, sha, path),
        &dest,
        &expect,
        &opts.retry,
        counter,
    )?;
    let m = fs::metadata(&dest).with_context(|| format!("reading {}", dest.display()))?;
    Ok((entry(&m), Got::Fetched(n)))
}

/// Removes pool files no longer selected (or lists them, with `keep`).
pub(super) fn remove_obsolete(
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
pub(super) fn prune_partials(
    paths: &MirrorPaths,
    wanted: &BTreeMap<String, (u64, String)>,
) -> Result<()> {
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
