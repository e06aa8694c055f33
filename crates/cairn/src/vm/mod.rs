//! Booting a disk image or ISO in qemu for tests and the demo: BIOS
//! (SeaBIOS) or UEFI (OVMF), serial console to a file, a second serial port
//! for markers, a timeout, never a hang. TCG unless KVM is asked for (nested
//! KVM is broken on many CI hosts: OVMF dies, SeaBIOS crawls).

pub mod efivars;

use fs_err as fs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cmd::tool::{MKFS_EXT4, QEMU};
use crate::cmd::{Cmd, require};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Secure Boot: OVMF that enforces it (needs SMM, so q35), and Debian's
/// variable store with its test ("snakeoil") key enrolled as PK, KEK and db;
/// that key is /usr/share/ovmf/PkKek-1-snakeoil.{key,pem}.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// Microsoft's keys enrolled (what most machines ship with): shim, signed by
/// Microsoft's UEFI CA, boots; it then trusts the MOK list.
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// Whose keys a Secure Boot VM's firmware trusts.
#[derive(Debug, Clone, Default)]
pub enum SecureBootKeys {
    /// Debian's test key as PK, KEK and db (OVMF_VARS_SNAKEOIL).
    #[default]
    Snakeoil,
    /// This certificate alone as PK, KEK and db (the user's own db key).
    Own(PathBuf),
    /// Microsoft's keys, and this certificate in shim's MOK list.
    Mok(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    /// KVM when /dev/kvm works and the guest shows output within 20 s under
    /// it; TCG otherwise (nested KVM often dies or crawls).
    Auto,
    Tcg,
    Kvm,
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    /// A disk image (raw) or an ISO (by extension); none for a network boot.
    pub media: Option<PathBuf>,
    pub firmware: Firmware,
    pub accel: Accel,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// Written to qemu's SMBIOS system serial: `cairn-test-poweroff` makes a
    /// cairn image power off after its boot marker.
    pub smbios_serial: Option<String>,
    /// UEFI with Secure Boot enforced.
    pub secure_boot: bool,
    /// The keys its firmware trusts (with `secure_boot`).
    pub secure_boot_keys: SecureBootKeys,
    /// Let the guest reboot (boot counting) instead of ending the run.
    pub reboots: bool,
    /// Where console.log and marker.log go.
    pub log_dir: PathBuf,
    /// Stop as soon as a line starting with this appears.
    pub marker: Option<String>,
    /// Extra raw disks, attached read-only after the boot disk.
    pub attach: Vec<PathBuf>,
    /// Line prefixes whose first appearance is timed (`events` in the result).
    pub events: Vec<String>,
    /// A network card on qemu's user network: the guest gets an address by
    /// DHCP and reaches the host's 127.0.0.1 at 10.0.2.2.
    pub net: bool,
    /// Boot from the network: this directory served by qemu's TFTP, the
    /// firmware's file in it (core.0 or grubx64.efi) as the boot file.
    pub netboot: Option<PathBuf>,
}

/// A read-only ext4 disk image of `dir` labelled `label` (how a VM gets the
/// mirror: no network, no shared-folder driver needed in the guest kernel).
pub fn dir_disk(dir: &Path, out: &Path, label: &str) -> Result<()> {
    require(&[&MKFS_EXT4])?;
    let out_s = Cmd::new("du")
        .args(["-sk", "--apparent-size"])
        .arg(dir)
        .run()?;
    let kb: u64 = String::from_utf8_lossy(&out_s.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du gave no size")?;
    let bytes = (kb * 1024) * 11 / 10 + (64 << 20);
    let _ = fs::remove_file(out);
    fs::File::create(out)?.set_len(bytes)?;
    Cmd::new(MKFS_EXT4.program)
        .args(["-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(out)
        .run()
        .with_context(|| format!("making a disk of {}", dir.display()))?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct VmResult {
    pub firmware: Firmware,
    pub accel: Accel,
    /// The first marker line seen, if any.
    pub marker_line: Option<String>,
    pub seconds_to_marker: Option<f64>,
    pub seconds: f64,
    /// The VM powered off (or rebooted, with -no-reboot) by itself; when
    /// neither this nor `timed_out`, it was stopped at the marker.
    pub exited: bool,
    pub timed_out: bool,
    pub console_log: PathBuf,
    pub marker_log: PathBuf,
    /// Seconds after start at which each `events` prefix first began a line.
    pub events: BTreeMap<String, f64>,
    /// Why KVM was given up for TCG (`--accel auto`).
    pub kvm_fallback: Option<String>,
}

/// qemu's arguments, gathered before it is started.
#[derive(Default)]
struct Argv(Vec<std::ffi::OsString>);

impl Argv {
    fn arg(&mut self, a: impl AsRef<std::ffi::OsStr>) -> &mut Argv {
        self.0.push(a.as_ref().to_owned());
        self
    }

    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&mut self, a: I) -> &mut Argv {
        self.0.extend(a.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }
}

/// The text without terminal escape sequences (GRUB and firmware clear and
/// position the screen).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `n` lines of a log, escape sequences removed.
pub fn last_lines(log: &Path, n: usize) -> String {
    let text = strip_ansi(&String::from_utf8_lossy(&fs::read(log).unwrap_or_default()));
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first line of the logs that starts with `marker`, or that holds
/// the kernel's time stamp and `marker` (the initramfs writes to /dev/kmsg
/// as well: the kernel's copy runs whole to the line's end, while it may
/// cut the console's copy in two, anywhere). Terminal escape sequences are
/// not text. Only whole lines count while the guest still writes (a serial
/// port delivers a line in pieces: half a line is not the line);
/// `finished` counts a last line without its end too.
fn find_marker(logs: &[&Path], marker: &str, finished: bool) -> Option<String> {
    // `[   12.706281] marker...` from its `[` on: what follows the stamp.
    let stamped = |t: &str| -> Option<String> {
        let (stamp, rest) = t.strip_prefix('[')?.split_once("] ")?;
        let digits = stamp.trim();
        (!digits.is_empty()
            && digits.bytes().all(|b| b == b'.' || b.is_ascii_digit())
            && rest.starts_with(marker))
        .then(|| rest.to_string())
    };
    for l in logs {
        let Ok(data) = fs::read(l) else {
            continue;
        };
        let text = strip_ansi(&String::from_utf8_lossy(&data));
        let whole = match text.rfind(['\n', '\r']) {
            _ if finished => &text[..],
            Some(end) => &text[..end],
            None => "",
        };
        let line = whole.split(['\n', '\r']).find_map(|x| {
            if x.starts_with(marker) {
                return Some(x.to_string());
            }
            x.match_indices('[').find_map(|(i, _)| stamped(&x[i..]))
        });
        if let Some(line) = line {
            return Some(line.trim().to_string());
        }
    }
    None
}

/// How long a KVM guest may stay silent before `auto` gives up on it.
const KVM_PROBE: Duration = Duration::from_secs(20);

pub fn run(spec: &VmSpec) -> Result<VmResult> {
    require(&[&QEMU])?;
    // The machine writes its disk (boot counting, data): no cairn mounts
    // it meanwhile, as no two cairns do.
    let _lock = match &spec.media {
        Some(m) if m.extension().is_none_or(|e| e != "iso") => {
            Some(crate::boot::disk::DiskLock::acquire(
                m,
                crate::boot::disk::Access::Write,
                crate::boot::disk::LOCK_WAIT,
            )?)
        }
        _ => None,
    };
    if spec.accel != Accel::Auto {
        return run_once(spec, spec.accel, None).map(|r| r.expect("no probe, no fallback"));
    }
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"));
    let reason = match usable {
        Err(e) => e,
        Ok(_) => match run_once(spec, Accel::Kvm, Some(KVM_PROBE)) {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(reason)) => reason,
            Err(e) => format!("{e:#}"),
        },
    };
    tracing::info!("KVM not usable ({reason}); running under TCG");
    let mut r = run_once(spec, Accel::Tcg, None)?.expect("no probe, no fallback");
    r.kvm_fallback = Some(reason);
    Ok(r)
}

/// qemu's arguments for `spec` under `accel`: the machine, its consoles
/// (`console`, `markers`), its media, firmware and network.
fn qemu_args(spec: &VmSpec, accel: Accel, console: &Path, markers: &Path) -> Result<Argv> {
    let mut cmd = Argv::default();
    // i440fx ("pc"): its IDE CD-ROM is one every Debian kernel flavour
    // drives. Secure Boot needs SMM, which OVMF gets on q35 only.
    let secure = spec.secure_boot;
    if secure && spec.firmware != Firmware::Uefi {
        bail!("Secure Boot needs --firmware uefi");
    }
    cmd.args([
        "-machine",
        if secure { "q35,smm=on" } else { "pc" },
        "-smp",
        "2",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nodefaults",
    ])
    .args(["-m", &spec.memory_mb.to_string()])
    .args(if spec.reboots {
        &[][..]
    } else {
        &["-no-reboot"][..]
    })
    .args([
        "-accel",
        match accel {
            Accel::Kvm => "kvm",
            _ => "tcg",
        },
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-serial")
    .arg(format!("file:{}", markers.display()))
    .args(["-device", "VGA"]);
    match &spec.media {
        Some(m) if m.extension().is_some_and(|e| e == "iso") => {
            cmd.arg("-drive").arg(format!(
                "file={},media=cdrom,if=ide,readonly=on",
                m.display()
            ));
        }
        Some(m) => {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", m.display()));
        }
        None => {}
    }
    for a in &spec.attach {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            a.display()
        ));
    }
    uefi_args(spec, &mut cmd)?;
    network_args(spec, &mut cmd)?;
    Ok(cmd)
}

/// OVMF, and its variable store for this run (Secure Boot keys enrolled
/// when asked).
fn uefi_args(spec: &VmSpec, cmd: &mut Argv) -> Result<()> {
    let secure = spec.secure_boot;
    if spec.firmware == Firmware::Uefi {
        let (code, vars_src) = match (secure, &spec.secure_boot_keys) {
            (false, _) => (OVMF_CODE, OVMF_VARS),
            (true, SecureBootKeys::Snakeoil) => (OVMF_CODE_SECBOOT, OVMF_VARS_SNAKEOIL),
            (true, SecureBootKeys::Own(_)) => (OVMF_CODE_SECBOOT, OVMF_VARS),
            (true, SecureBootKeys::Mok(_)) => (OVMF_CODE_SECBOOT, OVMF_VARS_MS),
        };
        for f in [code, vars_src] {
            if !Path::new(f).exists() {
                bail!("{f} not found: apt-get install ovmf");
            }
        }
        let vars = spec.log_dir.join("OVMF_VARS.fd");
        let template = fs::read(vars_src).with_context(|| format!("reading {vars_src}"))?;
        let store = match (secure, &spec.secure_boot_keys) {
            (true, SecureBootKeys::Own(c)) => {
                efivars::enrol_own_key(&template, &crate::trust::cert::der(c)?)?
            }
            (true, SecureBootKeys::Mok(c)) => {
                efivars::enrol_mok(&template, &crate::trust::cert::der(c)?)?
            }
            _ => template,
        };
        fs::write(&vars, store).with_context(|| format!("writing {}", vars.display()))?;
        if secure {
            cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={code}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    Ok(())
}

/// SMBIOS serial, a network boot from a TFTP directory, user networking.
fn network_args(spec: &VmSpec, cmd: &mut Argv) -> Result<()> {
    if let Some(s) = &spec.smbios_serial {
        cmd.arg("-smbios").arg(format!("type=1,serial={s}"));
    }
    if let Some(dir) = &spec.netboot {
        let file = match spec.firmware {
            Firmware::Bios => crate::boot::netboot::BIOS_FILE,
            Firmware::Uefi => crate::boot::netboot::efi_boot_file(dir),
        };
        if !dir.join(file).is_file() {
            bail!(
                "{}: no {file} to boot from the network (`cairn netboot` writes it)",
                dir.display()
            );
        }
        let d = dir
            .to_str()
            .filter(|d| !d.contains(','))
            .with_context(|| format!("{}: a TFTP directory without commas", dir.display()))?;
        // qemu's built-in DHCP and TFTP (a DHCP broadcast never leaves its
        // user network: dnsmasq cannot answer it, see docs/netboot.md); the
        // NIC's own boot ROM (iPXE) starts it.
        cmd.args([
            "-netdev",
            &format!("user,id=n0,tftp={d},bootfile={file}"),
            "-device",
            "virtio-net-pci,netdev=n0",
            "-boot",
            "order=n",
        ]);
    }
    if spec.net {
        // No option ROM: the firmware boots the disk, not the network.
        cmd.args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
    }
    Ok(())
}

/// Watches a running qemu until the marker line, its end, or the timeout;
/// with `probe`, a guest silent for that long is `Err(reason)`.
fn watch(
    child: &mut crate::cmd::Running,
    spec: &VmSpec,
    probe: Option<Duration>,
    console: &Path,
    markers: &Path,
    t0: Instant,
) -> Result<std::result::Result<Watched, String>> {
    let mut marker_line = None;
    let mut seconds_to_marker = None;
    let mut exited = false;
    let mut timed_out = false;
    let mut events = BTreeMap::new();
    loop {
        for e in &spec.events {
            if !events.contains_key(e) && find_marker(&[markers, console], e, false).is_some() {
                events.insert(e.clone(), t0.elapsed().as_secs_f64());
            }
        }
        if marker_line.is_none()
            && let Some(m) = &spec.marker
            && let Some(line) = find_marker(&[markers, console], m, false)
        {
            marker_line = Some(line);
            seconds_to_marker = Some(t0.elapsed().as_secs_f64());
            // What was waited for is there: the VM is stopped (a cairn
            // image has synced its boot mark and data before its marker).
            break;
        }
        let silent = || {
            fs::metadata(console).map_or(0, |m| m.len()) == 0
                && fs::metadata(markers).map_or(0, |m| m.len()) == 0
        };
        if let Some(status) = child.try_wait()? {
            exited = true;
            if !status.success() {
                let err = child.stderr();
                if probe.is_some() && silent() {
                    return Ok(Err(format!(
                        "qemu failed under KVM ({status}): {}",
                        err.trim()
                    )));
                }
                bail!("qemu failed ({status}): {err}");
            }
            break;
        }
        if let Some(p) = probe
            && t0.elapsed() > p
            && silent()
        {
            return Ok(Err(format!(
                "no output from the guest in {}s under KVM",
                p.as_secs()
            )));
        }
        if t0.elapsed() > spec.timeout {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if marker_line.is_none()
        && let Some(m) = &spec.marker
    {
        marker_line = find_marker(&[markers, console], m, true);
    }
    Ok(Ok(Watched {
        marker_line,
        seconds_to_marker,
        exited,
        timed_out,
        events,
    }))
}

/// What watching a run saw.
struct Watched {
    marker_line: Option<String>,
    seconds_to_marker: Option<f64>,
    exited: bool,
    timed_out: bool,
    events: BTreeMap<String, f64>,
}

/// One qemu run. With `probe`, a guest silent for that long (or a qemu that
/// fails before any output) gives `Ok(Err(reason))` instead of a result.
fn run_once(
    spec: &VmSpec,
    accel: Accel,
    probe: Option<Duration>,
) -> Result<std::result::Result<VmResult, String>> {
    crate::fsutil::own_dir(&spec.log_dir)?;
    let console = spec.log_dir.join("console.log");
    let markers = spec.log_dir.join("marker.log");
    let _ = fs::remove_file(&console);
    let _ = fs::remove_file(&markers);
    let cmd = qemu_args(spec, accel, &console, &markers)?;
    // Tied to cairn's life: a killed cairn leaves no VM running.
    let qemu = crate::cmd::Cmd::new(QEMU.program).args(&cmd.0).tied();
    tracing::info!("starting {}", qemu.display());
    let t0 = Instant::now();
    let mut child = qemu.spawn()?;
    let w = match watch(&mut child, spec, probe, &console, &markers, t0)? {
        Ok(w) => w,
        Err(reason) => return Ok(Err(reason)),
    };
    drop(child);
    Ok(Ok(VmResult {
        firmware: spec.firmware,
        accel,
        marker_line: w.marker_line,
        seconds_to_marker: w.seconds_to_marker,
        seconds: t0.elapsed().as_secs_f64(),
        exited: w.exited,
        timed_out: w.timed_out,
        console_log: console,
        marker_log: markers,
        events: w.events,
        kvm_fallback: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_not_text() {
        assert_eq!(
            strip_ansi("\x1b[H\x1b[J\x1b[1;1Hcairn: REFUSING\x1b[0m x"),
            "cairn: REFUSING x"
        );
    }

    /// Half a line on a serial port is not the line; a missing log does
    /// not hide the next one.
    #[test]
    fn markers_are_whole_lines() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        fs::write(&a, "boot\nCAIRN-BOOTED pro").unwrap();
        assert_eq!(find_marker(&[&a], "CAIRN-BOOTED", false), None);
        assert_eq!(
            find_marker(&[&a], "CAIRN-BOOTED", true).as_deref(),
            Some("CAIRN-BOOTED pro")
        );
        fs::write(&a, "boot\nCAIRN-BOOTED profile=p version=1\r\n").unwrap();
        assert_eq!(
            find_marker(&[&a], "CAIRN-BOOTED", false).as_deref(),
            Some("CAIRN-BOOTED profile=p version=1")
        );
        // The console's copy cut by the kernel's, anywhere: the kernel's
        // counts; only a kernel time stamp makes a copy, not any bracket.
        fs::write(
            &a,
            "cairn: REFUSING [   12.706281] cairn: REFUSING TO BOOT v1 (x)\nTO BOOT v1 (x)\n",
        )
        .unwrap();
        let refusal = |a: &Path| find_marker(&[a], "cairn: REFUSING TO BOOT", false);
        assert_eq!(
            refusal(&a).as_deref(),
            Some("cairn: REFUSING TO BOOT v1 (x)")
        );
        fs::write(
            &a,
            "x [ x] cairn: REFUSING TO BOOT\n[  ] cairn: REFUSING TO BOOT\n",
        )
        .unwrap();
        assert_eq!(refusal(&a), None);
        fs::write(&a, "[   12.7] cairn: REFUSING TO BOOT v1 (x)\n").unwrap();
        assert_eq!(
            refusal(&a).as_deref(),
            Some("cairn: REFUSING TO BOOT v1 (x)")
        );
        fs::write(&b, "CAIRN-BOOTED x\n").unwrap();
        let missing = d.path().join("missing");
        assert_eq!(
            find_marker(&[&missing, &b], "CAIRN-BOOTED", false).as_deref(),
            Some("CAIRN-BOOTED x")
        );
    }
}
