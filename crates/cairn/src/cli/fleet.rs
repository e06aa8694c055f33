//! `cairn publish` (build host), `cairn pull` and `cairn status` (machines).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{Cli, show};
use crate::fleet::index::{PublishOptions, publish};
use crate::fleet::{PullRequest, Target};
use crate::progress::human_bytes;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Profiles whose index to write [default: every profile in the store].
    pub profiles: Vec<String>,
    /// How long machines accept the index: a number with s, m, h or d
    /// (7d, 12h, 3600s). Publish again before it runs out (the
    /// cairn-cycle timer does).
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub valid_for: String,
    /// VERSION=PERCENT: only that share of machines takes VERSION (chosen
    /// stably by machine id); kept by later publications until changed.
    /// VERSION=1,10,50,100: a rollout in stages that gates itself on the
    /// machines' reports (cairn rollout; cairn cycle advances it).
    #[arg(long = "rollout", value_name = "VERSION=PERCENT")]
    pub rollout: Vec<String>,
    /// With staged rollouts: percent of a stage's machines that must run
    /// the version healthy before the next stage.
    #[arg(long, default_value_t = 90, value_name = "PERCENT")]
    pub advance: u8,
    /// With staged rollouts: the rollout halts when more than this percent
    /// of a stage's machines report the version failed (a small stage:
    /// one machine).
    #[arg(long, default_value_t = 5, value_name = "PERCENT")]
    pub halt: u8,
    /// With staged rollouts: the least time a stage lasts.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub soak: String,
    /// Print an nginx server block that serves this store (images/ and
    /// mirror/, read-only, nothing else) on ADDRESS:PORT; publish nothing.
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub nginx_config: Option<String>,
    /// Print an nginx edge cache (proxy_cache) on ADDRESS:PORT in front of
    /// the store's server at --origin; publish nothing.
    #[arg(
        long,
        value_name = "ADDRESS:PORT",
        requires = "origin",
        conflicts_with = "nginx_config"
    )]
    pub nginx_edge_config: Option<String>,
    /// The store's server, for --nginx-edge-config (its base URL).
    #[arg(long, value_name = "URL")]
    pub origin: Option<String>,
    /// Where the edge keeps its cache, for --nginx-edge-config.
    #[arg(long, value_name = "DIR", default_value = "/var/cache/nginx/cairn")]
    pub cache_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Base URL of the published store (repeat: tried in order)
    /// [default: the image's fleet.urls].
    #[arg(long = "url", value_name = "URL", value_parser = super::repo_url)]
    pub urls: Vec<crate::mirror::url::RepoUrl>,
    /// Profile to pull [default: the running image's].
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Pull onto the boot partition of this cairn disk (an image file or
    /// a block device) [default: this machine's boot medium].
    pub disk: Option<PathBuf>,
    /// Pull onto a boot partition's tree at DIR instead of this machine's.
    #[arg(long, conflicts_with = "disk", value_name = "DIR")]
    pub boot_dir: Option<PathBuf>,
    /// Public key images must be signed by (a file) [default: key.public;
    /// for a DISK, the store's key where it has one; else
    /// /etc/cairn/signing.pub].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// This machine's id for staged rollouts [default: its boot partition's UUID].
    #[arg(long, value_name = "ID")]
    pub machine_id: Option<String>,
    /// What to do once the image is staged (stage, reboot, kexec,
    /// soft-reboot, window, apply-live) [default: fleet.policy, of the
    /// configuration or the image].
    #[arg(long, value_parser = parse_policy, value_name = "POLICY")]
    pub policy: Option<crate::profile::Policy>,
    /// Concurrent downloads, 1 to 256.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = super::parse_jobs)]
    pub jobs: usize,
    /// Check the index and say what would be fetched; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct CycleArgs {
    /// Read [cycle] from this file (and its .d drop-ins) instead of the
    /// host's configuration (profiles = [...], valid-for, sync, mirror-config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only take in the machines' reports and advance or halt rollouts (no
    /// sync, no build): what a short timer runs between rounds.
    #[arg(long)]
    pub gate_only: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The boot partition of this cairn disk (an image file or a block
    /// device) [default: this machine's boot medium].
    pub disk: Option<PathBuf>,
    /// The boot partition's tree at DIR instead of this machine's.
    #[arg(long, conflicts_with = "disk", value_name = "DIR")]
    pub boot_dir: Option<PathBuf>,
    /// Public key images must be signed by (a file) [default: key.public;
    /// for a DISK or --boot-dir, the store's key where it has one; else
    /// /etc/cairn/signing.pub].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<crate::profile::Policy, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s}: stage, reboot, kexec, soft-reboot, window or apply-live"))
}

pub use crate::fleet::parse_duration;

/// `publish --rollout VERSION=STAGES`: staged rollouts started.
fn start_staged(
    cli: &Cli,
    a: &PublishArgs,
    key: &crate::trust::keys::SigningKey,
    profiles: &[String],
    staged: Vec<(String, Vec<u8>)>,
    o: &PublishOptions,
) -> Result<i32> {
    let [profile] = profiles else {
        bail!("--rollout VERSION=STAGES: name the one profile it is of");
    };
    let mut started = Vec::new();
    for (v, stages) in staged {
        let policy = crate::profile::RolloutPolicy {
            stages,
            advance: a.advance,
            halt: a.halt,
            soak: a.soak.clone(),
        };
        let r = crate::fleet::rollout::start(
            &cli.store,
            key,
            profile,
            &v,
            &policy,
            o.valid_for,
            o.now,
        )?;
        started.push(crate::fleet::rollout::status(&cli.store, &r)?);
    }
    show(cli, "rollouts", &started, |all| {
        for s in all {
            outln!(
                "{}/{}: rollout started, stage 1 of {} ({}%) published at {}%: {} of the profile's {} machine(s)",
                s.rollout.profile,
                s.rollout.version,
                s.rollout.policy.stages.len(),
                s.rollout.stage_percent(),
                s.rollout.percent,
                s.in_stage.len(),
                s.machines
            );
        }
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn run_publish(cli: &Cli, a: &PublishArgs) -> Result<i32> {
    if let Some(listen) = &a.nginx_config {
        let store = std::path::absolute(&cli.store)?;
        let text = crate::fleet::serve::nginx_server(&store, listen)?;
        // Debian's nginx runs its workers as www-data: a directory they
        // cannot enter is a 403 for every machine. Said, not fixed: the
        // directories are the admin's.
        let closed = crate::fleet::serve::closed_to_workers(&store);
        if !closed.is_empty() {
            crate::progress::note(&format!(
                "warning: a web server's workers (www-data on Debian) cannot enter {}: every request would be refused (403); allow others to enter them (chmod o+x) or move the store",
                closed.join(", ")
            ));
        }
        super::print_text(cli, "nginx-config", &text)?;
        return Ok(0);
    }
    if let (Some(listen), Some(origin)) = (&a.nginx_edge_config, &a.origin) {
        let text = crate::fleet::serve::nginx_edge(origin, listen, &a.cache_dir)?;
        super::print_text(cli, "nginx-config", &text)?;
        return Ok(0);
    }
    let key = crate::trust::keys::load(&cli.store)?;
    let _lock = crate::fleet::inbox::lock(&cli.store)?;
    let mut rollout: BTreeMap<String, u8> = BTreeMap::new();
    let mut staged = Vec::new();
    for r in &a.rollout {
        let (v, p) = r
            .split_once('=')
            .with_context(|| format!("--rollout {r}: VERSION=PERCENT"))?;
        if p.contains(',') {
            // VERSION=1,10,50,100: a rollout that gates itself.
            let stages = p
                .split(',')
                .map(|s| s.trim_end_matches('%').parse::<u8>())
                .collect::<Result<Vec<u8>, _>>()
                .ok()
                .with_context(|| {
                    format!("--rollout {r}: VERSION=STAGE,STAGE,…,100 (percentages)")
                })?;
            staged.push((v.to_string(), stages));
            continue;
        }
        let p: u8 = p
            .trim_end_matches('%')
            .parse()
            .ok()
            .filter(|p| *p <= 100)
            .with_context(|| format!("--rollout {r}: a percentage 0 to 100"))?;
        rollout.insert(v.to_string(), p);
    }
    let mut profiles = a.profiles.clone();
    if profiles.is_empty() {
        profiles = crate::image::list(&cli.store)?
            .into_iter()
            .map(|e| e.profile)
            .collect();
        profiles.dedup();
        if profiles.is_empty() {
            bail!("no images in {} to publish", cli.store.display());
        }
    }
    let o = PublishOptions {
        valid_for: parse_duration(&a.valid_for)?,
        rollout,
        now: crate::unix_now(),
    };
    if !staged.is_empty() {
        return start_staged(cli, a, &key, &profiles, staged, &o);
    }
    let mut all = Vec::new();
    for p in &profiles {
        let o = crate::fleet::rollout::with_shares(&cli.store, p, &o)?;
        all.push(publish(&cli.store, &key, p, &o).with_context(|| format!("publishing {p}"))?);
    }
    show(cli, "indices", &all, |all| {
        for i in all {
            outln!(
                "{}: serial {}, {} version(s), newest {}, valid until {}",
                i.profile,
                i.serial,
                i.versions.len(),
                i.versions
                    .first()
                    .map_or("-".into(), |v| format!("{} ({}%)", v.version, v.rollout)),
                cairn_debian::date::format_release_date(i.expires)
            );
        }
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn run_pull(cli: &Cli, a: &PullArgs) -> Result<i32> {
    let target = match (&a.boot_dir, &a.disk) {
        (Some(d), _) => Target::Dir(d.clone()),
        (None, Some(d)) => Target::Disk {
            disk: d.clone(),
            store: cli.store.clone(),
        },
        (None, None) => Target::Running,
    };
    let running = matches!(target, Target::Running) && !a.dry_run;
    let report_key = crate::fleet::machine::machine_key(
        a.key
            .as_deref()
            .or(cli.config.settings.key.public.as_deref()),
        None,
    );
    let pulled = crate::fleet::run_pull(&PullRequest {
        target,
        urls: a.urls.clone(),
        profile: a.profile.clone(),
        key: a
            .key
            .clone()
            .or_else(|| cli.config.settings.key.public.clone()),
        machine_id: a.machine_id.clone(),
        policy: a.policy,
        jobs: a.jobs,
        dry_run: a.dry_run,
    });
    // A running machine tells the build host what its pull did (or why it
    // failed) before the policy acts: a switch ends this system.
    if running {
        crate::fleet::reporter::after_pull(&report_key, pulled.as_ref().err());
    }
    let mut r = pulled?;
    // What the pull did is said before the policy acts (a switch ends
    // this system): under --json the document, its action the switch
    // about to happen.
    if !cli.json {
        print_pull(&r.report)?;
    }
    let document = |r: &crate::fleet::PullResult| -> Result<()> {
        outln!(
            "{}",
            serde_json::to_string_pretty(&super::envelope("pull", r)?)?
        );
        super::document_sent();
        Ok(())
    };
    let mut announced = false;
    crate::fleet::act(&mut r, |r| {
        if cli.json {
            announced = document(r).is_ok();
        }
    })?;
    if cli.json {
        if !announced {
            document(&r)?;
        }
    } else if let Some(a) = &r.action {
        outln!(
            "  policy {}: {}{}",
            a.policy,
            a.did,
            a.detail
                .as_deref()
                .map_or(String::new(), |d| format!(" — {d}"))
        );
    }
    Ok(0)
}

fn print_pull(p: &crate::fleet::pull::PullReport) -> Result<()> {
    for u in &p.passed_over {
        outln!("passed over {u}");
    }
    outln!(
        "{}: index serial {} from {}: {}",
        p.profile,
        p.serial,
        p.url.as_deref().unwrap_or("-"),
        serde_json::to_value(p.outcome)?.as_str().unwrap_or("")
    );
    if let Some(v) = &p.version {
        outln!(
            "  {v}: {} file(s) fetched ({}), {} reused from the disk ({})",
            p.files_fetched,
            human_bytes(p.bytes_fetched),
            p.files_reused,
            human_bytes(p.bytes_reused)
        );
    }
    if let Some(e) = &p.entry {
        outln!(
            "  default on trial: {e}{}",
            p.tries.map_or(String::new(), |t| format!(" ({t} tries)"))
        );
    }
    for d in &p.removed {
        outln!("  removed {d}");
    }
    Ok(())
}

pub(super) fn run_cycle(cli: &Cli, a: &CycleArgs) -> Result<i32> {
    let config = match &a.config {
        Some(f) => crate::fleet::cycle::load(&crate::config::Config::load(f)?),
        None => crate::fleet::cycle::load(&cli.config),
    };
    let r = if a.gate_only {
        // The gate needs no profiles: the index lifetime of [cycle] when
        // there is one.
        let valid_for = config.map_or_else(|_| "7d".to_string(), |c| c.valid_for);
        crate::fleet::cycle::gate_only(&cli.store, &valid_for, cli.quiet())?
    } else {
        let c = config?;
        crate::fleet::cycle::cycle(&cli.store, &c, cli.quiet())?
    };
    show(cli, "cycle", &r, |r| {
        if let Some(s) = &r.synced {
            outln!(
                "mirror: {} package(s), {} fetched{}",
                s.packages,
                human_bytes(s.fetched_bytes),
                if s.up_to_date { " (up to date)" } else { "" }
            );
        }
        for i in &r.images {
            outln!(
                "{}: {} {}",
                i.profile,
                i.action,
                i.version.as_deref().unwrap_or("-")
            );
        }
        for i in &r.published {
            outln!(
                "{}: published serial {}, valid until {}",
                i.profile,
                i.serial,
                cairn_debian::date::format_release_date(i.expires)
            );
        }
        for (m, seq) in &r.reports.taken {
            outln!("report {seq} of {m} taken");
        }
        for f in &r.reports.refused {
            outln!(
                "{}",
                super::printable_line(&format!("report {} refused: {}", f.entry, f.reason))
            );
        }
        for s in &r.rollouts {
            outln!(
                "{}",
                super::printable_line(&format!(
                    "rollout {}/{}: {} — {}",
                    s.profile, s.version, s.did, s.detail
                ))
            );
        }
        outln!("cycle done in {:.0}s", r.seconds);
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn run_status(cli: &Cli, a: &StatusArgs) -> Result<i32> {
    let elsewhere = a.disk.is_some() || a.boot_dir.is_some();
    let key = crate::fleet::machine::machine_key(
        a.key
            .as_deref()
            .or(cli.config.settings.key.public.as_deref()),
        elsewhere.then_some(cli.store.as_path()),
    );
    let mut mounted = None;
    let mut medium = None;
    let (root, cmdline) = match (&a.boot_dir, &a.disk) {
        (Some(d), _) => (Some(d.clone()), None),
        (None, Some(d)) => {
            let m = crate::boot::disk::MountedBoot::mount_ro(d, &cli.store)?;
            let r = m.dir.clone();
            mounted = Some(m);
            (Some(r), None)
        }
        (None, None) => {
            let cmdline = crate::image::boot_cmdline()?;
            if !cmdline.contains("cairn.image=") {
                bail!(
                    "not a running cairn image (no cairn.image= on the kernel command line): name a disk (cairn status DISK: an image file or a block device) or a boot partition's tree (--boot-dir DIR)"
                );
            }
            medium = crate::live::BootMedium::find().ok();
            (medium.as_ref().map(|m| m.root.clone()), Some(cmdline))
        }
    };
    let s = crate::fleet::status::status(root.as_deref(), cmdline.as_deref(), &key)?;
    drop(medium);
    drop(mounted);
    // grubenv and the pull state are the boot partition's: anyone who can
    // write it chose those strings.
    macro_rules! out {
        ($($t:tt)*) => {
            outln!("{}", super::printable(&format!($($t)*)))
        };
    }
    show(cli, "status", &s, |s| {
        if let Some(b) = &s.booted {
            out!(
                "booted:     {} from {} (entry {})",
                b.image,
                b.from,
                b.entry.as_deref().unwrap_or("?")
            );
        }
        if let Some(h) = &s.health {
            out!("health:     {h}");
        }
        out!(
            "next boot:  {}",
            s.next_boot
                .as_deref()
                .unwrap_or("the signed menu's default")
        );
        if let Some(t) = &s.on_trial {
            if s.trial_passed {
                out!("trial:      {t} (passed)");
            } else {
                out!(
                    "trial:      {t} ({} tries left)",
                    s.tries_left.map_or("?".into(), |n| n.to_string())
                );
            }
        }
        if let Some(g) = &s.last_good {
            out!("last good:  {g}");
        }
        if let Some(r) = &s.refused {
            out!("refused:    {r} (at its last boot)");
        }
        out!("images on the boot disk:");
        for i in &s.images {
            let mut marks = Vec::new();
            for (on, m) in [
                (i.booted, "booted"),
                (i.on_trial, "on trial"),
                (i.last_good, "last good"),
                (!i.signed, "NOT SIGNED"),
            ] {
                if on {
                    marks.push(m);
                }
            }
            out!("  {}/{}  {}", i.profile, i.version, marks.join(", "));
        }
        if let Some(p) = &s.last_pull {
            out!(
                "last pull:  {} {}: {} ({} fetched)",
                cairn_debian::date::format_release_date(p.at),
                p.version.as_deref().or(p.newest.as_deref()).unwrap_or("-"),
                serde_json::to_value(p.outcome)?.as_str().unwrap_or(""),
                human_bytes(p.bytes_fetched)
            );
        }
        if let Some(a) = &s.last_apply_live {
            out!(
                "last apply-live: {} → {}",
                a["from"].as_str().unwrap_or("?"),
                a["to"].as_str().unwrap_or("?")
            );
        }
        Ok(())
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86400);
        assert_eq!(parse_duration("30min").unwrap(), 1800);
        assert_eq!(parse_duration("3600").unwrap(), 3600);
        for bad in ["", "d", "7 d", "-1h", "99999999999999999999d", "5y"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
