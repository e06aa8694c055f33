//! `cairn vm run`.

use std::path::PathBuf;

use std::os::unix::fs::FileTypeExt;

use anyhow::Result;
use clap::Subcommand;

use super::{Cli, show};

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Boot a disk image or ISO in qemu (KVM when it works here, TCG
    /// otherwise), serial console to a log file, until the VM powers off, a
    /// marker line appears, or the timeout.
    Run {
        /// The disk: a raw disk image file, or an ISO (none with --netboot).
        #[arg(required_unless_present = "netboot", value_name = "DISK")]
        media: Option<PathBuf>,
        /// The machine's firmware.
        #[arg(long, value_enum, default_value = "bios")]
        firmware: crate::vm::Firmware,
        /// auto: KVM if /dev/kvm works and the guest shows output within 20 s,
        /// else TCG (nested KVM often fails or crawls).
        #[arg(long, value_enum, default_value = "auto")]
        accel: crate::vm::Accel,
        /// The machine's memory in MiB.
        #[arg(long, default_value_t = 2048, value_name = "MIB")]
        memory: u32,
        /// Seconds before the VM is stopped.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
        /// Wait for a console line starting with this (e.g. CAIRN-BOOTED).
        #[arg(long, value_name = "TEXT")]
        marker: Option<String>,
        /// Ask a cairn image to power off once booted (via SMBIOS serial).
        #[arg(long)]
        poweroff: bool,
        /// Boot this menu entry of a cairn disk (its id, e.g. `web-20261126T015228Z`
        /// or `rollback>web-…`; see `cairn boot menu --json`), via SMBIOS serial.
        #[arg(long, value_name = "ID")]
        entry: Option<String>,
        /// Let the VM reboot (boot counting); by default a reboot ends the run.
        #[arg(long)]
        reboots: bool,
        /// UEFI with Secure Boot enforced. The firmware trusts Debian's OVMF
        /// test key ("snakeoil", /usr/share/ovmf/PkKek-1-snakeoil.*) unless
        /// --own-cert or --mok-cert says otherwise.
        #[arg(long)]
        secure_boot: bool,
        /// Secure Boot: this certificate (PEM or DER) alone enrolled as PK,
        /// KEK and db — a machine that trusts only your key.
        #[arg(
            long,
            requires = "secure_boot",
            conflicts_with = "mok_cert",
            value_name = "FILE"
        )]
        own_cert: Option<PathBuf>,
        /// Secure Boot: Microsoft's keys enrolled (as on most machines) and
        /// this certificate in shim's MOK list — for disks made with --shim.
        #[arg(long, requires = "secure_boot", value_name = "FILE")]
        mok_cert: Option<PathBuf>,
        /// Directory for console.log and marker.log.
        #[arg(long, default_value = "/var/tmp/cairn-vm", value_name = "DIR")]
        log_dir: PathBuf,
        /// Attach a read-only disk made of this directory (ext4, label
        /// `cairn-store`): e.g. a store holding `mirror/`, for `cairn
        /// apply-live` in the guest (`mount LABEL=cairn-store /srv/cairn`).
        #[arg(long, value_name = "DIR")]
        attach_dir: Option<PathBuf>,
        /// Attach this raw disk image read-only too (repeatable): a second
        /// medium beside the boot disk, as a USB stick would be.
        #[arg(long, value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// Time when a console line starting with this first appears
        /// (repeatable; `events` in --json).
        #[arg(long, value_name = "TEXT")]
        event: Vec<String>,
        /// A network card on qemu's user network: the guest reaches the
        /// host's 127.0.0.1 at 10.0.2.2 (a store served there, say).
        #[arg(long)]
        net: bool,
        /// Boot from the network: qemu's user network answers DHCP and
        /// serves DIR over TFTP (core.0 for BIOS, grubx64.efi for UEFI — the
        /// store's netboot/ from `cairn netboot`); the guest reaches the
        /// host's 127.0.0.1 at 10.0.2.2.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["media", "net"])]
        netboot: Option<PathBuf>,
    },
}

pub(super) fn run_vm(cli: &Cli, c: &VmCommand) -> Result<i32> {
    let VmCommand::Run {
        media,
        firmware,
        accel,
        memory,
        timeout,
        marker,
        poweroff,
        entry,
        reboots,
        secure_boot,
        own_cert,
        mok_cert,
        log_dir,
        attach_dir,
        attach: disks,
        event,
        net,
        netboot,
    } = c;
    named_inputs_exist(media, disks, own_cert, mok_cert, attach_dir, netboot)?;
    let mut attach = disks.clone();
    if let Some(d) = attach_dir {
        crate::fsutil::own_dir(log_dir)?;
        let disk = log_dir.join("attached.img");
        crate::vm::dir_disk(d, &disk, "cairn-store")?;
        attach.push(disk);
    }
    let spec = crate::vm::VmSpec {
        media: media.clone(),
        firmware: if *secure_boot {
            crate::vm::Firmware::Uefi
        } else {
            *firmware
        },
        accel: *accel,
        memory_mb: *memory,
        timeout: std::time::Duration::from_secs(*timeout),
        smbios_serial: match (poweroff, entry) {
            (true, Some(e)) => Some(format!("cairn-test-poweroff:{e}")),
            (true, None) => Some("cairn-test-poweroff".to_string()),
            (false, Some(e)) => Some(format!("cairn-entry:{e}")),
            (false, None) => None,
        },
        reboots: *reboots,
        secure_boot: *secure_boot,
        secure_boot_keys: match (own_cert, mok_cert) {
            (Some(c), _) => crate::vm::SecureBootKeys::Own(c.clone()),
            (None, Some(c)) => crate::vm::SecureBootKeys::Mok(c.clone()),
            (None, None) => crate::vm::SecureBootKeys::Snakeoil,
        },
        log_dir: log_dir.clone(),
        marker: marker.clone(),
        attach,
        events: event.clone(),
        net: *net,
        netboot: netboot.clone(),
    };
    let r = crate::vm::run(&spec)?;
    let what = match (media, netboot) {
        (Some(m), _) => m.display().to_string(),
        (None, Some(d)) => format!("network boot from {}", d.display()),
        (None, None) => String::new(),
    };
    show(cli, "vm", &r, |r| {
        if let Some(why) = &r.kvm_fallback {
            outln!("KVM not usable here ({why}): ran under TCG");
        }
        match (&r.marker_line, r.seconds_to_marker) {
            (Some(l), Some(t)) => outln!("{l}  ({t:.1}s after start)"),
            _ if marker.is_some() => outln!("no marker line seen"),
            _ => {}
        }
        outln!(
            "{} {:?}/{:?}: {} after {:.1}s; console log {}",
            what,
            r.firmware,
            r.accel,
            if r.timed_out {
                "timed out"
            } else if r.exited {
                "powered off"
            } else {
                "stopped at the marker"
            },
            r.seconds,
            r.console_log.display()
        );
        Ok(())
    })?;
    if let (Some(m), None) = (marker, &r.marker_line) {
        missed_marker(&what, m, *timeout, &r);
        return Ok(1);
    }
    Ok(0)
}

/// What the user named is checked before qemu starts, and named as given.
fn named_inputs_exist(
    media: &Option<PathBuf>,
    disks: &[PathBuf],
    own_cert: &Option<PathBuf>,
    mok_cert: &Option<PathBuf>,
    attach_dir: &Option<PathBuf>,
    netboot: &Option<PathBuf>,
) -> Result<()> {
    for (what, p) in media
        .iter()
        .map(|m| ("the disk", m))
        .chain(disks.iter().map(|d| ("--attach", d)))
        .chain(own_cert.iter().map(|c| ("--own-cert", c)))
        .chain(mok_cert.iter().map(|c| ("--mok-cert", c)))
    {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
            Ok(_) => anyhow::bail!("{what} {}: not a file", p.display()),
            Err(e) => anyhow::bail!("{what} {}: {e}", p.display()),
        }
    }
    for (what, p) in attach_dir
        .iter()
        .map(|d| ("--attach-dir", d))
        .chain(netboot.iter().map(|d| ("--netboot", d)))
    {
        if !p.is_dir() {
            anyhow::bail!("{what} {}: no such directory", p.display());
        }
    }
    Ok(())
}

/// Says that the marker never came, and what the console said last.
fn missed_marker(what: &str, m: &str, timeout: u64, r: &crate::vm::VmResult) {
    // What a slow or stuck boot was doing: the last lines.
    eprintln!(
        "cairn: {}: no line starting with {m:?} after {:.1}s ({}); last console lines ({}):\n{}",
        what,
        r.seconds,
        if r.timed_out {
            format!("timeout {timeout}s")
        } else {
            "the VM stopped".to_string()
        },
        r.console_log.display(),
        crate::vm::last_lines(&r.console_log, 25)
    );
}
