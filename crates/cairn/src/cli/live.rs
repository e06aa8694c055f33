//! `cairn apply-live` and `cairn reboot` (on a running cairn system).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Cli, show};

#[derive(Args, Debug)]
pub struct LiveTarget {
    /// PROFILE/VERSION or a VERSION of the running profile [default: its newest image].
    pub image: Option<String>,
    /// Public key to verify with (a file) [default: key.public, or
    /// /etc/cairn/signing.pub].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Check and show, change nothing (reboot --kexec: load, then unload).
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ApplyLiveArgs {
    #[command(flatten)]
    pub target: LiveTarget,
    /// Take the packages from this system's own apt sources (a fleet
    /// machine's: the published mirror over HTTP) instead of the store's
    /// mirror.
    #[arg(long)]
    pub system_sources: bool,
}

#[derive(Args, Debug)]
pub struct RebootArgs {
    #[command(flatten)]
    pub target: LiveTarget,
    /// Switch kernels with kexec (falls back to a normal reboot).
    #[arg(long)]
    pub kexec: bool,
    /// Switch userspace only, keeping the running kernel (systemd's
    /// soft-reboot, systemd 254 or newer: Debian 13), when the image has
    /// the same kernel: its layers are mounted through dm-verity with their
    /// signed root hashes under a new RAM overlay, then every service
    /// restarts in it. Otherwise `auto` (the default) falls back to kexec,
    /// then to a reboot; `required` refuses and changes nothing.
    #[arg(
        long,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "auto"
    )]
    pub soft: Option<crate::live::SoftMode>,
    /// Boot the in-RAM (toram) entry.
    #[arg(long)]
    pub ram: bool,
}

pub(super) fn run_apply_live(cli: &Cli, args: &ApplyLiveArgs) -> Result<i32> {
    let a = &args.target;
    let key = a
        .key
        .clone()
        .or_else(|| cli.config.settings.key.public.clone());
    let r = crate::live::apply_live(&crate::live::ApplyOptions {
        store: &cli.store,
        image: a.image.as_deref(),
        key: key.as_deref(),
        dry_run: a.dry_run,
        apt: if args.system_sources {
            crate::live::AptFrom::System
        } else {
            crate::live::AptFrom::Store
        },
    })?;
    show(cli, "result", &r, |r| {
        outln!(
            "{} → {}{}: {} package change(s)",
            r.from,
            r.to,
            if r.dry_run { " (dry run)" } else { "" },
            r.changes.len()
        );
        for c in &r.changes {
            match (&c.from, &c.to) {
                (None, Some(t)) => outln!("  + {} {t}", c.package),
                (Some(f), None) => outln!("  - {} {f}", c.package),
                (Some(f), Some(t)) => outln!("  ~ {} {f} → {t}", c.package),
                _ => {}
            }
        }
        for d in &r.deferred {
            outln!("next boot: {d}");
        }
        for d in &r.differs {
            outln!("differs from the image: {d}");
        }
        if !r.dry_run {
            outln!(
                "applied in {:.1}s; recorded in {}",
                r.seconds,
                crate::live::APPLIED_LOG
            );
        }
        Ok(())
    })?;
    Ok(if r.differs.is_empty() { 0 } else { 1 })
}

pub(super) fn run_reboot(cli: &Cli, args: &RebootArgs) -> Result<i32> {
    let a = &args.target;
    let key = a
        .key
        .clone()
        .or_else(|| cli.config.settings.key.public.clone());
    let r = crate::live::reboot(&crate::live::RebootOptions {
        store: &cli.store,
        image: a.image.as_deref(),
        kexec: args.kexec,
        soft: args.soft,
        ram: args.ram,
        key: key.as_deref(),
        dry_run: a.dry_run,
    })?;
    show(cli, "result", &r, |r| {
        outln!(
            "{} {} (entry {}){}",
            if a.dry_run { "would boot" } else { "booting" },
            r.image,
            r.entry,
            match r.method.as_str() {
                "kexec" => " with kexec",
                "soft-reboot" => " with a soft reboot (the kernel stays)",
                _ => " through the firmware",
            }
        );
        if let Some(f) = &r.soft_fallback {
            outln!("no soft reboot: {f}");
        }
        if let Some(f) = &r.kexec_fallback {
            outln!("no kexec: {f}");
        }
        if let Some(c) = &r.command_line {
            outln!("command line: {c}");
        }
        Ok(())
    })?;
    Ok(0)
}
