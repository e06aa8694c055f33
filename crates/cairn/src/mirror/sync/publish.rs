//! Step 6 of a sync: the new generation finished (signed Release files,
//! by-hash links, fsync) and switched in with one rename, then what is
//! obsolete removed and the state recorded.

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::pool::{Pool, Wanted, prune_partials, remove_obsolete};
use super::{Repo, RepoReport, SuiteReport, SyncOptions};
use crate::fsutil::sync_dir;
use crate::mirror::config::MirrorConfig;
use crate::mirror::state::{MirrorPaths, MirrorState, SuiteState, walk_files};
use crate::trust::openpgp::Keyring;

/// What the sync is publishing, for every repository.
pub(super) struct Publication<'a> {
    pub cfg: &'a MirrorConfig,
    pub generation: &'a str,
    pub selection_key: &'a str,
    pub now: i64,
    pub wanted: &'a Wanted,
}

/// Publishes every repository and records its state; returns the reports.
pub(super) fn publish_all(
    repos: &[Repo],
    p: &Publication,
    mut pool: Pool,
    mut suite_reports: Vec<Vec<SuiteReport>>,
    opts: &SyncOptions,
) -> Result<Vec<RepoReport>> {
    let mut repo_reports = Vec::new();
    for (ri, repo) in repos.iter().enumerate() {
        let gen_tmp = repo
            .paths
            .generations()
            .join(format!("{}.tmp", p.generation));
        publish(repo, &gen_tmp, p.generation)?;
        let keep: BTreeSet<&String> = p.wanted[ri].keys().collect();
        let (removed, retained) = remove_obsolete(&repo.paths.root, &keep, opts.keep_obsolete)?;
        prune_partials(&repo.paths, &p.wanted[ri])?;
        let mut suites = BTreeMap::new();
        for (rel, report) in repo.releases.iter().zip(&suite_reports[ri]) {
            suites.insert(
                rel.suite.clone(),
                SuiteState {
                    release_sha256: rel.sha256.clone(),
                    date: rel.release.date,
                    signers: rel.signers.clone(),
                    indices: index_list(&repo.paths, p.generation, &rel.suite)?,
                    left_out: report.left_out.clone(),
                },
            );
        }
        let state = MirrorState {
            schema_version: 1,
            repo: repo.spec.clone(),
            selection: p.cfg.selection.clone(),
            selection_key: p.selection_key.to_string(),
            generation: p.generation.to_string(),
            suites,
            pool: std::mem::take(&mut pool.entries[ri]),
            retained,
            pending: BTreeSet::new(),
            synced_at: p.now,
        };
        state.save(&repo.paths)?;
        let _ = fs::remove_dir_all(repo.paths.tmp());
        let fetched = pool.fetched[ri];
        repo_reports.push(RepoReport {
            name: repo.spec.name.clone(),
            url: repo.spec.url.to_string(),
            path: repo.paths.root.clone(),
            generation: p.generation.to_string(),
            suites: std::mem::take(&mut suite_reports[ri]),
            pool_files: p.wanted[ri].len(),
            pool_bytes: p.wanted[ri].values().map(|v| v.0).sum(),
            fetched_files: fetched.0,
            fetched_bytes: fetched.1,
            hashed_files: fetched.2,
            removed_obsolete: removed,
        });
    }
    Ok(repo_reports)
}

/// Removes generation directories a killed run left half-built.
pub(super) fn clean_stale_generations(paths: &MirrorPaths) -> Result<()> {
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
                let keyring = Keyring::new(repo.spec.keyring.clone());
                // Only a previous Release that still verifies lends its links.
                let prev_rel = match crate::mirror::release::read_published(
                    &prev_suite,
                    &keyring,
                    &repo.paths.tmp(),
                ) {
                    Ok(r) => r.map(|(r, _)| r),
                    Err(e) => {
                        tracing::warn!("{e:#}: its indices get no by-hash links");
                        None
                    }
                };
                if let Some(prev_rel) = prev_rel {
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
