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

use super::index::{self, INDEX_LIMIT, Index, IndexVersion, Seen};
use crate::boot::{env, menu};
use crate::live::medium::lock_root;
use crate::mirror::fetch::{
    Counter, Expect, RetryPolicy, fetch_small, fetch_verified, partial_path, transport_for,
};
use crate::mirror::url::RepoUrl;
use crate::trust::hash::sha256_file;

/// cairn's own directory on a boot partition (pull state, partial files).
pub const STATE_DIR: &str = "cairn";
const STATE_FILE: &str = "cairn/pull.json";
/// Larger is not a state file of cairn's.
const STATE_LIMIT: u64 = 1 << 20;
const GRUBENV: &str = "boot/grub/grubenv";

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

/// Refuses a symlink where cairn writes on the boot partition (a running
/// system mounts it nosymfollow; a directory given with --boot-dir is
/// checked here).
/// A regular file (a symbolic link, a FIFO or a device is not).
fn regular(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// A small regular file's bytes, at most `cap` of them.
fn read_small(p: &Path, cap: u64) -> Option<Vec<u8>> {
    let m = std::fs::symlink_metadata(p).ok()?;
    if !m.is_file() || m.len() > cap {
        return None;
    }
    fs::read(p).ok()
}

/// Removes what a pull left in `dir` that `keep` does not name (files of
/// an earlier target that never completed): space on the partition is not
/// lost to pulls that failed.
fn clear_stale(dir: &Path, keep: &BTreeSet<&str>) -> Result<()> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        if keep.contains(name.to_string_lossy().as_ref()) {
            continue;
        }
        let p = e.path();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn no_link(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link: refusing to write through it",
            p.display()
        );
    }
    Ok(())
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
                    return Err(crate::trust::VerificationFailed(format!(
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
        return Err(crate::trust::VerificationFailed(msg).into());
    }
    bail!("{msg}")
}

/// The image directories on the partition (`/images/P/V`, names that pass
/// the name rule, not being staged).
fn images_on(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in fs::read_dir(root.join("images"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let pn = p.file_name().to_string_lossy().into_owned();
        if !crate::names::is_safe(&pn) || !p.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for v in fs::read_dir(p.path()).into_iter().flatten().flatten() {
            let vn = v.file_name().to_string_lossy().into_owned();
            if crate::names::is_safe(&vn) && v.file_type().is_ok_and(|t| t.is_dir()) {
                out.push((pn.clone(), vn));
            }
        }
    }
    out.sort();
    out
}

/// Files on the partition by SHA-256, from the (unsigned) SHA256SUMS of the
/// images there: candidates only, each checked by hash before it is used.
fn known_files(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for (p, v) in images_on(root) {
        let dir = root.join("images").join(&p).join(&v);
        let Some(sums) =
            read_small(&dir.join("SHA256SUMS"), 1 << 20).and_then(|b| String::from_utf8(b).ok())
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

/// Bytes free on the file system of `p` (`df`'s available).
fn free_bytes(p: &Path) -> Result<u64> {
    let out = crate::cmd::Cmd::new("df")
        .args(["-B1", "--output=avail"])
        .arg(p)
        .run()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {}: no free space figure", p.display()))
}

/// Bytes that removing `dir` frees (files not linked from elsewhere).
fn freed_by(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file() && m.nlink() == 1)
        .map(|m| m.len())
        .sum()
}

/// The image directories (`/images/P/V`) the GRUB environment points at:
/// the last good boot, the trial, a one-shot next entry. Never removed.
fn protected(root: &Path, vars: &[(String, String)]) -> BTreeSet<String> {
    let wanted: Vec<&str> = vars
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "cairn_good" | "cairn_trial" | "next_entry"))
        .map(|(_, v)| v.as_str())
        .collect();
    let mut out = BTreeSet::new();
    for (p, v) in images_on(root) {
        let dir = format!("/images/{p}/{v}");
        for ram in [false, true] {
            let ids = [
                menu::found_selector(&dir, ram),
                menu::entry_id(&p, &v, ram),
                format!("rollback>{}", menu::entry_id(&p, &v, ram)),
            ];
            if ids.iter().any(|i| wanted.contains(&i.as_str())) {
                out.insert(dir.clone());
            }
        }
    }
    out
}

/// Boot tries for a new default: the disk's own setting (bounded), else 3.
fn tries_of(root: &Path) -> u32 {
    read_small(&root.join("boot/cairn.json"), 1 << 16)
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["menu"]["tries"].as_u64())
        .filter(|t| (1..=u64::from(crate::boot::disk::MAX_TRIES)).contains(t))
        .map_or(3, |t| t as u32)
}

/// Pulls the newest image of `o.profile` onto the boot partition at `b`.
pub fn pull(b: &BootRoot, o: &PullOptions) -> Result<PullReport> {
    let t0 = Instant::now();
    let root = &b.root;
    crate::names::check("profile", &o.profile)?;
    let envp = root.join(GRUBENV);
    if !envp.is_file() {
        bail!(
            "{}: no GRUB environment block: not a cairn boot disk",
            root.display()
        );
    }
    let _lock = lock_root(root)?;
    let scratch = tempfile::Builder::new()
        .prefix("cairn-pull-")
        .tempdir()
        .context("a private temporary directory")?;
    let work = scratch.path();
    let mut state = PullState::load(root)?;
    let (idx, seen, url, passed_over) = fetch_index(o, state.seen.get(&o.profile), work)?;
    let mut report = PullReport {
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
    };
    let newer: Vec<&IndexVersion> = idx
        .versions
        .iter()
        .filter(|v| o.running.as_ref().is_none_or(|r| v.version > *r))
        .collect();
    let target = newer
        .iter()
        .find(|v| index::in_rollout(&o.machine_id, &o.profile, &v.version, v.rollout))
        .copied();
    if !o.dry_run {
        state.seen.insert(o.profile.clone(), seen);
    }
    let Some(target) = target else {
        report.outcome = if newer.is_empty() {
            Outcome::UpToDate
        } else {
            Outcome::HeldBack
        };
        if o.dry_run {
            return finish(b, state, report, t0, true);
        }
        return b.rw(|| finish(b, state, report, t0, false));
    };
    report.version = Some(target.version.clone());
    let rel = format!("/images/{}/{}", o.profile, target.version);
    let dest = root.join(rel.trim_start_matches('/'));
    let profile_dir = root.join("images").join(&o.profile);
    if dest.is_dir() && report.newest.as_deref() != Some(target.version.as_str()) {
        // What this machine may have, it has; the newest waits for its rollout.
        report.outcome = Outcome::HeldBack;
        if o.dry_run {
            return finish(b, state, report, t0, true);
        }
        return b.rw(|| finish(b, state, report, t0, false));
    }
    if dest.is_dir() {
        // On the disk already: it must be this very image, signed.
        let m = crate::image::verify::signed_manifest(&dest, &o.key, work)
            .with_context(|| format!("{}: already on the disk but", dest.display()))?;
        if m.version != target.version || m.profile != o.profile {
            bail!(
                "{}: its signed manifest names another image",
                dest.display()
            );
        }
        report.outcome = Outcome::AlreadyThere;
        if gave_up(root, &rel, &o.key)? {
            report.outcome = Outcome::GaveUp;
            if o.dry_run {
                return finish(b, state, report, t0, true);
            }
            return b.rw(|| finish(b, state, report, t0, false));
        }
        if o.dry_run {
            report.outcome = Outcome::Planned;
            return finish(b, state, report, t0, true);
        }
        return b.rw(|| {
            set_trial(root, &rel, &o.key, &mut report)?;
            finish(b, state, report, t0, false)
        });
    }

    // What is on the disk already, checked by hash; the rest is fetched
    // into cairn's own directory (by hash: a killed pull's finished files
    // count), and only a whole, signed image gets a name GRUB sees.
    let known = known_files(root);
    let staging = profile_dir.join(format!(".pull-{}", target.version));
    let fetched_dir = root.join(STATE_DIR).join("fetched");
    let mut reuse = Vec::new();
    let mut have = Vec::new();
    let mut fetch = Vec::new();
    for (name, f) in &target.files {
        let done = fetched_dir.join(&f.sha256);
        if regular(&done) && sha256_file(&done).is_ok_and(|(n, h)| n == f.size && h == f.sha256) {
            have.push((name.clone(), f.clone()));
            continue;
        }
        match known.get(&f.sha256) {
            Some(p)
                if regular(p)
                    && sha256_file(p).is_ok_and(|(n, h)| n == f.size && h == f.sha256) =>
            {
                reuse.push((name.clone(), p.clone(), f.size))
            }
            _ => fetch.push((name.clone(), f.clone())),
        }
    }
    let need: u64 = fetch
        .iter()
        .fold(0u64, |a, (_, f)| a.saturating_add(f.size));
    report.files_reused = reuse.len();
    report.bytes_reused = reuse.iter().map(|r| r.2).sum();
    if o.dry_run {
        report.outcome = Outcome::Planned;
        report.files_fetched = fetch.len();
        report.bytes_fetched = need;
        return finish(b, state, report, t0, true);
    }

    b.rw(|| {
        let partial_dir = root.join(STATE_DIR);
        for d in [
            root.join("images"),
            profile_dir.clone(),
            staging.clone(),
            root.join(STATE_DIR),
            fetched_dir.clone(),
            partial_dir.join("partial"),
        ] {
            no_link(&d)?;
        }
        // What earlier pulls of other versions left half-done goes first.
        let wanted: BTreeSet<&str> = target.files.values().map(|f| f.sha256.as_str()).collect();
        clear_stale(&fetched_dir, &wanted)?;
        clear_stale(&partial_dir.join("partial"), &wanted)?;
        for e in std::fs::read_dir(&profile_dir).into_iter().flatten().flatten() {
            let p = e.path();
            let n = e.file_name();
            if n.to_string_lossy().starts_with(".pull-") && p != staging {
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    fs::remove_dir_all(&p)?;
                } else {
                    fs::remove_file(&p)?;
                }
            }
        }
        // The index is taken: remember it before anything can fail.
        state.save(root)?;
        let vars = env::parse(&fs::read(&envp)?)?;
        let mut keep: BTreeSet<String> = protected(root, &vars);
        keep.extend(b.booted_dir.clone());
        let has_good = vars
            .iter()
            .any(|(k, v)| k == "cairn_good" && !v.is_empty());
        make_room(root, &o.profile, need, &keep, has_good, &mut report)?;

        fs::create_dir_all(&fetched_dir)?;
        let counter = Counter::default();
        let results = crate::parallel::map(&fetch, o.jobs.max(1), |(name, f)| {
            fetch_file(o, &url, &target.version, name, f, &partial_dir, &fetched_dir, &counter)
        });
        let mut failed = Vec::new();
        let mut refused = false;
        for ((name, f), r) in fetch.iter().zip(results) {
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
        if !failed.is_empty() {
            let msg = format!(
                "{}/{}: {} file(s) could not be fetched and verified; the boot disk's images and menu are unchanged (a new pull resumes):\n  {}",
                o.profile,
                target.version,
                failed.len(),
                failed.join("\n  ")
            );
            // A file that came whole and differs from the signed index is
            // refused data (exit code 3), not an outage.
            if refused {
                return Err(crate::trust::VerificationFailed(msg).into());
            }
            bail!("{msg}");
        }
        // Everything is here: the image is put together beside the others.
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(&staging)?;
        for (name, src, _) in &reuse {
            let to = staging.join(name);
            if fs::hard_link(src, &to).is_err() {
                fs::copy(src, &to)?;
            }
        }
        for (name, f) in fetch.iter().chain(&have) {
            let from = fetched_dir.join(&f.sha256);
            let to = staging.join(name);
            // Two names may share a hash: link, and drop the object after.
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to)?;
            }
        }
        for (_, f) in fetch.iter().chain(&have) {
            let _ = fs::remove_file(fetched_dir.join(&f.sha256));
        }
        // Whole and signed before it gets its real name; refused, it
        // leaves nothing behind.
        let checked = crate::image::verify::signed_manifest(&staging, &o.key, work)
            .context("the fetched image")
            .and_then(|m| {
                if m.profile != o.profile || m.version != target.version {
                    bail!(
                        "the fetched image's signed manifest names {}/{}, not {}/{}",
                        m.profile,
                        m.version,
                        o.profile,
                        target.version
                    );
                }
                Ok(m)
            });
        if let Err(e) = checked {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        crate::fsutil::sync_dir(&staging)?;
        fs::rename(&staging, &dest)?;
        crate::fsutil::sync_dir(&profile_dir)?;
        report.outcome = Outcome::Staged;
        set_trial(root, &rel, &o.key, &mut report)?;
        // Beyond `keep`: the oldest go, never what the environment points at.
        let vars = env::parse(&fs::read(&envp)?)?;
        let mut keep_now = protected(root, &vars);
        keep_now.extend(b.booted_dir.clone());
        keep_now.insert(rel.clone());
        prune(root, &o.profile, o.keep, &keep_now, &mut report)?;
        finish(b, state, report, t0, false)
    })
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

/// Whether the image at `rel` had its trial and did not pass it (no tries
/// left, never marked good), or was refused by the initramfs.
fn gave_up(root: &Path, rel: &str, key: &Path) -> Result<bool> {
    let vars = env::parse(&fs::read(root.join(GRUBENV))?)?;
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let ids: Vec<String> = [false, true]
        .iter()
        .map(|&ram| menu::found_selector(rel, ram))
        .chain(
            crate::live::menu_selector(root, rel, false, key)
                .ok()
                .flatten(),
        )
        .collect();
    let is = |v: Option<&str>| v.is_some_and(|v| ids.iter().any(|i| i == v));
    let exhausted = is(get("cairn_trial"))
        && get("cairn_left").is_none_or(|l| l == "0" || l.is_empty())
        && !is(get("cairn_good"));
    Ok(exhausted || is(get("cairn_bad")))
}

/// Makes `rel` the default on trial: `tries` boots before GRUB falls back
/// to the last good one. The signed menu's own entry when it has one, else
/// the "found now" entry every cairn menu makes for a signed image.
fn set_trial(root: &Path, rel: &str, key: &Path, r: &mut PullReport) -> Result<()> {
    let entry = crate::live::menu_selector(root, rel, false, key)
        .unwrap_or_else(|e| {
            tracing::warn!("{e:#}: using the found-now entry");
            None
        })
        .unwrap_or_else(|| menu::found_selector(rel, false));
    let envp = root.join(GRUBENV);
    let mut vars = env::parse(&fs::read(&envp)?)?;
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if get("cairn_good").as_deref() == Some(entry.as_str()) {
        // Booted fine before (a copy staged again): nothing to try.
        r.entry = Some(entry);
        return Ok(());
    }
    let tries = tries_of(root);
    let t = tries.to_string();
    let mut set = vec![("cairn_trial", entry.as_str()), ("cairn_left", t.as_str())];
    if get("cairn_bad").as_deref() == Some(entry.as_str()) {
        set.push(("cairn_bad", ""));
    }
    env::update(&mut vars, &set);
    env::save(&envp, &vars)?;
    r.entry = Some(entry);
    r.tries = Some(tries);
    Ok(())
}

/// Images of `profile` to remove for `need` more bytes, oldest first,
/// never one in `keep`; an error when even that is not enough.
fn make_room(
    root: &Path,
    profile: &str,
    need: u64,
    keep: &BTreeSet<String>,
    has_good: bool,
    r: &mut PullReport,
) -> Result<()> {
    // Room for the files and a little for the file system's own use.
    let want = need.saturating_add(need / 50).saturating_add(1 << 20);
    let mut free = free_bytes(root)?;
    if free >= want {
        return Ok(());
    }
    if !has_good {
        bail!(
            "the boot partition has {} free, the image needs {}, and no image on it has booted well yet (no cairn_good): nothing is removed to make room",
            crate::progress::human_bytes(free),
            crate::progress::human_bytes(want)
        );
    }
    let mut old: Vec<String> = images_on(root)
        .into_iter()
        .filter(|(p, _)| p == profile)
        .map(|(p, v)| format!("/images/{p}/{v}"))
        .filter(|d| !keep.contains(d))
        .collect();
    old.sort();
    // Only when removing is enough: nothing is removed in vain.
    let gains: Vec<u64> = old
        .iter()
        .map(|d| freed_by(&root.join(d.trim_start_matches('/'))))
        .collect();
    if free + gains.iter().sum::<u64>() < want {
        bail!(
            "the boot partition has {} free, the image needs {}: not enough room even without the older images (kept: {}); nothing was removed",
            crate::progress::human_bytes(free),
            crate::progress::human_bytes(want),
            keep.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for (d, gain) in old.into_iter().zip(gains) {
        if free >= want {
            break;
        }
        fs::remove_dir_all(root.join(d.trim_start_matches('/')))?;
        r.removed.push(d);
        free += gain;
    }
    let free = free_bytes(root)?;
    if free < want {
        bail!(
            "the boot partition has {} free, the image needs {}: not enough room even without older images (kept: {})",
            crate::progress::human_bytes(free),
            crate::progress::human_bytes(want),
            keep.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Keeps the newest `n` images of `profile` and every one in `keep`.
fn prune(
    root: &Path,
    profile: &str,
    n: u32,
    keep: &BTreeSet<String>,
    r: &mut PullReport,
) -> Result<()> {
    let mut all: Vec<String> = images_on(root)
        .into_iter()
        .filter(|(p, _)| p == profile)
        .map(|(p, v)| format!("/images/{p}/{v}"))
        .collect();
    all.sort();
    all.reverse();
    let mut kept = 0;
    for d in all {
        if keep.contains(&d) || kept < n {
            kept += 1;
            continue;
        }
        fs::remove_dir_all(root.join(d.trim_start_matches('/')))?;
        r.removed.push(d);
    }
    Ok(())
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
    use crate::live::medium::lock_root_within;

    #[test]
    fn one_writer_at_a_time_and_planted_files_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let held = lock_root(d.path()).unwrap();
        let e = lock_root_within(d.path(), std::time::Duration::ZERO)
            .err()
            .expect("a second lock while the first is held");
        assert!(format!("{e:#}").contains("another cairn"), "{e:#}");
        drop(held);
        lock_root_within(d.path(), std::time::Duration::ZERO).unwrap();
        // A FIFO or a link where cairn.json should be: not read (a FIFO
        // would hang the pull); the default tries instead.
        fs::create_dir_all(d.path().join("boot")).unwrap();
        let cj = d.path().join("boot/cairn.json");
        let st = std::process::Command::new("mkfifo")
            .arg(&cj)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(tries_of(d.path()), 3);
        fs::remove_file(&cj).unwrap();
        fs::write(d.path().join("real.json"), r#"{"menu":{"tries":5}}"#).unwrap();
        std::os::unix::fs::symlink(d.path().join("real.json"), &cj).unwrap();
        assert_eq!(tries_of(d.path()), 3);
        fs::remove_file(&cj).unwrap();
        fs::write(&cj, r#"{"menu":{"tries":5}}"#).unwrap();
        assert_eq!(tries_of(d.path()), 5);
    }
}
