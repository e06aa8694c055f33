//! The fleet's closed loop at the command line: `cairn report` (machines),
//! `cairn fleet enroll | ingest | status` and `cairn rollout status |
//! resume | abort` (the build host).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{Cli, parse_duration, show};
use crate::fleet::{inbox, report::Reason, reporter, rollout};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Report for a boot partition's tree at DIR instead of this machine.
    #[arg(long, value_name = "DIR")]
    pub boot_dir: Option<PathBuf>,
    /// Base URL the build host takes reports at (repeat: tried in order)
    /// [default: the image's fleet.urls].
    #[arg(long = "url", value_name = "URL", value_parser = super::repo_url)]
    pub urls: Vec<crate::mirror::url::RepoUrl>,
    /// The machine's id [default: its boot partition's UUID].
    #[arg(long, value_name = "ID")]
    pub machine_id: Option<String>,
    /// The profile it runs [default: the image's].
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Why [default: boot for a boot's first report, else timer].
    #[arg(long, value_enum)]
    pub reason: Option<Reason>,
    /// Public key images must be signed by (a file) [default: key.public,
    /// else /etc/cairn/signing.pub].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Print the machine's id and public key (made now if it has none),
    /// to enrol it on the build host; send nothing.
    #[arg(long)]
    pub print_key: bool,
    /// Print the report; send nothing.
    #[arg(long, conflicts_with = "print_key")]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Take a machine's reports from now on: its id and public key.
    ///
    /// `cairn disk create` enrols the disks it makes by itself; a machine
    /// whose key was made at its first report says its id and key with
    /// `cairn report --print-key`. Makes the machine's directory in the
    /// inbox (<store>/fleet/inbox/ID, owned like the inbox).
    Enroll(EnrollArgs),
    /// Take in the reports the web server received (cairn cycle does).
    ///
    /// Each report is checked: at most 64 KiB, signed by its machine's
    /// enrolled key, naming that machine, newer than the last one taken,
    /// not from the future. What fails is ignored, named and kept in
    /// <store>/fleet/refused.jsonl.
    Ingest,
    /// Every machine: profile, booted and next image, health, last report's age, rollout stage.
    Status(FleetStatusArgs),
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The machine's id (its boot partition's UUID).
    pub machine: String,
    /// Its public key (64 hex digits, from `cairn report --print-key`).
    #[arg(long, value_name = "HEX")]
    pub key: String,
    /// The profile it runs: its reports count in this profile's rollouts.
    #[arg(long, value_name = "PROFILE")]
    pub profile: String,
    /// Take a new key for a machine enrolled with another (a disk made again).
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args, Debug)]
pub struct FleetStatusArgs {
    /// A machine whose last report is older than this is stale.
    #[arg(long, default_value = "3h", value_name = "DURATION")]
    pub stale: String,
    /// Write a static HTML page of the fleet into DIR (index.html).
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Each profile's rollout: its stage, its machines' verdicts, a halt's reason.
    Status(RolloutArgs),
    /// Go on with a halted rollout at its stage (its failures so far waived).
    Resume(RolloutArgs),
    /// Stop a rollout: the version goes to no machine that lacks it.
    Abort(RolloutArgs),
}

#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// The profile [status: every profile with a rollout].
    pub profile: Option<String>,
    /// How long machines accept the index signed again.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub valid_for: String,
}

pub(super) fn run_report(cli: &Cli, a: &ReportArgs) -> Result<i32> {
    let key = crate::fleet::machine::machine_key(
        a.key
            .as_deref()
            .or(cli.config.settings.key.public.as_deref()),
        None,
    );
    let sent = reporter::run(&reporter::ReportRequest {
        boot_dir: a.boot_dir.clone(),
        machine_id: a.machine_id.clone(),
        profile: a.profile.clone(),
        urls: a.urls.clone(),
        reason: a.reason,
        key,
        pull_error: None,
        print_key: a.print_key,
        dry_run: a.dry_run,
    })?;
    show(cli, "report", &sent, |s| {
        if let Some(k) = &s.public_key {
            outln!("machine {} key {}", s.machine, k);
            if s.key_made {
                outln!(
                    "(made now: on the build host, cairn fleet enroll {} --key {k})",
                    s.machine
                );
            }
        } else if s.url.is_some() {
            outln!("{}", reporter::sent_line(s));
        } else if let Some(r) = &s.report {
            outln!("{}", serde_json::to_string_pretty(r)?);
        }
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn run_fleet(cli: &Cli, c: &FleetCommand) -> Result<i32> {
    match c {
        FleetCommand::Enroll(a) => {
            let e = inbox::enroll(&cli.store, &a.machine, &a.key, &a.profile, a.replace)?;
            show(cli, "enrolled", &e, |e| {
                outln!(
                    "enrolled {} ({})",
                    e.machine,
                    e.profile.as_deref().unwrap_or("any profile")
                );
                Ok(())
            })?;
            Ok(0)
        }
        FleetCommand::Ingest => {
            let r = inbox::ingest(&cli.store, crate::unix_now())?;
            show(cli, "ingested", &r, |r| {
                for (m, seq) in &r.taken {
                    outln!("took report {seq} of {m}");
                }
                for f in &r.refused {
                    outln!(
                        "{}",
                        super::printable_line(&format!("refused {}: {}", f.entry, f.reason))
                    );
                }
                Ok(())
            })?;
            Ok(0)
        }
        FleetCommand::Status(a) => {
            let stale = parse_duration(&a.stale)?;
            let s = crate::fleet::overview::overview(&cli.store, crate::unix_now(), stale)?;
            if let Some(dir) = &a.html {
                crate::fleet::overview::write_html(&cli.store, &s, dir)?;
            }
            show(cli, "fleet", &s, |s| {
                print_overview(s);
                Ok(())
            })?;
            Ok(0)
        }
    }
}

/// A rollout in one line: its state, stage, share, machines, why.
fn rollout_line(s: &rollout::RolloutStatus) -> String {
    let r = &s.rollout;
    super::printable_line(&format!(
        "{}/{}: {:?} at stage {} of {} ({}%, published {}%), {} machine(s) of the profile{}",
        r.profile,
        r.version,
        r.state,
        r.stage + 1,
        r.policy.stages.len(),
        r.stage_percent(),
        r.percent,
        s.machines,
        r.reason
            .as_deref()
            .map_or(String::new(), |w| format!(" — {w}"))
    ))
}

pub(super) fn run_rollout(cli: &Cli, c: &RolloutCommand) -> Result<i32> {
    let (a, now) = match c {
        RolloutCommand::Status(a) | RolloutCommand::Resume(a) | RolloutCommand::Abort(a) => {
            (a, crate::unix_now())
        }
    };
    let valid_for = parse_duration(&a.valid_for)?;
    let need = || {
        a.profile
            .clone()
            .ok_or_else(|| anyhow::anyhow!("PROFILE: which profile's rollout"))
    };
    let _lock = match c {
        RolloutCommand::Status(_) => None,
        _ => Some(crate::fleet::inbox::lock(&cli.store)?),
    };
    let changed = match c {
        RolloutCommand::Status(_) => None,
        RolloutCommand::Resume(_) => {
            let key = crate::trust::keys::load(&cli.store)?;
            Some(rollout::resume(&cli.store, &key, &need()?, valid_for, now)?)
        }
        RolloutCommand::Abort(_) => {
            let key = crate::trust::keys::load(&cli.store)?;
            Some(rollout::abort(&cli.store, &key, &need()?, valid_for, now)?)
        }
    };
    let profiles = match &a.profile {
        Some(p) => vec![p.clone()],
        None => rollout::profiles(&cli.store)?,
    };
    let mut all = Vec::new();
    for p in &profiles {
        if let Some(r) = rollout::current(&cli.store, p)? {
            all.push(rollout::status(&cli.store, &r)?);
        }
    }
    if a.profile.is_some() && all.is_empty() {
        anyhow::bail!("{}: no rollout", a.profile.as_deref().unwrap_or_default());
    }
    let _ = changed;
    show(cli, "rollouts", &all, |all| {
        for s in all {
            outln!("{}", rollout_line(s));
            for m in &s.in_stage {
                outln!(
                    "{}",
                    super::printable_line(&format!("  {} {}: {}", m.machine, m.verdict, m.detail))
                );
            }
        }
        Ok(())
    })?;
    Ok(0)
}

fn print_overview(o: &crate::fleet::overview::Overview) {
    let p = super::printable;
    let age = crate::fleet::overview::age;
    for m in &o.machines {
        outln!(
            "{}",
            p(&format!(
                "{} {}: runs {}, next {}, health {}, reported {}{}{}",
                m.machine,
                m.profile.as_deref().unwrap_or("?"),
                m.booted
                    .as_deref()
                    .or(m.last_good.as_deref())
                    .unwrap_or("?"),
                m.next_boot.as_deref().unwrap_or("the menu's default"),
                m.health,
                age(m.last_report_age_seconds),
                if m.stale { " STALE" } else { "" },
                m.rollout
                    .as_deref()
                    .map_or(String::new(), |r| format!("; rollout {r}"))
            ))
        );
    }
    for s in &o.rollouts {
        outln!("rollout {}", rollout_line(s));
    }
    for f in &o.refused {
        outln!(
            "{}",
            p(&format!("refused report {}: {}", f.entry, f.reason))
        );
    }
}
