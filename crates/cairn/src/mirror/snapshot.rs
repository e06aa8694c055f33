//! Mirror snapshots: a named, immutable generation of the store's mirrors —
//! their signed indices and every pool file those select — that builds can
//! pin (`cairn build --snapshot NAME`), like aptly's snapshots.
//!
//! A snapshot is laid out as a store with only mirrors in it, so a build
//! reads it exactly as it reads the live mirrors:
//!
//! ```text
//! <store>/snapshots/<name>/snapshot.json          what it holds (below)
//! <store>/snapshots/<name>/mirror/<m>/dists -> .dists/<generation>
//! <store>/snapshots/<name>/mirror/<m>/.dists/<generation>/…   hard links
//! <store>/snapshots/<name>/mirror/<m>/pool/…                  hard links
//! <store>/snapshots/<name>/mirror/.<m>.work/state.json        the mirror's state then
//! ```
//!
//! Every file is a hard link to the live mirror's: a snapshot costs inodes,
//! not bytes, and a pool file the live mirror drops (a newer version came)
//! lives on as long as a snapshot links it. Nothing ever writes into a
//! snapshot after it is made: it is assembled under a temporary name and
//! renamed into place whole. apt checks a snapshot as it checks the live
//! mirror (the archive's signatures, every index and pool hash), so a
//! changed file is refused at build time; only `Valid-Until` is not held
//! against it (a pinned past is the point).

use fs_err as fs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::state::{MirrorPaths, MirrorState, list_mirrors, lock_mirror, mtime_ns};

pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// One suite's signed Release file as a build used it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ReleaseRecord {
    /// SHA-256 of the signed Release file (InRelease, or Release).
    pub release_sha256: String,
    /// Its `Date`, seconds since the epoch.
    pub date: Option<i64>,
}

/// Mirror name → suite → its Release.
pub type Releases = BTreeMap<String, BTreeMap<String, ReleaseRecord>>;

/// What a snapshot holds (`snapshot.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    pub schema_version: u32,
    pub name: String,
    pub created_at: i64,
    pub releases: Releases,
    /// Mirror name → pool files and bytes linked.
    pub pool_files: BTreeMap<String, usize>,
    pub pool_bytes: BTreeMap<String, u64>,
    /// Where it is (filled in when read).
    #[serde(skip_deserializing)]
    pub path: PathBuf,
}

pub fn snapshots_dir(store: &Path) -> PathBuf {
    store.join("snapshots")
}

/// The Release records of a set of mirrors' states (the suites each
/// state's repository lists).
pub fn releases_of<'a>(states: impl IntoIterator<Item = &'a MirrorState>) -> Releases {
    states
        .into_iter()
        .map(|s| {
            (
                s.repo.name.clone(),
                s.suites
                    .iter()
                    .filter(|(suite, _)| s.repo.suites.contains(suite))
                    .map(|(suite, st)| {
                        (
                            suite.clone(),
                            ReleaseRecord {
                                release_sha256: st.release_sha256.clone(),
                                date: st.date,
                            },
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The Release records of published mirrors as their files are now: each
/// suite's signed Release file (InRelease, else Release) hashed. Where the
/// mirror's state records another hash, an error: the file is not the one
/// cairn verified.
pub fn releases_now(mirrors: &[(MirrorPaths, MirrorState)]) -> Result<Releases> {
    let mut out = Releases::new();
    for (paths, state) in mirrors {
        let gen_dir = paths
            .current_generation()
            .with_context(|| format!("mirror {} has no published generation", paths.name))?;
        let recorded = releases_of([state]);
        let mut suites = BTreeMap::new();
        for (suite, rec) in recorded.get(&state.repo.name).into_iter().flatten() {
            let dir = gen_dir.join(suite);
            let file = ["InRelease", "Release"]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.is_file())
                .with_context(|| format!("{}: no InRelease or Release", dir.display()))?;
            let (_, hash) = crate::trust::hash::sha256_file(&file)?;
            if hash != rec.release_sha256 {
                return Err(anyhow::Error::new(crate::trust::VerificationFailed::new(format!(
                    "{}: SHA-256 {hash}, but the mirror verified {}",
                    file.display(),
                    rec.release_sha256
                ))))
                .context(format!(
                    "mirror {}: its Release file changed since it was verified: run `cairn mirror verify {}`",
                    paths.name, paths.name
                ));
            }
            suites.insert(suite.clone(), rec.clone());
        }
        out.insert(state.repo.name.clone(), suites);
    }
    Ok(out)
}

/// The differences between two sets of Release records, as lines
/// (`debian-security/bookworm-security: gone`).
pub fn release_changes(recorded: &Releases, now: &Releases) -> Vec<String> {
    let mut out = Vec::new();
    for (m, suites) in recorded {
        for (s, r) in suites {
            match now.get(m).and_then(|x| x.get(s)) {
                None => out.push(format!("{m}/{s}: gone")),
                Some(n) if n.release_sha256 != r.release_sha256 => out.push(format!(
                    "{m}/{s}: Release {} is now {}",
                    &r.release_sha256[..16.min(r.release_sha256.len())],
                    &n.release_sha256[..16.min(n.release_sha256.len())]
                )),
                Some(_) => {}
            }
        }
    }
    for (m, suites) in now {
        for s in suites.keys() {
            if recorded.get(m).and_then(|x| x.get(s)).is_none() {
                out.push(format!("{m}/{s}: not in the record"));
            }
        }
    }
    out
}

/// A snapshot held for reading (a build from it): `delete` waits for no
/// one and refuses while any is held.
pub struct InUse(#[allow(dead_code)] std::fs::File);

fn lock_file(store: &Path, name: &str) -> Result<std::fs::File> {
    let p = snapshots_dir(store).join(format!(".{name}.lock"));
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .map(|f| f.into_parts().0)
        .with_context(|| format!("opening {}", p.display()))
}

/// Holds snapshot `name` for reading until dropped (shared: builds from
/// one snapshot run side by side).
pub fn hold(store: &Path, name: &str) -> Result<InUse> {
    let f = lock_file(store, name)?;
    f.lock_shared()
        .with_context(|| format!("locking snapshot {name}"))?;
    Ok(InUse(f))
}

/// The snapshots directory, made if needed; a symlink or anything but a
/// directory is refused.
fn snapshots_base(store: &Path) -> Result<PathBuf> {
    let base = snapshots_dir(store);
    match fs::symlink_metadata(&base) {
        Ok(m) if m.file_type().is_dir() => Ok(base),
        Ok(_) => bail!(
            "{} is not a directory (a symlink?): not used",
            base.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&base)?;
            Ok(base)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", base.display())),
    }
}

/// The directory of snapshot `name`, checked: a plain name, made by
/// `create` (its `snapshot.json` is there).
pub fn open(store: &Path, name: &str) -> Result<Snapshot> {
    crate::names::check("snapshot name", name)?;
    let dir = snapshots_base(store)?.join(name);
    if fs::symlink_metadata(&dir).is_ok_and(|m| !m.file_type().is_dir()) {
        bail!(
            "{} is not a directory (a symlink?): not read",
            dir.display()
        );
    }
    let file = dir.join(SNAPSHOT_FILE);
    let data = match fs::read(&file) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let have = list(store)
                .map(|v| v.into_iter().map(|s| s.name).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            bail!(
                "no snapshot {name} in {} (have: {}): make it with `cairn mirror snapshot create {name}`",
                snapshots_dir(store).display(),
                if have.is_empty() { "none" } else { &have }
            );
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut s: Snapshot =
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", file.display()))?;
    if s.name != name {
        bail!(
            "{} names snapshot {:?}, not {name:?}: not read",
            file.display(),
            s.name
        );
    }
    s.path = dir;
    Ok(s)
}

/// Every snapshot, by name. An unreadable one is an error, never skipped.
pub fn list(store: &Path) -> Result<Vec<Snapshot>> {
    let dir = snapshots_dir(store);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for e in rd {
        let n = e?.file_name().to_string_lossy().into_owned();
        if !n.starts_with('.') {
            names.push(n);
        }
    }
    names.sort();
    names.iter().map(|n| open(store, n)).collect()
}

/// Makes snapshot `name` of the named mirrors (every mirror when empty),
/// each as it is published now. Each mirror is locked while it is linked
/// (a sync cannot switch it half-way); a pool file whose size or time is
/// not what the last verification saw is refused (run `cairn mirror
/// verify`), never captured.
pub fn create(store: &Path, name: &str, mirrors: &[String]) -> Result<Snapshot> {
    crate::names::check("snapshot name", name)?;
    let base = snapshots_base(store)?;
    remove_killed(&base)?;
    let dest = base.join(name);
    if fs::symlink_metadata(&dest).is_ok() {
        bail!(
            "snapshot {name} exists ({}): snapshots are never changed; delete it first or choose another name",
            dest.display()
        );
    }
    let names = if mirrors.is_empty() {
        list_mirrors(store)?
    } else {
        mirrors.to_vec()
    };
    if names.is_empty() {
        bail!(
            "no mirrors in {}: run `cairn mirror sync` first",
            store.join("mirror").display()
        );
    }
    let tmp = base.join(format!(".{name}.tmp-{}", std::process::id()));
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_dir_all(&tmp)?;
    }
    struct Cleanup(PathBuf, bool);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if !self.1 {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
    let mut guard = Cleanup(tmp.clone(), false);
    let mut states = Vec::new();
    let mut pool_files = BTreeMap::new();
    let mut pool_bytes = BTreeMap::new();
    for m in &names {
        let (state, bytes) = snapshot_mirror(store, &tmp, m)?;
        pool_files.insert(m.clone(), state.pool.len());
        pool_bytes.insert(m.clone(), bytes);
        states.push(state);
    }
    let snap = Snapshot {
        schema_version: 1,
        name: name.into(),
        created_at: crate::unix_now(),
        releases: releases_of(&states),
        pool_files,
        pool_bytes,
        path: dest.clone(),
    };
    fs::write(tmp.join(SNAPSHOT_FILE), serde_json::to_vec_pretty(&snap)?)?;
    crate::fsutil::sync_dir(&tmp)?;
    fs::rename(&tmp, &dest)?;
    guard.1 = true;
    crate::fsutil::sync_dir(&base)?;
    Ok(snap)
}

/// Removes what a killed create or delete left (its process is gone).
fn remove_killed(base: &Path) -> Result<()> {
    // What a killed create or delete left (its process is gone).
    for e in fs::read_dir(base)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let pid = n
            .rsplit_once(".tmp-")
            .or_else(|| n.rsplit_once(".deleted-"))
            .map(|(_, p)| p);
        if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok())
            && n.starts_with('.')
            && !Path::new("/proc").join(pid).exists()
        {
            fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Mirror `m` of the store, linked into the snapshot being made in `tmp`
/// as it was last verified: its state and its pool's bytes.
fn snapshot_mirror(store: &Path, tmp: &Path, m: &str) -> Result<(MirrorState, u64)> {
    crate::names::check("mirror name", m)?;
    let paths = MirrorPaths::new(store, m);
    let _lock = lock_mirror(&paths, false)?;
    let mut state = MirrorState::load(&paths)?
        .with_context(|| format!("mirror {m} has not been synced into {}", store.display()))?;
    let gen_dir = paths
        .current_generation()
        .with_context(|| format!("mirror {m} has no published generation"))?;
    if gen_dir.file_name().and_then(|n| n.to_str()) != Some(state.generation.as_str()) {
        bail!(
            "mirror {m}: the published generation ({}) is not the one its state records ({}): run `cairn mirror verify {m}`",
            gen_dir.display(),
            state.generation
        );
    }
    // The Release files are the ones the mirror verified.
    releases_now(&[(paths.clone(), state.clone())])?;
    let to = MirrorPaths::new(tmp, m);
    let gen_to = to.generations().join(&state.generation);
    link_tree(&gen_dir, &gen_to)?;
    std::os::unix::fs::symlink(Path::new(".dists").join(&state.generation), to.dists())?;
    let bytes = link_pool(&paths, &to, m, &state)?;
    // The snapshot's own state: what it holds, nothing pending.
    state.retained.clear();
    state.pending.clear();
    fs::create_dir_all(&to.work)?;
    state.save(&to)?;
    Ok((state, bytes))
}

/// Hard-links the mirror's pool files into the snapshot's, each checked
/// to be as the mirror's state last verified it; their bytes.
fn link_pool(paths: &MirrorPaths, to: &MirrorPaths, m: &str, state: &MirrorState) -> Result<u64> {
    let mut bytes = 0;
    for (rel, entry) in &state.pool {
        let rel_path = crate::fsutil::safe_relative(rel, "pool")?;
        let src = paths.root.join(&rel_path);
        let meta = match fs::symlink_metadata(&src) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "mirror {m}: {} is missing: run `cairn mirror verify --repair {m}` before taking a snapshot",
                src.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("mirror {m}: pool file {rel}"));
            }
        };
        if !meta.file_type().is_file()
            || meta.len() != entry.size
            || mtime_ns(&meta) != entry.mtime_ns
        {
            bail!(
                "mirror {m}: {} changed since it was last verified: run `cairn mirror verify {m}` before taking a snapshot",
                src.display()
            );
        }
        let t = to.root.join(&rel_path);
        fs::create_dir_all(t.parent().unwrap_or(&to.root))?;
        fs::hard_link(&src, &t).with_context(|| {
            format!(
                "linking {} into the snapshot (a snapshot must be on the store's file system)",
                src.display()
            )
        })?;
        bytes += entry.size;
    }
    Ok(bytes)
}

/// Hard-links every file below `from` into `to` (made), refusing anything
/// but directories and regular files.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        let dest = to.join(e.file_name());
        if t.is_dir() {
            link_tree(&e.path(), &dest)?;
        } else if t.is_file() {
            fs::hard_link(e.path(), &dest)?;
        } else {
            bail!(
                "{}: neither a file nor a directory in a mirror generation: not captured",
                e.path().display()
            );
        }
    }
    Ok(())
}

/// Removes snapshot `name`. Pool files the live mirror (or another
/// snapshot) still links stay; the others go with it. Refused while images
/// in the store record it as their input (`users`, asked under the
/// snapshot's lock: their `image rebuild --check` needs it) unless `force`.
pub fn delete(
    store: &Path,
    name: &str,
    force: bool,
    users: impl FnOnce() -> Result<Vec<String>>,
) -> Result<Snapshot> {
    let snap = open(store, name)?;
    let lock = lock_file(store, name)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "snapshot {name} is in use (a build or upgrade reads it): try again when it is done"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking snapshot {name}"));
        }
    }
    let users = users()?;
    if !users.is_empty() && !force {
        bail!(
            "snapshot {name} is the recorded input of {} image(s) ({}): `cairn image rebuild --check` needs it; pass --force to delete it anyway",
            users.len(),
            users.join(", ")
        );
    }
    let tmp = snapshots_dir(store).join(format!(".{name}.deleted-{}", std::process::id()));
    fs::rename(&snap.path, &tmp)?;
    fs::remove_dir_all(&tmp)?;
    let _ = fs::remove_file(snapshots_dir(store).join(format!(".{name}.lock")));
    Ok(snap)
}
