//! The command line: clap definitions and the glue that turns them into calls.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::build::{self, BuildOptions};
use crate::image;
use crate::mirror::config::{
    MirrorConfig, RepoSpec, Selection, host_arch, host_repos, load_config, name_from_url,
    validate_selection,
};
use crate::mirror::state::{MirrorPaths, MirrorState, apt_source_lines};
use crate::mirror::sync::{SyncOptions, SyncReport, sync};
use crate::mirror::verify::{VerifyOptions, VerifyReport, list_mirrors, verify};
use crate::parallel;
use crate::profile::{self, Compression, HostType, Profile};
use crate::progress::{Mode, human_bytes};
use crate::trust::keys;

/// cairn keeps Debian machines as signed, layered live images. It starts with
/// a local, verified mirror of the Debian repositories the images are built from.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Where mirrors and images live.
    #[arg(long, global = true, env = "CAIRN_STORE", default_value = "/srv/cairn")]
    pub store: PathBuf,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress output.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Local copies of Debian repositories, verified before they are published.
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// Build an image from a profile, from the local mirror only.
    ///
    /// PROFILE is a profile file (TOML, see docs/profiles.md) or `default`, the
    /// built-in profile (this host's suite, host type detected, a live system
    /// with systemd). The image lands in <store>/images/<profile>/<version>/:
    /// filesystem.squashfs, vmlinuz and initrd.img beside it, manifest.json,
    /// SHA256SUMS and SHA512SUMS with detached signatures, and with --iso a
    /// hybrid BIOS+UEFI ISO. A failed or killed build leaves no partial image.
    Build(BuildArgs),
    /// Make the next image of a profile from its latest one (a delta layer, or flattened).
    ///
    /// A delta layer holds the changes only, deletions included, on top of
    /// the latest image's layers; a full image is one flattened squashfs. Upgrades packages from the
    /// local mirror and applies what changed in the profile (packages added
    /// or removed, files, hooks). Chains deeper than --max-depth layers, or
    /// whose deltas pass --max-delta-share of the base, are flattened. When
    /// nothing changed, no image is made (unless --force).
    Upgrade(UpgradeArgs),
    /// The key that signs images (OpenPGP RSA, so GRUB can check it).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Images in the store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Boot disks: GPT with cairn's GRUB (BIOS and UEFI), images, data.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// cairn's verifying GRUB menu.
    #[command(subcommand)]
    Boot(BootCommand),
    /// Virtual machines for trying images.
    #[command(subcommand)]
    Vm(VmCommand),
    /// On a running cairn system: bring the running packages to a newer image's, now.
    ///
    /// The image (default: the newest of the running profile, on the boot
    /// disk or in the store) is verified with the key the running image
    /// carries, then apt installs exactly its package versions from the local
    /// mirror (<store>/mirror) and removes what it dropped, in the RAM overlay:
    /// new versions run at once, the image itself boots next time. A kernel
    /// change is refused (it needs a boot: `cairn reboot --kexec`). What was
    /// applied is recorded in /var/lib/cairn/applied-live.json.
    ApplyLive(ApplyLiveArgs),
    /// On a running cairn system: reboot into an image of the boot disk.
    ///
    /// IMAGE is PROFILE/VERSION or a VERSION of the running profile (default:
    /// its newest image). With --kexec, the image is checked as cairn's GRUB
    /// menu checks it (signatures, BOOTSUMS), its checked kernel and initrd
    /// are loaded with the menu entry's command line and systemd switches to
    /// them: no firmware, no boot loader. When kexec cannot be used, a normal
    /// reboot, with GRUB's next_entry set to the image.
    Reboot(RebootArgs),
}

/// The image a command on the running system acts on, and how.
#[derive(Args, Debug)]
pub struct LiveTarget {
    /// PROFILE/VERSION or a VERSION of the running profile [default: its newest image].
    pub image: Option<String>,
    /// Public key to verify with (default: /etc/cairn/signing.pub).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Check and show, change nothing (reboot --kexec: load, then unload).
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ApplyLiveArgs {
    #[command(flatten)]
    pub target: LiveTarget,
}

#[derive(Args, Debug)]
pub struct RebootArgs {
    #[command(flatten)]
    pub target: LiveTarget,
    /// Switch kernels with kexec (falls back to a normal reboot).
    #[arg(long)]
    pub kexec: bool,
    /// Boot the in-RAM (toram) entry.
    #[arg(long)]
    pub ram: bool,
}

#[derive(Args, Debug, Clone)]
pub struct MenuArgs {
    /// Profile whose newest image boots by default (else the newest image's).
    #[arg(long = "default")]
    pub default_profile: Option<String>,
    /// Boots a new default image gets, without reporting a good boot, before
    /// GRUB falls back to the last image that did.
    #[arg(long)]
    pub tries: Option<u32>,
    /// Seconds the menu waits.
    #[arg(long)]
    pub timeout: Option<u32>,
}

impl MenuArgs {
    fn options(&self) -> crate::boot::menu::MenuOptions {
        let d = crate::boot::menu::MenuOptions::default();
        crate::boot::menu::MenuOptions {
            timeout: self.timeout.unwrap_or(d.timeout),
            tries: self.tries.unwrap_or(d.tries),
            default_profile: self.default_profile.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Make a boot disk: GPT with a BIOS boot partition, an EFI system
    /// partition, the boot partition (ext4 `cairn-boot`: GRUB's signed menu,
    /// the images) and a data partition (ext4, label `data`) for the
    /// profiles' data paths. cairn's GRUB, for BIOS and UEFI, has the
    /// signing key built in and boots nothing that fails its signature.
    ///
    /// TARGET is a file (created, or replaced when complete; `dd` it to a USB
    /// stick) or a block device (erased after you type its name, or --yes).
    Create {
        target: PathBuf,
        /// Images to put on it: `profile` (newest), `profile/version`, or a
        /// directory. Repeat for more; the older ones of a profile become
        /// rollback entries.
        #[arg(long = "image", required = true)]
        images: Vec<String>,
        /// Also a cairn ISO (signed: `<image>/<profile>.iso`), booted by loopback.
        #[arg(long = "iso")]
        isos: Vec<PathBuf>,
        /// Disk file size (e.g. 4G, 1500M); default: room for the images twice.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Size of the data partition; 0 for none.
        #[arg(long, value_parser = parse_size, default_value = "256M")]
        data_size: u64,
        /// File system label of the data partition (profiles' `label`).
        #[arg(long, default_value = "data")]
        data_label: String,
        #[command(flatten)]
        menu: MenuArgs,
        #[command(flatten)]
        secure_boot: SecureBootArgs,
        /// Erase a block device without asking.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Copy more images onto a cairn disk (verified first) and write its menu
    /// again; a new default image starts a trial (boot counting).
    Add {
        disk: PathBuf,
        /// `profile`, `profile/version`, or a directory.
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SecureBootArgs {
    /// Secure Boot: sign GRUB's EFI binary with this db/MOK private key (PEM)…
    #[arg(long, requires = "secure_boot_cert")]
    secure_boot_key: Option<PathBuf>,
    /// …and this certificate (PEM).
    #[arg(long, requires = "secure_boot_key")]
    secure_boot_cert: Option<PathBuf>,
    /// Secure Boot through Debian's shim, which Microsoft's UEFI CA signed
    /// (it boots where only Microsoft's keys are enrolled, as on most
    /// machines): shim becomes BOOTX64.EFI and trusts GRUB (with SBAT
    /// metadata) through the MOK list. Enrol the certificate once:
    /// `mokutil --import CERT`, or MokManager's "Enroll key from disk"
    /// (`EFI/BOOT/cairn-mok.cer`).
    #[arg(long, requires = "secure_boot_key")]
    shim: bool,
}

impl SecureBootArgs {
    fn get(&self) -> Option<crate::boot::grub::SecureBoot> {
        let (key, cert) = self
            .secure_boot_key
            .clone()
            .zip(self.secure_boot_cert.clone())?;
        Some(crate::boot::grub::SecureBoot {
            key,
            cert,
            shim: self.shim,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum BootCommand {
    /// Build cairn's GRUB again and install it on a cairn disk (file or
    /// device): BIOS boot code and the EFI binary, with the store's current
    /// signing key built in (e.g. after `cairn key generate --force` and
    /// `cairn image sign`), optionally signed for Secure Boot; the menu is
    /// signed again. Refused if an image on the disk does not verify.
    Install {
        #[arg(long)]
        disk: PathBuf,
        #[command(flatten)]
        secure_boot: SecureBootArgs,
        #[arg(long)]
        json: bool,
    },
    /// Write the signed menu of a cairn disk again from the images on it
    /// (after copying or removing some by hand, or to change the default);
    /// without --disk, print the menu the store's images would get.
    Menu {
        #[arg(long)]
        disk: Option<PathBuf>,
        #[command(flatten)]
        menu: MenuArgs,
        /// Print the entries as JSON (without --disk: the grub.cfg text otherwise).
        #[arg(long)]
        json: bool,
    },
}

/// `4G`, `512M`, `64K` or bytes (powers of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a size like 4G, 512M or a number of bytes"))?;
    if n < 0.0 {
        return Err(format!("{s:?}: negative size"));
    }
    Ok((n * mult as f64) as u64)
}

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Boot a disk image or ISO in qemu (KVM when it works here, TCG
    /// otherwise), serial console to a log file, until the VM powers off, a
    /// marker line appears, or the timeout.
    Run {
        /// A raw disk image, or an ISO.
        media: PathBuf,
        #[arg(long, value_enum, default_value = "bios")]
        firmware: crate::vm::Firmware,
        /// auto: KVM if /dev/kvm works and the guest shows output within 20 s,
        /// else TCG (nested KVM often fails or crawls).
        #[arg(long, value_enum, default_value = "auto")]
        accel: crate::vm::Accel,
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Seconds before the VM is stopped.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Wait for a console line starting with this (e.g. CAIRN-BOOTED).
        #[arg(long)]
        marker: Option<String>,
        /// Ask a cairn image to power off once booted (via SMBIOS serial).
        #[arg(long)]
        poweroff: bool,
        /// Boot this menu entry of a cairn disk (its id, e.g. `web-20261126T015228Z`
        /// or `rollback>web-…`; see `cairn boot menu --json`), via SMBIOS serial.
        #[arg(long)]
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
        #[arg(long, requires = "secure_boot", conflicts_with = "mok_cert")]
        own_cert: Option<PathBuf>,
        /// Secure Boot: Microsoft's keys enrolled (as on most machines) and
        /// this certificate in shim's MOK list — for disks made with --shim.
        #[arg(long, requires = "secure_boot")]
        mok_cert: Option<PathBuf>,
        /// Directory for console.log and marker.log.
        #[arg(long, default_value = "/var/tmp/cairn-vm")]
        log_dir: PathBuf,
        /// Attach a read-only disk made of this directory (ext4, label
        /// `cairn-store`): e.g. a store holding `mirror/`, for `cairn
        /// apply-live` in the guest (`mount LABEL=cairn-store /srv/cairn`).
        #[arg(long)]
        attach_dir: Option<PathBuf>,
        /// Attach this raw disk image read-only too (repeatable): a second
        /// medium beside the boot disk, as a USB stick would be.
        #[arg(long)]
        attach: Vec<PathBuf>,
        /// Time when a console line starting with this first appears
        /// (repeatable; `events` in --json).
        #[arg(long)]
        event: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A profile file, or `default`.
    #[arg(default_value = "default")]
    pub profile: String,
    /// Also make a hybrid ISO (BIOS + UEFI, CD or USB stick).
    #[arg(long, overrides_with = "no_iso")]
    pub iso: bool,
    /// No ISO, whatever the profile says.
    #[arg(long)]
    pub no_iso: bool,
    /// squashfs compressor, overriding the profile's.
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// Compression level (gzip, lzo: 1-9; zstd: 1-22).
    #[arg(long)]
    pub level: Option<u32>,
    /// Override the profile's host type (and `auto` detection).
    #[arg(long, value_parser = ["physical", "virtual"])]
    pub host_type: Option<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// A profile file, or `default`.
    #[arg(default_value = "default")]
    pub profile: String,
    /// auto: a delta unless the chain needs compacting; delta; full.
    #[arg(long, value_enum, default_value = "auto")]
    pub layer: crate::build::upgrade::LayerMode,
    /// Flatten when the new image would have more layers than this.
    #[arg(long, default_value_t = 4)]
    pub max_depth: usize,
    /// Flatten when the deltas together pass this share of the base layer.
    #[arg(long, default_value_t = 0.5)]
    pub max_delta_share: f64,
    /// Make an image even when nothing changed.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Generate an RSA signing key into <store>/keys (0700) and export its
    /// public part in the binary form GRUB embeds (<store>/keys/signing.pub).
    Generate {
        /// User ID of the key.
        #[arg(long, default_value = "cairn image signing")]
        user_id: String,
        /// RSA key size.
        #[arg(long, default_value_t = 4096)]
        bits: u32,
        /// Replace the configured key.
        #[arg(long)]
        force: bool,
    },
    /// Sign with an existing key of a GnuPG home (the secret key stays there).
    Use {
        /// Key ID or fingerprint.
        key: String,
        /// GnuPG home holding the secret key.
        #[arg(long, env = "GNUPGHOME", default_value = "/root/.gnupg")]
        gnupg_home: PathBuf,
    },
    /// Show the configured signing key.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images per profile, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check an image's signatures and every hash; names any file that differs.
    Verify {
        /// An image directory, `PROFILE` (its newest image) or `PROFILE/VERSION`.
        image: String,
        /// Public key to check against [default: the store's signing key].
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Packages added, removed and changed from image A to image B.
    Diff {
        /// `PROFILE`, `PROFILE/VERSION` or a directory.
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove all but the newest N images of each profile (never the image
    /// this system booted from). Each image directory holds all its layers
    /// (hard links), so removing an older image never breaks a kept one.
    Prune {
        #[arg(long)]
        keep: usize,
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Seal an image again with the store's key: boot.cfg and BOOTSUMS from
    /// its manifest (e.g. after editing `kernel-cmdline` in manifest.json),
    /// SHA256SUMS, SHA512SUMS and every signature GRUB needs.
    Sign {
        /// An image directory, `PROFILE` (its newest image) or `PROFILE/VERSION`.
        image: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum MirrorCommand {
    /// Fetch, verify and publish mirrors.
    ///
    /// Sources: the host's apt configuration by default (/etc/apt/sources.list
    /// and sources.list.d, with their Signed-By keyrings), a mirror config file
    /// (--config), or one repository given by --url.
    ///
    /// Selection: by default the dependency closure of systemd-sysv, live-boot
    /// and linux-image-amd64 (what a cairn live image needs), plus every
    /// Essential and required package. --full mirrors everything.
    ///
    /// Everything is verified before it is published: the Release signature by
    /// apt's rules (InRelease, or Release + Release.gpg), its dates, every index
    /// against Release and every pool file against its index, while it streams.
    /// Pool files are published first, then `dists` is switched atomically: a
    /// client sees the old or the new mirror, never a mix. A killed sync leaves
    /// the published mirror as it was; re-running resumes.
    Sync(Box<SyncArgs>),
    /// Re-check published mirrors: Release signature and dates, every index,
    /// every pool file (in parallel on all cores). Exits non-zero on any problem.
    Verify(VerifyArgs),
    /// Print apt source lines (one-line format, with signed-by) for the
    /// published mirrors, ready for /etc/apt/sources.list.d/ or mmdebstrap.
    Sources(SourcesArgs),
}

#[derive(Args, Debug)]
pub struct SourcesArgs {
    /// Mirror name(s) [default: every mirror in the store].
    pub names: Vec<String>,
    /// URL under which a web server serves `<store>/mirror/` [default: file:// paths].
    #[arg(long)]
    pub base_url: Option<String>,
    /// Print a JSON array of {name, lines}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// A mirror config file (TOML, schema-version = 1; see docs/mirror.md).
    #[arg(long, conflicts_with_all = ["url", "suite", "component", "arch", "keyring", "name"])]
    pub config: Option<PathBuf>,
    /// Mirror this repository instead of the host's apt sources.
    #[arg(long, requires_all = ["suite", "keyring"])]
    pub url: Option<String>,
    /// Suite(s) of --url (repeatable).
    #[arg(long)]
    pub suite: Vec<String>,
    /// Component(s) (repeatable) [default: main, or the apt sources' own].
    #[arg(long)]
    pub component: Vec<String>,
    /// Architecture(s) (repeatable) [default: this machine's].
    #[arg(long)]
    pub arch: Vec<String>,
    /// Keyring file(s) that may sign --url's Release files (repeatable).
    #[arg(long)]
    pub keyring: Vec<PathBuf>,
    /// Local name of --url's mirror [default: last part of the URL path].
    #[arg(long)]
    pub name: Option<String>,
    /// Mirror every package, not a selection.
    #[arg(long, conflicts_with_all = ["package", "priority"])]
    pub full: bool,
    /// Package(s) to mirror, `name` or `name=version` (repeatable; comma lists allowed).
    #[arg(long, short = 'p', value_delimiter = ',')]
    pub package: Vec<String>,
    /// Mirror every package of this priority (repeatable: required, important, …).
    #[arg(long, value_delimiter = ',')]
    pub priority: Vec<String>,
    /// Only the named packages: no dependency closure, no Essential/required set.
    #[arg(long)]
    pub no_closure: bool,
    /// Follow Recommends in the dependency closure.
    #[arg(long)]
    pub recommends: bool,
    /// Keep every version of the selected packages from every mirrored
    /// suite, not only the newest (for tools that read one suite alone).
    #[arg(long)]
    pub all_versions: bool,
    /// Concurrent downloads over keep-alive connections.
    #[arg(long, short = 'j', default_value_t = 20)]
    pub jobs: usize,
    /// Keep pool files that are no longer selected.
    #[arg(long)]
    pub keep_obsolete: bool,
    /// Wait for another sync of the same mirror instead of refusing.
    #[arg(long)]
    pub wait: bool,
    /// Accept a Release `Date` up to this many seconds in the future (clock skew).
    #[arg(long, default_value_t = 10)]
    pub max_future: i64,
    /// Mirror exactly what this profile needs (file, or `default`): the
    /// closure of its packages for its host type.
    /// (Repeatable: the union of several profiles, plus any --package.)
    #[arg(long, conflicts_with_all = ["full", "priority"])]
    pub profile: Vec<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Mirror name(s) [default: every mirror in the store].
    pub names: Vec<String>,
    /// Refetch missing and corrupt files from the source, verified against the
    /// published signed indices, and remove unexpected pool files.
    #[arg(long)]
    pub repair: bool,
    /// Files hashed at once [default: number of CPUs].
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Wait for a running sync instead of refusing.
    #[arg(long)]
    pub wait: bool,
    /// Print the reports as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn run(cli: &Cli) -> Result<i32> {
    let mode = if cli.quiet { Mode::Quiet } else { Mode::Auto };
    match &cli.command {
        Command::Mirror(MirrorCommand::Sync(a)) => {
            let cfg = sync_config(a)?;
            let mut opts = SyncOptions::new(cli.store.clone());
            opts.jobs = a.jobs.max(1);
            opts.keep_obsolete = a.keep_obsolete;
            opts.wait = a.wait;
            opts.progress = mode;
            opts.max_future = a.max_future;
            if !cli.quiet && !a.json {
                for r in &cfg.repos {
                    eprintln!(
                        "mirror {}: {} {} [{}] {}",
                        r.name,
                        r.url,
                        r.suites.join(" "),
                        r.components.join(" "),
                        r.architectures.join(" ")
                    );
                }
                eprintln!("selection: {}", cfg.selection.describe());
            }
            let report = sync(&cfg, &opts)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_sync(&report);
            }
            Ok(0)
        }
        Command::Mirror(MirrorCommand::Sources(a)) => print_sources(&cli.store, a),
        Command::Build(a) => run_build(cli, a),
        Command::Upgrade(a) => run_upgrade(cli, a),
        Command::ApplyLive(a) => run_apply_live(cli, a),
        Command::Reboot(a) => run_reboot(cli, a),
        Command::Key(c) => run_key(cli, c),
        Command::Image(c) => run_image(cli, c),
        Command::Disk(c) => run_disk(cli, c),
        Command::Boot(c) => run_boot(cli, c),
        Command::Vm(VmCommand::Run {
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
            json,
        }) => {
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
            };
            let r = crate::vm::run(&spec)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                if let Some(why) = &r.kvm_fallback {
                    println!("KVM not usable here ({why}): ran under TCG");
                }
                match (&r.marker_line, r.seconds_to_marker) {
                    (Some(l), Some(t)) => println!("{l}  ({t:.1}s after start)"),
                    _ if marker.is_some() => println!("no marker line seen"),
                    _ => {}
                }
                println!(
                    "{} {:?}/{:?}: {} after {:.1}s; console log {}",
                    media.display(),
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
            }
            if let (Some(m), None) = (marker, &r.marker_line) {
                // What a slow or stuck boot was doing: the last lines.
                eprintln!(
                    "cairn: {}: no line starting with {m:?} after {:.1}s ({}); last console lines ({}):\n{}",
                    media.display(),
                    r.seconds,
                    if r.timed_out {
                        format!("timeout {timeout}s")
                    } else {
                        "the VM stopped".to_string()
                    },
                    r.console_log.display(),
                    crate::vm::last_lines(&r.console_log, 25)
                );
                return Ok(1);
            }
            Ok(0)
        }
        Command::Mirror(MirrorCommand::Verify(a)) => {
            let names = if a.names.is_empty() {
                list_mirrors(&cli.store)?
            } else {
                a.names.clone()
            };
            for n in &names {
                crate::names::check("mirror name", n)?;
            }
            if names.is_empty() {
                anyhow::bail!(
                    "no mirrors in {}: run `cairn mirror sync` first",
                    cli.store.join("mirror").display()
                );
            }
            let opts = VerifyOptions {
                store: cli.store.clone(),
                jobs: a.jobs.unwrap_or_else(parallel::cpus).max(1),
                repair: a.repair,
                wait: a.wait,
                progress: mode,
                max_future: 10,
            };
            let mut reports = Vec::new();
            for n in &names {
                reports.push(verify(n, &opts).with_context(|| format!("verifying mirror {n}"))?);
            }
            let ok = reports.iter().all(|r| r.ok);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    print_verify(r);
                }
            }
            Ok(if ok { 0 } else { 1 })
        }
    }
}

fn print_sources(store: &std::path::Path, a: &SourcesArgs) -> Result<i32> {
    let names = if a.names.is_empty() {
        list_mirrors(store)?
    } else {
        a.names.clone()
    };
    let mut all = Vec::new();
    for n in &names {
        let paths = MirrorPaths::new(store, n);
        let state = MirrorState::load(&paths)?
            .with_context(|| format!("mirror {n} has not been synced into {}", store.display()))?;
        all.push(serde_json::json!({"name": n, "lines": apt_source_lines(&paths, &state, a.base_url.as_deref())}));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for m in &all {
            for l in m["lines"].as_array().into_iter().flatten() {
                println!("{}", l.as_str().unwrap_or_default());
            }
        }
    }
    Ok(0)
}

/// A profile file, or `default` (the built-in one, for this host's suite).
pub fn load_profile(arg: &str) -> Result<Profile> {
    if arg == "default" && !std::path::Path::new(arg).exists() {
        let suite = host_repos(std::path::Path::new("/"))
            .ok()
            .and_then(|r| {
                r.into_iter()
                    .flat_map(|r| r.suites)
                    .find(|s| !s.contains(['-', '/']))
            })
            .unwrap_or_else(|| "bookworm".into());
        return Ok(profile::builtin_default(&suite));
    }
    profile::load(std::path::Path::new(arg))
}

fn run_apply_live(cli: &Cli, a: &ApplyLiveArgs) -> Result<i32> {
    let a = &a.target;
    let r = crate::live::apply_live(&crate::live::ApplyOptions {
        store: &cli.store,
        image: a.image.as_deref(),
        key: a.key.as_deref(),
        dry_run: a.dry_run,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} → {}{}: {} package change(s)",
            r.from,
            r.to,
            if r.dry_run { " (dry run)" } else { "" },
            r.changes.len()
        );
        for c in &r.changes {
            match (&c.from, &c.to) {
                (None, Some(t)) => println!("  + {} {t}", c.package),
                (Some(f), None) => println!("  - {} {f}", c.package),
                (Some(f), Some(t)) => println!("  ~ {} {f} → {t}", c.package),
                _ => {}
            }
        }
        for d in &r.deferred {
            println!("next boot: {d}");
        }
        for d in &r.differs {
            println!("differs from the image: {d}");
        }
        if !r.dry_run {
            println!(
                "applied in {:.1}s; recorded in {}",
                r.seconds,
                crate::live::APPLIED_LOG
            );
        }
    }
    Ok(if r.differs.is_empty() { 0 } else { 1 })
}

fn run_reboot(cli: &Cli, args: &RebootArgs) -> Result<i32> {
    let a = &args.target;
    let r = crate::live::reboot(&crate::live::RebootOptions {
        store: &cli.store,
        image: a.image.as_deref(),
        kexec: args.kexec,
        ram: args.ram,
        key: a.key.as_deref(),
        dry_run: a.dry_run,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} {} (entry {}){}",
            if a.dry_run { "would boot" } else { "booting" },
            r.image,
            r.entry,
            if r.method == "kexec" {
                " with kexec"
            } else {
                " through the firmware"
            }
        );
        if let Some(c) = &r.command_line {
            println!("command line: {c}");
        }
    }
    Ok(0)
}

fn run_upgrade(cli: &Cli, a: &UpgradeArgs) -> Result<i32> {
    let prof = load_profile(&a.profile)?;
    let opts = crate::build::upgrade::UpgradeOptions {
        store: cli.store.clone(),
        mode: a.layer,
        max_depth: a.max_depth.max(1),
        max_delta_share: a.max_delta_share,
        force: a.force,
        host_type: None,
        quiet: cli.quiet || a.json,
    };
    let r = crate::build::upgrade::upgrade(&prof, &a.profile, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if let Some(v) = &r.version {
        println!(
            "{} {v}: {} layer ({}), {} layer(s), image {}; {} upgraded, {} added, {} removed; {:.1}s",
            r.profile,
            r.layer.as_deref().unwrap_or(""),
            human_bytes(r.new_layer_bytes),
            r.layers.len(),
            human_bytes(r.image_bytes),
            r.upgraded.len(),
            r.added.len(),
            r.removed.len(),
            r.seconds
        );
        if let Some(c) = &r.compacted_because {
            println!("flattened: {c}");
        }
    } else {
        println!(
            "{}: nothing to upgrade from {} (use --force for a new image anyway)",
            r.profile, r.parent
        );
    }
    Ok(0)
}

fn run_build(cli: &Cli, a: &BuildArgs) -> Result<i32> {
    let prof = load_profile(&a.profile)?;
    let opts = BuildOptions {
        store: cli.store.clone(),
        iso: if a.iso {
            Some(true)
        } else if a.no_iso {
            Some(false)
        } else {
            None
        },
        compression: a.compression,
        level: a.level,
        host_type: a.host_type.as_deref().map(|h| {
            if h == "virtual" {
                HostType::Virtual
            } else {
                HostType::Physical
            }
        }),
        epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok()),
        quiet: cli.quiet,
    };
    let r = build::build(&prof, &a.profile, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} {} ({} host, kernel {}, {} packages, {})",
            r.profile, r.version, r.host_type, r.kernel, r.packages, r.compression
        );
        for (f, size) in &r.files {
            println!("  {f:<28} {}", human_bytes(*size));
        }
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|s| format!("{} {:.1}s", s.name, s.seconds))
            .collect();
        println!(
            "built in {:.1}s ({}), signed by {} -> {}",
            r.seconds,
            stages.join(", "),
            r.signed_by,
            r.path.display()
        );
    }
    Ok(0)
}

fn run_key(cli: &Cli, c: &KeyCommand) -> Result<i32> {
    let (key, json) = match c {
        KeyCommand::Generate {
            user_id,
            bits,
            force,
        } => (keys::generate(&cli.store, user_id, *bits, *force)?, false),
        KeyCommand::Use { key, gnupg_home } => {
            (keys::use_existing(&cli.store, gnupg_home, key)?, false)
        }
        KeyCommand::Show { json } => (keys::load(&cli.store)?, *json),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&key)?);
    } else {
        println!(
            "{} {}{} {:?}",
            key.fingerprint, key.algorithm, key.bits, key.user_id
        );
        println!("  secret key in {}", key.gnupg_home.display());
        println!("  public key for GRUB: {}", key.public_key.display());
        println!("  {}", keys::PROTECTION);
    }
    Ok(0)
}

fn print_menu(m: &crate::boot::menu::Menu) {
    println!("default: {}", m.default);
    if !m.fallback.is_empty() {
        println!("fallback: {}", m.fallback.join(" "));
    }
    for e in &m.entries {
        println!("  {:<48} {}", e.id, e.title);
    }
    for l in &m.left_out {
        println!("left out (fails its checks): {}: {}", l.path, l.problem);
    }
}

fn run_disk(cli: &Cli, c: &DiskCommand) -> Result<i32> {
    match c {
        DiskCommand::Create {
            target,
            images,
            isos,
            size,
            data_size,
            data_label,
            menu,
            secure_boot,
            yes,
            json,
        } => {
            let dirs = images
                .iter()
                .map(|s| image::resolve(&cli.store, s))
                .collect::<Result<Vec<_>>>()?;
            let opts = crate::boot::disk::DiskOptions {
                images: dirs,
                isos: isos.clone(),
                menu: menu.options(),
                data_size: *data_size,
                data_label: data_label.clone(),
                secure_boot: secure_boot.get(),
                yes: *yes,
                quiet: cli.quiet || *json,
            };
            let r = crate::boot::disk::create(&cli.store, target, *size, &opts)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} with {} ({}), {:.1}s",
                    r.path.display(),
                    human_bytes(r.layout.bytes),
                    r.images.join(", "),
                    if r.secure_boot {
                        "GRUB signed for Secure Boot"
                    } else {
                        "BIOS + UEFI"
                    },
                    r.seconds
                );
                print_menu(&r.menu);
            }
            Ok(0)
        }
        DiskCommand::Add { disk, images, json } => {
            let dirs = images
                .iter()
                .map(|s| image::resolve(&cli.store, s))
                .collect::<Result<Vec<_>>>()?;
            let m = crate::boot::disk::add_images(&cli.store, disk, &dirs, cli.quiet || *json)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print_menu(&m);
            }
            Ok(0)
        }
    }
}

fn run_boot(cli: &Cli, c: &BootCommand) -> Result<i32> {
    match c {
        BootCommand::Install {
            disk,
            secure_boot,
            json,
        } => {
            let sb = secure_boot.get();
            let m = crate::boot::disk::install(&cli.store, disk, sb.as_ref())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!(
                    "{}: GRUB installed (BIOS + UEFI{}), menu signed again",
                    disk.display(),
                    match &sb {
                        Some(s) if s.shim => ", signed for Secure Boot, behind shim",
                        Some(_) => ", signed for Secure Boot",
                        None => "",
                    }
                );
                print_menu(&m);
            }
            Ok(0)
        }
        BootCommand::Menu { disk, menu, json } => {
            let m = match disk {
                Some(d) => crate::boot::disk::menu_on_disk(
                    &cli.store,
                    d,
                    menu.default_profile.clone(),
                    menu.tries,
                    menu.timeout,
                )?,
                None => crate::boot::disk::menu_for_store(&cli.store, &menu.options())?,
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else if disk.is_none() {
                print!("{}", m.cfg);
            } else {
                print_menu(&m);
            }
            Ok(0)
        }
    }
}

fn run_image(cli: &Cli, c: &ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::List { json } => {
            let all = image::list(&cli.store)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for e in &all {
                    println!(
                        "{:<16} {:<20} {:>10} {:<5} {:>4} packages{}{}",
                        e.profile,
                        e.version,
                        human_bytes(e.size),
                        e.compression.as_deref().unwrap_or("?"),
                        e.packages,
                        if e.iso { "  iso" } else { "" },
                        e.parent
                            .as_deref()
                            .map(|p| format!("  parent {p}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        ImageCommand::Verify {
            image: spec,
            key,
            json,
        } => {
            let dir = image::resolve(&cli.store, spec)?;
            let public = match key {
                Some(k) => k.clone(),
                None => keys::load(&cli.store)?.public_key,
            };
            let r = image::verify(&dir, &public)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for p in &r.problems {
                    println!("  BAD {p}");
                }
                println!(
                    "{}: {} — {} files checked{}",
                    r.path.display(),
                    if r.ok { "OK" } else { "FAILED" },
                    r.checked.len(),
                    r.signed_by
                        .as_deref()
                        .map(|s| format!(", signed by {s}"))
                        .unwrap_or_default()
                );
            }
            Ok(if r.ok { 0 } else { 1 })
        }
        ImageCommand::Diff { a, b, json } => {
            let ma = image::read_manifest(&image::resolve(&cli.store, a)?)?;
            let mb = image::read_manifest(&image::resolve(&cli.store, b)?)?;
            let d = image::diff(&ma, &mb);
            if *json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("{} -> {}", d.from, d.to);
                for p in &d.added {
                    println!("  + {} {}", p.name, p.version);
                }
                for p in &d.removed {
                    println!("  - {} {}", p.name, p.version);
                }
                for (n, o, v) in &d.changed {
                    println!("  ~ {n} {o} -> {v}");
                }
                println!(
                    "{} added, {} removed, {} changed",
                    d.added.len(),
                    d.removed.len(),
                    d.changed.len()
                );
            }
            Ok(0)
        }
        ImageCommand::Prune {
            keep,
            dry_run,
            json,
        } => {
            let booted = image::booted_image();
            let gone = image::prune(&cli.store, *keep, booted.as_deref(), *dry_run)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&gone)?);
            } else {
                for g in &gone {
                    println!(
                        "{} {}",
                        if *dry_run { "would remove" } else { "removed" },
                        g.display()
                    );
                }
                println!(
                    "{} image(s) {}",
                    gone.len(),
                    if *dry_run { "to remove" } else { "removed" }
                );
            }
            Ok(0)
        }
        ImageCommand::Sign { image: spec } => {
            let dir = image::resolve(&cli.store, spec)?;
            let key = keys::load(&cli.store)?;
            image::seal(&dir, &key)?;
            println!("{}: sealed, signed by {}", dir.display(), key.fingerprint);
            Ok(0)
        }
    }
}

fn sync_config(a: &SyncArgs) -> Result<MirrorConfig> {
    let mut cfg = if let Some(path) = &a.config {
        load_config(path)?
    } else if let Some(url) = &a.url {
        MirrorConfig {
            repos: vec![RepoSpec {
                name: a.name.clone().unwrap_or_else(|| name_from_url(url)),
                url: url.trim_end_matches('/').to_string(),
                suites: a.suite.clone(),
                components: if a.component.is_empty() {
                    vec!["main".into()]
                } else {
                    a.component.clone()
                },
                architectures: if a.arch.is_empty() {
                    vec![host_arch().into()]
                } else {
                    a.arch.clone()
                },
                keyring: a.keyring.clone(),
                translations: vec!["en".into()],
            }],
            selection: Selection::default_packages(),
        }
    } else {
        let mut repos =
            host_repos(std::path::Path::new("/")).context("reading the host's apt sources")?;
        for r in &mut repos {
            if !a.component.is_empty() {
                r.components = a.component.clone();
            }
            if !a.arch.is_empty() {
                r.architectures = a.arch.clone();
            }
        }
        MirrorConfig {
            repos,
            selection: Selection::default_packages(),
        }
    };
    if !a.profile.is_empty() {
        let mut packages: Vec<String> = a.package.clone();
        for p in &a.profile {
            let prof = load_profile(p)?;
            for pk in prof.all_packages(prof.resolved_host_type()) {
                if !packages.contains(&pk) {
                    packages.push(pk);
                }
            }
        }
        cfg.selection = Selection {
            packages,
            closure: true,
            ..Default::default()
        };
    } else if a.full || !a.package.is_empty() || !a.priority.is_empty() {
        cfg.selection = Selection {
            full: a.full,
            packages: a.package.clone(),
            priorities: a.priority.clone(),
            closure: true,
            ..Default::default()
        };
    }
    // The closure flags apply to whichever selection was chosen above.
    if a.no_closure || a.full {
        cfg.selection.closure = false;
    }
    cfg.selection.recommends |= a.recommends;
    cfg.selection.all_versions |= a.all_versions;
    validate_selection(&cfg.selection)?;
    Ok(cfg)
}

fn print_sync(r: &SyncReport) {
    if r.up_to_date {
        println!(
            "up to date: nothing changed upstream or in the selection ({:.1}s)",
            r.seconds
        );
    }
    for repo in &r.repos {
        for s in &repo.suites {
            println!(
                "  {}/{}: {} signed by {} (Date {}{}), {} indices ({} fetched)",
                repo.name,
                s.suite,
                s.signature,
                s.signed_by.join(", "),
                s.date.as_deref().unwrap_or("?"),
                s.valid_until
                    .as_deref()
                    .map(|v| format!(", valid until {v}"))
                    .unwrap_or_default(),
                s.indices,
                s.indices_fetched
            );
        }
        println!(
            "{}: {} pool files ({}), {} fetched ({}), {} re-hashed, {} obsolete removed -> {}",
            repo.name,
            repo.pool_files,
            human_bytes(repo.pool_bytes),
            repo.fetched_files,
            human_bytes(repo.fetched_bytes),
            repo.hashed_files,
            repo.removed_obsolete,
            repo.path.display()
        );
    }
    if !r.unsatisfied.is_empty() {
        println!(
            "warning: {} dependencies are not satisfied by the mirrored suites:",
            r.unsatisfied.len()
        );
        for u in r.unsatisfied.iter().take(20) {
            println!("  {u}");
        }
    }
    println!(
        "{} packages ({}); fetched {} in {:.1}s",
        r.packages,
        r.selection,
        human_bytes(r.fetched_bytes),
        r.seconds
    );
}

fn print_verify(r: &VerifyReport) {
    for s in &r.suites {
        println!(
            "  {}/{}: signed by {} (Date {})",
            r.name,
            s.suite,
            s.signed_by.join(", "),
            s.date.as_deref().unwrap_or("?")
        );
    }
    for p in &r.release_problems {
        println!("  RELEASE {}: {}", p.path, p.detail);
    }
    for m in &r.missing {
        println!("  MISSING {m}");
    }
    for c in &r.corrupt {
        println!("  CORRUPT {}: {}", c.path, c.detail);
    }
    for u in &r.unexpected {
        println!("  UNEXPECTED {u}");
    }
    for f in &r.repaired {
        println!("  REPAIRED {f}");
    }
    println!(
        "{}: {} — {} indices, {} pool files, {} hashed in {:.1}s ({}/s)",
        r.name,
        if r.ok { "OK" } else { "PROBLEMS" },
        r.indices_checked,
        r.pool_checked,
        human_bytes(r.bytes_hashed),
        r.seconds,
        human_bytes((r.bytes_hashed as f64 / r.seconds.max(0.001)) as u64)
    );
}
