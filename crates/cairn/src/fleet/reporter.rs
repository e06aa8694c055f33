//! `cairn report` on a machine (or for a boot partition's tree): the
//! status of its boot disk, sealed with the machine's key and sent to the
//! first fleet URL that takes it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::report::{self, Reason, Report};
use crate::boot::model::BootPartition;
use crate::mirror::url::RepoUrl;
use crate::trust::machine::MachineKey;

use crate::image::paths::REPORTED;

pub struct ReportRequest {
    /// A boot partition's tree; None: this machine's boot medium.
    pub boot_dir: Option<PathBuf>,
    pub machine_id: Option<String>,
    pub profile: Option<String>,
    pub urls: Vec<RepoUrl>,
    pub reason: Option<Reason>,
    /// The public key images must be signed by (for the images' status).
    pub key: PathBuf,
    /// A pull that failed: its error goes in the report.
    pub pull_error: Option<String>,
    /// Say the machine's id and public key (made if none); send nothing.
    pub print_key: bool,
    /// Make the report and say it; send nothing, number nothing.
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Sent {
    pub machine: String,
    pub public_key: Option<String>,
    /// The key was made now: enrol it on the build host
    /// (`cairn fleet enroll MACHINE --key PUBLIC-KEY`).
    pub key_made: bool,
    /// Where the report went (none: --print-key or --dry-run).
    pub url: Option<String>,
    pub report: Option<Report>,
}

/// Makes, seals and sends a report (or says the key, or the report only).
pub fn run(r: &ReportRequest) -> Result<Sent> {
    let (root, cmdline, medium) = open(r)?;
    let settings = if r.boot_dir.is_none() {
        Some(super::machine::settings(
            Path::new(super::machine::FLEET_FILE),
            &std::env::var_os(crate::config::CONFIG_ENV)
                .map_or_else(|| PathBuf::from(crate::config::MAIN), PathBuf::from),
        )?)
    } else {
        None
    };
    // A running system mounts the partition nosymfollow; a tree given
    // with --boot-dir is checked here.
    if std::fs::symlink_metadata(root.join("cairn")).is_ok_and(|m| !m.is_dir()) {
        bail!(
            "{}/cairn is not a directory: refusing to write through it",
            root.display()
        );
    }
    let part = BootPartition::new(&root);
    let id = match (&r.machine_id, r.boot_dir.is_none()) {
        (Some(m), _) => m.clone(),
        (None, true) => super::machine::machine_id()?,
        (None, false) => part
            .config()
            .map(|c| c.boot_uuid.to_ascii_lowercase())
            .context("--machine-id: this boot partition records no UUID of its own")?,
    };
    crate::names::check("machine id", &id)?;
    let profile = r
        .profile
        .clone()
        .or_else(|| settings.as_ref().map(|s| s.profile.clone()));
    let writable = |f: &mut dyn FnMut() -> Result<Vec<u8>>| -> Result<Vec<u8>> {
        let _lock = part.lock()?;
        match &medium {
            Some(m) => m.writable(f),
            None => f(),
        }
    };
    if r.print_key {
        let mut made = false;
        let mut public = String::new();
        writable(&mut || {
            let (k, m) = MachineKey::load_or_make(&root)?;
            made = m;
            public = k.public();
            Ok(Vec::new())
        })?;
        return Ok(Sent {
            machine: id,
            public_key: Some(public),
            key_made: made,
            url: None,
            report: None,
        });
    }
    let status = super::status::status(Some(&root), cmdline.as_deref(), &r.key)?;
    let reason = r.reason.unwrap_or(if r.boot_dir.is_some() {
        Reason::Manual
    } else if Path::new(REPORTED).exists() {
        Reason::Timer
    } else {
        Reason::Boot
    });
    let mut rep = Report::of(
        &id,
        profile.as_deref(),
        reason,
        status,
        Some(&root),
        cmdline.is_some(),
    );
    if let Some(e) = &r.pull_error {
        rep.pull_failed(e);
    }
    if r.dry_run {
        return Ok(Sent {
            machine: id,
            public_key: None,
            key_made: false,
            url: None,
            report: Some(rep),
        });
    }
    let urls = urls_of(r, settings.as_ref())?;
    if urls.is_empty() {
        bail!("--url: where the build host takes reports (the base URL machines pull from)");
    }
    let mut made = false;
    let mut sealed_seq = 0;
    let body = writable(&mut || {
        let (k, m) = MachineKey::load_or_make(&root)?;
        made = m;
        let (b, seq) = report::seal(&root, &k, rep.clone())?;
        sealed_seq = seq;
        Ok(b)
    })?;
    rep.seq = sealed_seq;
    let url = report::send(&urls, &id, &body)?;
    if r.boot_dir.is_none() {
        let _ = std::fs::create_dir_all("/run/cairn");
        let _ = std::fs::write(REPORTED, b"");
        // The second serial port says it too, as it says CAIRN-BOOTED
        // (booted.sh): a headless machine's status line.
        say(&format!(
            "CAIRN-REPORTED image={} seq={sealed_seq} to {url}",
            rep.booted.as_deref().unwrap_or("-")
        ));
    }
    Ok(Sent {
        machine: id,
        public_key: None,
        key_made: made,
        url: Some(url),
        report: Some(rep),
    })
}

/// A line on the second serial port, when the machine has one.
fn say(line: &str) {
    use std::os::unix::fs::FileTypeExt;
    let port = Path::new("/dev/ttyS1");
    if std::fs::metadata(port).is_ok_and(|m| m.file_type().is_char_device())
        && let Ok(mut f) = {
            use std::os::unix::fs::OpenOptionsExt;
            // Never waiting for a carrier, never this process's terminal.
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(port)
        }
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

/// Where reports go: the request's URLs, else the image's fleet.urls.
fn urls_of(
    r: &ReportRequest,
    settings: Option<&crate::profile::FleetFile>,
) -> Result<Vec<RepoUrl>> {
    if !r.urls.is_empty() {
        return Ok(r.urls.clone());
    }
    settings
        .map(|s| s.fleet.urls.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|u| RepoUrl::parse(u).with_context(|| format!("fleet.urls: {u}")))
        .collect()
}

/// The boot partition reported on: a tree, or this machine's medium
/// (with the kernel command line that says it runs a cairn image).
fn open(r: &ReportRequest) -> Result<(PathBuf, Option<String>, Option<crate::live::BootMedium>)> {
    Ok(match &r.boot_dir {
        Some(d) => (d.clone(), None, None),
        None => {
            let cmdline = crate::image::boot_cmdline()?;
            if !cmdline.contains("cairn.image=") {
                bail!("not a running cairn image: name a boot partition's tree (--boot-dir DIR)");
            }
            let m = crate::live::BootMedium::find()?;
            (m.root.clone(), Some(cmdline), Some(m))
        }
    })
}

/// After a pull on a running machine: its report, best-effort (a report
/// that cannot be sent never fails the pull; it says why).
pub fn after_pull(key: &Path, error: Option<&anyhow::Error>) {
    let r = ReportRequest {
        boot_dir: None,
        machine_id: None,
        profile: None,
        urls: Vec::new(),
        reason: Some(Reason::Pull),
        key: key.to_path_buf(),
        pull_error: error.map(|e| format!("{e:#}")),
        print_key: false,
        dry_run: false,
    };
    match run(&r) {
        Ok(s) => crate::progress::note(&sent_line(&s)),
        Err(e) => crate::progress::note(&format!("cairn: the pull's report was not sent: {e:#}")),
    }
}

/// What a sent report is said as (on a machine's console too).
pub fn sent_line(s: &Sent) -> String {
    format!(
        "cairn: report {} of {} sent to {}",
        s.report.as_ref().map_or(0, |r| r.seq),
        s.machine,
        s.url.as_deref().unwrap_or("-")
    )
}
