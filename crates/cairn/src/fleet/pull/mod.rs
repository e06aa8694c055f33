//! `cairn pull`: a machine takes the newest image of its profile from the
//! published store — the signed index checked with the key inside the
//! running image (never older than one it saw, never expired), only the
//! files its boot disk lacks fetched (a delta layer shares its parent's),
//! each verified while it streams, resumable, staged beside the images and
//! renamed in whole — and makes it the default on trial through the GRUB
//! environment block. Nothing is signed on the machine: the menu's "found
//! now" loop offers every signed image on the disk, and boot counting
//! (cairn_trial, cairn_left, cairn_good) chooses among them.

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

mod disk;
mod plan;

use super::index::{self, INDEX_LIMIT, Index, IndexVersion, Seen};
use crate::boot::model::{BootPartition, IMAGES, ImageId};
use crate::fsutil::small_file;
use crate::mirror::fetch::{
    Counter, Expect, RetryPolicy, fetch_small, fetch_verified, partial_path, transport_for,
};
use crate::mirror::url::RepoUrl;
use crate::trust::hash::sha256_file;
use disk::{no_link, regular};

/// cairn's own directory on a boot partition (pull state, partial files).
pub const STATE_DIR: &str = "cairn";
const STATE_FILE: &str = "cairn/pull.json";
/// Larger is not a state file of cairn's.
const STATE_LIMIT: u64 = 1 << 20;

/// A boot partition to pull onto: its root, and how to make it writable
/// (a running system's medium is mounted read-only).
pub struct BootRoot<'a> {
    pub root: PathBuf,
    pub writable: Option<&'a crate::live::BootMedium>,
    /// The image this machine runs from it (`/images/P/V`), never removed.
    pub booted_dir: Vec<String>,
}

impl BootRoot<'_> {
    fn rw<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.writable {
            Some(m) => m.writable(f),
            None => f(),
        }
    }
}

pub struct PullOptions {
    pub profile: String,
    /// Base URLs of the published store, tried in order.
    pub urls: Vec<RepoUrl>,
    /// The public key images and indices must be signed by.
    pub key: PathBuf,
    /// This machine's place in staged rollouts.
    pub machine_id: String,
    /// The version running now: only newer ones are pulled.
    pub running: Option<String>,
    /// Images of the profile kept on the disk.
    pub keep: u32,
    pub jobs: usize,
    pub retry: RetryPolicy,
    pub now: i64,
    /// Check the index and plan, change nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing newer than what runs.
    UpToDate,
    /// A newer version exists but this machine is not in its rollout yet.
    HeldBack,
    /// The newest image is on the disk as the default on trial.
    Staged,
    /// It was already on the disk (staged before, or copied).
    AlreadyThere,
    /// `--dry-run`: what would be fetched.
    Planned,
    /// It is on the disk and used up its trial (or was refused at boot):
    /// not tried again; a newer version is.
    GaveUp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PullReport {
    pub schema_version: u32,
    pub profile: String,
    pub outcome: Outcome,
    /// The base URL whose index was taken.
    pub url: Option<String>,
    pub serial: u64,
    /// The newest version the index offers, and the one taken.
    pub newest: Option<String>,
    pub version: Option<String>,
    pub files_fetched: usize,
    pub bytes_fetched: u64,
    pub files_reused: usize,
    pub bytes_reused: u64,
    /// The menu entry now on trial.
    pub entry: Option<String>,
    pub tries: Option<u32>,
    /// Images removed (to make room, or beyond `keep`).
    pub removed: Vec<String>,
    /// URLs that were passed over, and why.
    pub passed_over: Vec<String>,
    pub at: i64,
    pub seconds: f64,
}

/// What a machine keeps on its boot partition between pulls.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PullState {
    pub schema_version: u32,
    /// The last index accepted, per profile (replay protection).
    pub seen: BTreeMap<String, Seen>,
    pub last: Option<PullReport>,
}

impl PullState {
    /// The state of the boot partition at `root`; none yet is an empty one.
    /// Whoever can write the partition wrote it: it is bounded and parsed
    /// strictly, and a damaged one is an error that names it (never
    /// silently forgotten: it holds the replay protection).
    pub fn load(root: &Path) -> Result<PullState> {
        let p = root.join(STATE_FILE);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PullState::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
            Ok(m) if !m.is_file() || m.len() > STATE_LIMIT => {
                bail!(
                    "{} is not a cairn pull state (remove it to start over)",
                    p.display()
                )
            }
            Ok(_) => {}
        }
        let data = fs::read(&p)?;
        let s: PullState = serde_json::from_slice(&data).with_context(|| {
            format!(
                "{}: damaged pull state (remove it to start over)",
                p.display()
            )
        })?;
        Ok(s)
    }

    fn save(&self, root: &Path) -> Result<()> {
        let dir = root.join(STATE_DIR);
        no_link(&dir)?;
        fs::create_dir_all(&dir)?;
        crate::fsutil::write_atomic(&root.join(STATE_FILE), &serde_json::to_vec_pretty(self)?)
    }
}

/// The newest index any of `urls` serves that passes every check, and the
/// URL it came from; the reasons the others were passed over.
fn fetch_index(
    o: &PullOptions,
    seen: Option<&Seen>,
    work: &Path,
) -> Result<(Index, Seen, RepoUrl, Vec<String>)> {
    let mut passed = Vec::new();
    let mut any_refused = false;
    let rel = index::index_rel(&o.profile);
    for url in &o.urls {
        let attempt = || -> Result<(Index, Seen)> {
            let t = transport_for(url, 1)?;
            let data = fetch_small(t.as_ref(), &url.join(&rel), INDEX_LIMIT, &o.retry)?;
            let sig_url = url.join(&format!("{rel}.sig"));
            let sig = match fetch_small(t.as_ref(), &sig_url, 1 << 16, &o.retry) {
                Ok(s) => s,
                // An index served without its signature is refused data
                // (exit code 3), as a bad signature is: a server that drops
                // signatures is not an outage.
                Err(crate::mirror::fetch::FetchError::NotFound { .. }) => {
                    return Err(crate::trust::VerificationFailed::new(format!(
                        "{sig_url}: the index is served without its signature (404)"
                    ))
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            index::check(&data, &sig, &o.key, &o.profile, seen, o.now, work)
        };
        match attempt() {
            Ok((i, s)) => return Ok((i, s, url.clone(), passed)),
            Err(e) => {
                tracing::warn!("{url}: {e:#}");
                any_refused |= crate::trust::is_verification_failure(&e);
                passed.push(format!("{url}: {e:#}"));
            }
        }
    }
    if o.urls.is_empty() {
        bail!("no URL to pull from (fleet.urls in the profile, or --url)");
    }
    let msg = format!(
        "no usable index of {} at any URL; nothing was changed:\n  {}",
        o.profile,
        passed.join("\n  ")
    );
    // A server answered with an index that was refused: tampering or a
    // replay (exit code 3), even when another server was also down.
    if any_refused {
        return Err(crate::trust::VerificationFailed::new(msg).into());
    }
    bail!("{msg}")
}

/// Files on the partition by SHA-256, from the (unsigned) SHA256SUMS of the
/// images there: candidates only, each checked by hash before it is used.
fn known_files(part: &BootPartition) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    // (What cannot be listed offers nothing: it is fetched, verified.)
    for id in part.images().unwrap_or_default() {
        let dir = part.image_dir(&id);
        let Some(sums) = small_file(&dir.join("SHA256SUMS"), 1 << 20)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            continue;
        };
        for l in sums.lines().take(10_000) {
            if let Some((h, n)) = l.split_once("  ")
                && crate::names::is_safe(n)
            {
                out.entry(h.to_string()).or_insert_with(|| dir.join(n));
            }
        }
    }
    out
}

/// Whether `p` is a regular file of `f`'s size and hash.
fn holds(p: &Path, f: &index::FileRef) -> bool {
    regular(p) && sha256_file(p).is_ok_and(|(n, h)| n == f.size && h == f.sha256)
}

/// What the disk holds of `target`, checked by hash: the files an earlier
/// pull fetched into cairn's own directory, and files of other images.
fn on_disk(
    part: &BootPartition,
    target: &IndexVersion,
    fetched_dir: &Path,
) -> (BTreeSet<String>, BTreeMap<String, PathBuf>) {
    let known = known_files(part);
    let mut fetched = BTreeSet::new();
    let mut present = BTreeMap::new();
    for f in target.files.values() {
        if holds(&fetched_dir.join(&f.sha256), f) {
            fetched.insert(f.sha256.clone());
        } else if let Some(p) = known.get(&f.sha256).filter(|p| holds(p, f)) {
            present.insert(f.sha256.clone(), p.clone());
        }
    }
    (fetched, present)
}

impl PullReport {
    /// A pull's report before it acts: what the index from `url` offers.
    fn new(o: &PullOptions, idx: &Index, url: &RepoUrl, passed_over: Vec<String>) -> PullReport {
        PullReport {
            schema_version: 1,
            profile: o.profile.clone(),
            outcome: Outcome::UpToDate,
            url: Some(url.to_string()),
            serial: idx.serial,
            newest: idx.versions.first().map(|v| v.version.clone()),
            version: None,
            files_fetched: 0,
            bytes_fetched: 0,
            files_reused: 0,
            bytes_reused: 0,
            entry: None,
            tries: None,
            removed: Vec::new(),
            passed_over,
            at: o.now,
            seconds: 0.0,
        }
    }
}

/// Pulls the newest image of `o.profile` onto the boot partition at `b`:
/// the signed index, the plan (what to take, what the disk lacks), then —
/// unless a dry run — fetch, assemble, activate.
pub fn pull(b: &BootRoot, o: &PullOptions) -> Result<PullReport> {
    let t0 = Instant::now();
    let part = BootPartition::new(&b.root);
    crate::names::check("profile", &o.profile)?;
    if !part.grubenv().is_file() {
        bail!(
            "{}: no GRUB environment block: not a cairn boot disk",
            b.root.display()
        );
    }
    let _lock = part.lock()?;
    let scratch = tempfile::Builder::new()
        .prefix("cairn-pull-")
        .tempdir()
        .context("a private temporary directory")?;
    let work = scratch.path();
    let mut state = PullState::load(&b.root)?;
    let (idx, seen, url, passed_over) = fetch_index(o, state.seen.get(&o.profile), work)?;
    let mut report = PullReport::new(o, &idx, &url, passed_over);
    if !o.dry_run {
        state.seen.insert(o.profile.clone(), seen);
    }
    let on = part.images()?;
    let target = match plan::choose(&idx, &o.profile, o.running.as_deref(), &o.machine_id, &on) {
        plan::Choice::Stay(outcome) => {
            report.outcome = outcome;
            return done(b, state, report, t0, o.dry_run);
        }
        plan::Choice::Take(t) => t,
    };
    let id = ImageId::new(&o.profile, &target.version)?;
    report.version = Some(target.version.clone());
    if part.image_dir(&id).is_dir() {
        return again(b, &part, o, &id, state, report, t0, work);
    }
    let fetched_dir = b.root.join(STATE_DIR).join("fetched");
    let (fetched, present) = on_disk(&part, target, &fetched_dir);
    let files = plan::files(target, &fetched, &present);
    report.files_reused = files.reuse.len();
    report.bytes_reused = files.reuse.iter().map(|r| r.2).sum();
    if o.dry_run {
        report.outcome = Outcome::Planned;
        report.files_fetched = files.fetch.len();
        report.bytes_fetched = files.need();
        return finish(b, state, report, t0, true);
    }
    b.rw(|| {
        prepare(b, &part, o, target, &files, &state, &mut report)?;
        fetch(o, &url, target, &files, &b.root, &mut report)?;
        let staging = assemble(&part, o, &id, &files, work)?;
        activate(b, &part, o, &id, &staging, &mut report)?;
        finish(b, state, report, t0, false)
    })
}

/// Records the report as it is (nothing more to do), on the partition
/// unless a dry run.
fn done(
    b: &BootRoot,
    state: PullState,
    report: PullReport,
    t0: Instant,
    dry_run: bool,
) -> Result<PullReport> {
    if dry_run {
        finish(b, state, report, t0, true)
    } else {
        b.rw(|| finish(b, state, report, t0, false))
    }
}

/// The image to take is on the disk already: it must be this very image,
/// signed; it becomes the default on trial unless it used up its trial.
#[allow(clippy::too_many_arguments)]
fn again(
    b: &BootRoot,
    part: &BootPartition,
    o: &PullOptions,
    id: &ImageId,
    state: PullState,
    mut report: PullReport,
    t0: Instant,
    work: &Path,
) -> Result<PullReport> {
    let dest = part.image_dir(id);
    let m = crate::image::verify::signed_manifest(&dest, &o.key, work)
        .with_context(|| format!("{}: already on the disk but", dest.display()))?;
    if m.version != id.version() || m.profile != id.profile() {
        bail!(
            "{}: its signed manifest names another image",
            dest.display()
        );
    }
    report.outcome = Outcome::AlreadyThere;
    if disk::gave_up(part, id, &o.key)? {
        report.outcome = Outcome::GaveUp;
        return done(b, state, report, t0, o.dry_run);
    }
    if o.dry_run {
        report.outcome = Outcome::Planned;
        return finish(b, state, report, t0, true);
    }
    b.rw(|| {
        disk::set_trial(part, id, &o.key, &mut report)?;
        finish(b, state, report, t0, false)
    })
}

/// Before anything is fetched: no link where cairn writes, what earlier
/// pulls of other versions left removed, the index seen remembered, room
/// made for what will be fetched.
fn prepare(
    b: &BootRoot,
    part: &BootPartition,
    o: &PullOptions,
    target: &IndexVersion,
    files: &plan::Files,
    state: &PullState,
    report: &mut PullReport,
) -> Result<()> {
    let root = &b.root;
    let profile_dir = root.join(IMAGES).join(&o.profile);
    let staging = profile_dir.join(format!(".pull-{}", target.version));
    let fetched_dir = root.join(STATE_DIR).join("fetched");
    let partial_dir = root.join(STATE_DIR).join("partial");
    for d in [
        root.join(IMAGES),
        profile_dir.clone(),
        staging.clone(),
        root.join(STATE_DIR),
        fetched_dir.clone(),
        partial_dir.clone(),
    ] {
        disk::no_link(&d)?;
    }
    let wanted: BTreeSet<&str> = target.files.values().map(|f| f.sha256.as_str()).collect();
    disk::clear_stale(&fetched_dir, &wanted)?;
    disk::clear_stale(&partial_dir, &wanted)?;
    for e in std::fs::read_dir(&profile_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".pull-") && p != staging {
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
        }
    }
    // The index is taken: remember it before anything can fail.
    state.save(root)?;
    let keep = disk::kept(part, &b.booted_dir)?;
    disk::make_room(part, &o.profile, files.need(), &keep, report)
}

/// Fetches what the disk lacks into cairn's own directory (by hash:
/// resumable, a killed pull's finished files count), every file checked
/// while it streams.
fn fetch(
    o: &PullOptions,
    url: &RepoUrl,
    target: &IndexVersion,
    files: &plan::Files,
    root: &Path,
    report: &mut PullReport,
) -> Result<()> {
    let partial_dir = root.join(STATE_DIR);
    let fetched_dir = root.join(STATE_DIR).join("fetched");
    fs::create_dir_all(&fetched_dir)?;
    let counter = Counter::default();
    let results = crate::parallel::map(&files.fetch, o.jobs.max(1), |(name, f)| {
        fetch_file(
            o,
            url,
            &target.version,
            name,
            f,
            &partial_dir,
            &fetched_dir,
            &counter,
        )
    });
    let mut failed = Vec::new();
    let mut refused = false;
    for ((name, f), r) in files.fetch.iter().zip(results) {
        match r {
            Ok(_) => {
                report.files_fetched += 1;
                report.bytes_fetched += f.size;
            }
            Err(e) => {
                refused |= crate::trust::is_verification_failure(&e);
                failed.push(format!("{name}: {e:#}"))
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "{}/{}: {} file(s) could not be fetched and verified; the boot disk's images and menu are unchanged (a new pull resumes):\n  {}",
        o.profile,
        target.version,
        failed.len(),
        failed.join("\n  ")
    );
    // A file that came whole and differs from the signed index is refused
    // data (exit code 3), not an outage.
    if refused {
        return Err(crate::trust::VerificationFailed::new(msg).into());
    }
    bail!("{msg}")
}

/// Puts the image together beside the others (`.pull-V`, a name GRUB
/// never sees): links to what the disk had, the fetched files; whole and
/// signed before it is returned, else removed.
fn assemble(
    part: &BootPartition,
    o: &PullOptions,
    id: &ImageId,
    files: &plan::Files,
    work: &Path,
) -> Result<PathBuf> {
    let staging = part
        .root()
        .join(IMAGES)
        .join(id.profile())
        .join(format!(".pull-{}", id.version()));
    let fetched_dir = part.root().join(STATE_DIR).join("fetched");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    for (name, src, _) in &files.reuse {
        let to = staging.join(name);
        if fs::hard_link(src, &to).is_err() {
            fs::copy(src, &to)?;
        }
    }
    for (name, f) in files.fetch.iter().chain(&files.have) {
        let from = fetched_dir.join(&f.sha256);
        let to = staging.join(name);
        // Two names may share a hash: link, and drop the object after.
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to)?;
        }
    }
    for (_, f) in files.fetch.iter().chain(&files.have) {
        let _ = fs::remove_file(fetched_dir.join(&f.sha256));
    }
    let checked = crate::image::verify::signed_manifest(&staging, &o.key, work)
        .context("the fetched image")
        .and_then(|m| {
            if m.profile != id.profile() || m.version != id.version() {
                bail!(
                    "the fetched image's signed manifest names {}/{}, not {id}",
                    m.profile,
                    m.version
                );
            }
            Ok(m)
        });
    if let Err(e) = checked {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    crate::fsutil::sync_dir(&staging)?;
    Ok(staging)
}

/// The image gets its name, becomes the default on trial, and images
/// beyond `keep` go (never what the environment points at).
fn activate(
    b: &BootRoot,
    part: &BootPartition,
    o: &PullOptions,
    id: &ImageId,
    staging: &Path,
    report: &mut PullReport,
) -> Result<()> {
    let dest = part.image_dir(id);
    fs::rename(staging, &dest)?;
    crate::fsutil::sync_dir(dest.parent().unwrap_or(part.root()))?;
    report.outcome = Outcome::Staged;
    disk::set_trial(part, id, &o.key, report)?;
    let mut keep = disk::kept(part, &b.booted_dir)?;
    keep.insert(id.clone());
    disk::prune(part, &o.profile, o.keep, &keep, report)
}

#[allow(clippy::too_many_arguments)]
fn fetch_file(
    o: &PullOptions,
    first: &RepoUrl,
    version: &str,
    name: &str,
    f: &index::FileRef,
    partial_dir: &Path,
    fetched_dir: &Path,
    counter: &Counter,
) -> Result<u64> {
    let rel = format!("images/{}/{version}/{name}", o.profile);
    let expect = Expect {
        size: f.size,
        sha256: f.sha256.clone(),
    };
    // The URL that served the index first, then the others.
    let urls = std::iter::once(first).chain(o.urls.iter().filter(|u| *u != first));
    let mut last = None;
    for u in urls {
        let t = transport_for(u, 1)?;
        match fetch_verified(
            t.as_ref(),
            &u.join(&rel),
            &partial_path(partial_dir, &f.sha256),
            &fetched_dir.join(&f.sha256),
            &expect,
            &o.retry,
            counter,
        ) {
            Ok(n) => return Ok(n),
            Err(e) => {
                tracing::warn!("{u}: {rel}: {e}");
                last = Some(anyhow::Error::from(e).context(u.join(&rel).to_string()));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no URL")))
}

/// Records the report (and the index seen) on the partition, which must be
/// writable unless `dry_run`.
fn finish(
    b: &BootRoot,
    mut state: PullState,
    mut report: PullReport,
    t0: Instant,
    dry_run: bool,
) -> Result<PullReport> {
    report.seconds = t0.elapsed().as_secs_f64();
    if !dry_run {
        state.schema_version = 1;
        state.last = Some(report.clone());
        state.save(&b.root)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_at_a_time_and_planted_files_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let part = BootPartition::new(d.path());
        let held = part.lock().unwrap();
        let e = part
            .lock_within(std::time::Duration::ZERO)
            .err()
            .expect("a second lock while the first is held");
        assert!(format!("{e:#}").contains("another cairn"), "{e:#}");
        drop(held);
        // (With a wait: another test's thread between fork and exec may
        // hold a copy of the open directory, and its flock, for a moment.)
        part.lock_within(std::time::Duration::from_secs(30))
            .unwrap();
        // A FIFO or a link where cairn.json should be: not read (a FIFO
        // would hang the pull); the default tries instead.
        fs::create_dir_all(d.path().join("boot")).unwrap();
        let cj = d.path().join("boot/cairn.json");
        let st = std::process::Command::new("mkfifo")
            .arg(&cj)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(BootPartition::new(d.path()).tries(), 3);
        fs::remove_file(&cj).unwrap();
        let five = crate::boot::model::tests::disk_config(5);
        fs::write(d.path().join("real.json"), &five).unwrap();
        std::os::unix::fs::symlink(d.path().join("real.json"), &cj).unwrap();
        assert_eq!(BootPartition::new(d.path()).tries(), 3);
        fs::remove_file(&cj).unwrap();
        fs::write(&cj, &five).unwrap();
        assert_eq!(BootPartition::new(d.path()).tries(), 5);
    }
}
