//! The build host's side of reports: machines enrolled with their public
//! keys, and the inbox the web server writes (`PUT
//! /reports/<machine>/report.json`) taken in by `cairn fleet ingest`.
//!
//! ```text
//! <store>/fleet/machines/<id>.json      enrolment: the machine's public key, its profile
//! <store>/fleet/inbox/<id>/report.json  the web server's (owned by its user): hostile
//! <store>/fleet/reports/<id>/last.json  the last report taken, checked
//! <store>/fleet/reports/<id>/history.jsonl  reports taken, the last 200
//! <store>/fleet/refused.jsonl           what was ignored and why, the last 200
//! ```
//!
//! Only an enrolled machine has a directory in the inbox, and the web
//! server never makes one (WebDAV without `create_full_put_path`), so the
//! inbox holds at most one report of 64 KiB per enrolled machine: a flood
//! of reports cannot fill the build host's disk. What the web server's
//! user wrote is read through directory handles, never following a link.

use fs_err as fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::report::{self, REPORT_FILE, REPORT_LIMIT, Report};

/// Reports kept per machine, and refusals kept.
const HISTORY: usize = 200;
/// Inbox entries looked at in one run.
const MAX_ENTRIES: usize = 100_000;
/// A report dated further ahead than this is refused (clock skew).
const FUTURE_SKEW: i64 = 24 * 3600;
/// Where a report is moved while it is read: the web server's next PUT
/// then makes a new file, never lost, never mixed with the one read.
const TAKING: &str = ".taking";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Enrolled {
    pub machine: String,
    /// Ed25519, 64 hex digits.
    pub public_key: String,
    /// The profile it runs: its reports count in this profile's
    /// rollouts only, whatever they say.
    pub profile: Option<String>,
    pub enrolled_at: i64,
}

pub fn fleet_dir(store: &Path) -> PathBuf {
    store.join("fleet")
}

/// Held while the gate, a rollout command or a publication reads and
/// writes rollouts and indices: a halt signed by one is never undone by
/// another that read the index before it.
pub fn lock(store: &Path) -> Result<std::fs::File> {
    let dir = fleet_dir(store);
    fs::create_dir_all(&dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .with_context(|| format!("opening {}/.lock", dir.display()))?;
    f.lock()
        .with_context(|| format!("locking {}/.lock", dir.display()))?;
    Ok(f)
}
pub fn inbox_dir(store: &Path) -> PathBuf {
    fleet_dir(store).join("inbox")
}
fn machines_dir(store: &Path) -> PathBuf {
    fleet_dir(store).join("machines")
}
pub fn reports_dir(store: &Path, id: &str) -> PathBuf {
    fleet_dir(store).join("reports").join(id)
}
fn refused_file(store: &Path) -> PathBuf {
    fleet_dir(store).join("refused.jsonl")
}

/// Enrols `id` with its public key: its reports are taken from now on.
/// A machine enrolled with another key is refused unless `replace` (a
/// disk made again: its old reports' numbers no longer count).
pub fn enroll(
    store: &Path,
    id: &str,
    public_key: &str,
    profile: &str,
    replace: bool,
) -> Result<Enrolled> {
    crate::names::check("machine id", id)?;
    if id.len() > 128 {
        bail!("machine id {id:?}: at most 128 characters");
    }
    crate::names::check("profile", profile)?;
    crate::trust::machine::check_public(public_key)?;
    let path = machines_dir(store).join(format!("{id}.json"));
    if let Ok(old) = load_enrolled(store, id) {
        if old.public_key != public_key && !replace {
            bail!(
                "machine {id} is enrolled with another key ({}): --replace to take the new one (a disk made again)",
                old.public_key
            );
        }
        // Taken again: its reports start over (a disk made again counts
        // its reports from its own start).
        if replace {
            let _ = fs::remove_dir_all(reports_dir(store, id));
        }
    }
    let e = Enrolled {
        machine: id.to_string(),
        public_key: public_key.to_string(),
        profile: Some(profile.to_string()),
        enrolled_at: crate::unix_now(),
    };
    fs::create_dir_all(machines_dir(store))?;
    crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&e)?)?;
    open_slot(store, id)?;
    Ok(e)
}

/// The inbox directory of `id`, made with the inbox's own owner (the web
/// server's user, who made the inbox writable for itself) when the inbox
/// exists; without an inbox, reports are not served yet: nothing to make.
fn open_slot(store: &Path, id: &str) -> Result<()> {
    let inbox = inbox_dir(store);
    let Ok(fd) = open_dir_at(rustix::fs::CWD, &inbox) else {
        return Ok(());
    };
    let st = rustix::fs::fstat(&fd)?;
    match rustix::fs::mkdirat(&fd, id, Mode::from_raw_mode(0o755)) {
        Ok(()) => {}
        // There already: whoever made it owns it; never chowned (it may
        // be what the web server's user moved there).
        Err(rustix::io::Errno::EXIST) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("making {}/{id}", inbox.display())),
    }
    let slot = open_dir_at(&fd, Path::new(id))
        .with_context(|| format!("{}/{id}: not a directory of the inbox", inbox.display()))?;
    let made = rustix::fs::fstat(&slot)?;
    if made.st_uid != rustix::process::geteuid().as_raw() || made.st_dev != st.st_dev {
        bail!("{}/{id} was replaced while it was made", inbox.display());
    }
    rustix::fs::fchown(
        &slot,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )
    .with_context(|| format!("giving {}/{id} the inbox's owner", inbox.display()))?;
    Ok(())
}

fn open_dir_at<Fd: AsFd>(at: Fd, p: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

pub fn load_enrolled(store: &Path, id: &str) -> Result<Enrolled> {
    crate::names::check("machine id", id)?;
    let p = machines_dir(store).join(format!("{id}.json"));
    let b = crate::fsutil::small_file(&p, 4096)
        .with_context(|| format!("machine {id} is not enrolled"))?;
    serde_json::from_slice(&b).with_context(|| format!("{}: not an enrolment", p.display()))
}

/// Every enrolled machine, by id.
pub fn enrolled(store: &Path) -> Result<Vec<Enrolled>> {
    let dir = machines_dir(store);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in rd {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json") {
            out.push(load_enrolled(store, id)?);
        }
    }
    out.sort_by(|a, b| a.machine.cmp(&b.machine));
    Ok(out)
}

/// The last report taken from `id`, if any.
pub fn last_report(store: &Path, id: &str) -> Result<Option<Report>> {
    let p = reports_dir(store, id).join("last.json");
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| p.display().to_string())?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The reports taken from `id`, oldest first (the last 200).
pub fn history(store: &Path, id: &str) -> Result<Vec<Report>> {
    let p = reports_dir(store, id).join("history.jsonl");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| p.display().to_string()))
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Refusal {
    pub at: i64,
    /// The inbox entry (`<id>/report.json`, or a stray name).
    pub entry: String,
    pub reason: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Ingested {
    /// `(machine, seq)` of each report taken.
    pub taken: Vec<(String, u64)>,
    pub refused: Vec<Refusal>,
}

/// Takes in what the inbox holds: each report checked (size, signature
/// by the machine's enrolled key, its machine, newer than the last one
/// taken, not from the future) and kept, or refused and named. Every
/// report read is removed from the inbox, taken or not.
pub fn ingest(store: &Path, now: i64) -> Result<Ingested> {
    let inbox = inbox_dir(store);
    let mut out = Ingested::default();
    // A machine enrolled before the inbox was made gets its place now;
    // one that cannot is named, never a stop for the others.
    for e in enrolled(store)? {
        if let Err(err) = open_slot(store, &e.machine) {
            out.refused.push(Refusal {
                at: now,
                entry: e.machine.clone(),
                reason: format!("its place in the inbox: {err:#}"),
            });
        }
    }
    let fd = match open_dir_at(rustix::fs::CWD, &inbox) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(out),
        Err(e) => {
            return Err(e).with_context(|| format!("opening the inbox {}", inbox.display()));
        }
    };
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&fd).context("listing the inbox")? {
        let e = e.context("listing the inbox")?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            names.push(n);
        }
        // Bounded: the web server's user could make many names.
        if names.len() > MAX_ENTRIES {
            break;
        }
    }
    names.sort();
    for name in names {
        match take_one(store, &fd, &name, now) {
            Ok(Some(seq)) => out.taken.push((name, seq)),
            Ok(None) => {}
            Err(e) => out.refused.push(Refusal {
                at: now,
                entry: format!("{}/{REPORT_FILE}", report::tail(&name, 128)),
                reason: report::tail(&format!("{e:#}"), 512),
            }),
        }
    }
    if !out.refused.is_empty() {
        let mut lines = tail_lines(&refused_file(store), HISTORY)?;
        for r in &out.refused {
            lines.push(serde_json::to_string(r)?);
        }
        let cut = lines.len().saturating_sub(HISTORY);
        write_lines(&refused_file(store), &lines[cut..])?;
    }
    Ok(out)
}

/// The report in the inbox directory `name`: None when it has none.
fn take_one(store: &Path, inbox: &OwnedFd, name: &str, now: i64) -> Result<Option<u64>> {
    crate::names::check("machine id", name).context("not a machine's directory")?;
    let slot = open_dir_at(inbox, Path::new(name)).map_err(|e| match e {
        rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => {
            anyhow::anyhow!("not a directory (a link or a file in the inbox)")
        }
        e => anyhow::Error::from(e).context("opening it"),
    })?;
    match rustix::fs::renameat(&slot, REPORT_FILE, &slot, TAKING) {
        Ok(()) => {}
        // Nothing new; a report left from a run that stopped is read now.
        Err(rustix::io::Errno::NOENT) => {
            if rustix::fs::statat(&slot, TAKING, AtFlags::SYMLINK_NOFOLLOW).is_err() {
                return Ok(None);
            }
        }
        Err(e) => return Err(e).context("taking its report"),
    }
    let bytes = read_small_at(&slot, TAKING);
    let _ = rustix::fs::unlinkat(&slot, TAKING, AtFlags::empty());
    let bytes = bytes?;
    let enrolled = load_enrolled(store, name).context("an unknown machine")?;
    let r = report::open(&bytes, &enrolled.public_key)?;
    if r.machine != name {
        bail!("it names machine {}: not this directory's", r.machine);
    }
    if r.sent_at > now + FUTURE_SKEW {
        bail!(
            "dated {}: in the future",
            cairn_debian::date::format_release_date(r.sent_at)
        );
    }
    if r.sent_at < enrolled.enrolled_at - FUTURE_SKEW {
        bail!("dated before the machine was enrolled");
    }
    // Numbers count up from the clock in milliseconds: one far ahead
    // would shut the machine's later reports out.
    let ahead = u64::try_from(now + FUTURE_SKEW)
        .unwrap_or(0)
        .saturating_mul(1000);
    if r.seq > ahead {
        bail!("number {} is ahead of any clock", r.seq);
    }
    if let Some(last) = last_report(store, name)?
        && r.seq <= last.seq
    {
        bail!(
            "a replayed or older report: number {} after {} was taken",
            r.seq,
            last.seq
        );
    }
    keep(store, &r)?;
    Ok(Some(r.seq))
}

/// A regular file of the directory `dir`, at most REPORT_LIMIT bytes,
/// opened without following a link or waiting on a FIFO.
fn read_small_at(dir: &OwnedFd, name: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => anyhow::anyhow!("a symbolic link, not a report"),
        e => anyhow::Error::from(e).context("reading it"),
    })?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        bail!("not a regular file");
    }
    if st.st_size as u64 > REPORT_LIMIT {
        bail!("oversized ({} bytes, at most {REPORT_LIMIT})", st.st_size);
    }
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(REPORT_LIMIT + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > REPORT_LIMIT {
        bail!("oversized (more than {REPORT_LIMIT} bytes)");
    }
    Ok(data)
}

fn keep(store: &Path, r: &Report) -> Result<()> {
    let dir = reports_dir(store, &r.machine);
    fs::create_dir_all(&dir)?;
    let line = serde_json::to_string(r)?;
    let hist = dir.join("history.jsonl");
    let mut lines = tail_lines(&hist, HISTORY - 1)?;
    lines.push(line);
    write_lines(&hist, &lines)?;
    crate::fsutil::write_atomic(&dir.join("last.json"), &serde_json::to_vec_pretty(r)?)
}

fn tail_lines(p: &Path, n: usize) -> Result<Vec<String>> {
    let text = match fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let lines: Vec<String> = text.lines().map(String::from).collect();
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

fn write_lines(p: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    crate::fsutil::write_atomic(p, text.as_bytes())
}

/// What was refused lately (oldest first).
pub fn refusals(store: &Path) -> Result<Vec<Refusal>> {
    tail_lines(&refused_file(store), HISTORY)?
        .iter()
        .map(|l| serde_json::from_str(l).context("refused.jsonl"))
        .collect()
}
