//! A mirror's on-disk layout, its lock, and the state cairn keeps beside it.
//!
//! ```text
//! <store>/mirror/<name>/            published: what apt clients read
//!     dists -> .dists/<generation>  switched atomically by rename
//!     .dists/<generation>/<suite>/  InRelease, Release, indices, by-hash/
//!     pool/                         package files, written before the switch
//! <store>/mirror/.<name>.work/      cairn's own: never read by clients
//!     lock  state.json  partial/<sha256>  tmp/
//! ```

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::config::{RepoSpec, Selection};
use crate::fsutil::write_atomic;

#[derive(Debug, Clone)]
pub struct MirrorPaths {
    pub name: String,
    pub root: PathBuf,
    pub work: PathBuf,
}

impl MirrorPaths {
    pub fn new(store: &Path, name: &str) -> MirrorPaths {
        let base = store.join("mirror");
        MirrorPaths {
            name: name.into(),
            root: base.join(name),
            work: base.join(format!(".{name}.work")),
        }
    }
    pub fn dists(&self) -> PathBuf {
        self.root.join("dists")
    }
    pub fn generations(&self) -> PathBuf {
        self.root.join(".dists")
    }
    pub fn state_file(&self) -> PathBuf {
        self.work.join("state.json")
    }
    pub fn partial(&self) -> PathBuf {
        self.work.join("partial")
    }
    pub fn tmp(&self) -> PathBuf {
        self.work.join("tmp")
    }
    /// The published generation's directory, if any.
    pub fn current_generation(&self) -> Option<PathBuf> {
        let target = fs::read_link(self.dists()).ok()?;
        Some(self.root.join(target))
    }
}

/// The exclusive lock on one mirror, held for a whole sync or repair.
pub fn lock_mirror(paths: &MirrorPaths, wait: bool) -> Result<crate::fsutil::Lock> {
    crate::fsutil::Lock::acquire(
        &paths.work.join("lock"),
        &format!("mirror {}", paths.name),
        wait,
        ", or pass --wait",
    )
}

/// A pool file as last verified: path → size, hash and the mtime it had then.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolEntry {
    pub size: u64,
    pub sha256: String,
    pub mtime_ns: i128,
}

/// A file the signed Release lists that a mirror does without, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeftOut {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct SuiteState {
    /// SHA-256 of the signed Release file as published (InRelease, or Release).
    pub release_sha256: String,
    pub date: Option<i64>,
    pub signers: Vec<String>,
    /// Index files mirrored, relative to the suite directory.
    pub indices: Vec<String>,
    /// What the signed Release lists that the mirror does without, and why.
    #[serde(default)]
    pub left_out: Vec<LeftOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MirrorState {
    pub schema_version: u32,
    pub repo: RepoSpec,
    pub selection: Selection,
    /// Hash of everything the pool list depends on; equal means the pool list is current.
    pub selection_key: String,
    pub generation: String,
    pub suites: BTreeMap<String, SuiteState>,
    pub pool: BTreeMap<String, PoolEntry>,
    /// Obsolete pool files left in place by `--keep-obsolete`.
    #[serde(default)]
    pub retained: BTreeSet<String>,
    /// Pool files being fetched for a generation not yet published (a sync
    /// in progress, or killed): not referenced yet, but not strays either.
    #[serde(default)]
    pub pending: BTreeSet<String>,
    pub synced_at: i64,
}

impl MirrorState {
    pub fn load(paths: &MirrorPaths) -> Result<Option<MirrorState>> {
        let p = paths.state_file();
        match fs::read(&p) {
            Ok(data) => match serde_json::from_slice(&data) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    tracing::warn!("ignoring unreadable state {}: {e}", p.display());
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn save(&self, paths: &MirrorPaths) -> Result<()> {
        let data = serde_json::to_vec(self)?;
        write_atomic(&paths.state_file(), &data)
    }
}

/// Modification time of a file in nanoseconds, for the "already verified" check.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// One-line apt sources for a published mirror, as its state describes it:
/// `file://` paths by default, or below `base_url` when a web server serves
/// the store's `mirror/` directory.
pub fn apt_source_lines(
    paths: &MirrorPaths,
    state: &MirrorState,
    base_url: Option<&str>,
) -> Vec<String> {
    let uri = match base_url {
        Some(b) => format!("{}/{}", b.trim_end_matches('/'), paths.name),
        None => format!("file://{}", paths.root.display()),
    };
    let keys: Vec<String> = state
        .repo
        .keyring
        .iter()
        .map(|k| k.display().to_string())
        .collect();
    state
        .repo
        .suites
        .iter()
        .map(|s| {
            format!(
                "deb [signed-by={}] {uri} {s} {}",
                keys.join(","),
                state.repo.components.join(" ")
            )
        })
        .collect()
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

/// Calls `f` with every file below `dir` (none when `dir` does not exist).
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
