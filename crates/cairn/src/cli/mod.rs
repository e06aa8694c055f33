//! The command line: `cairn` and its subcommands. One module per area —
//! its arguments (clap), one run function per command, its printers — over
//! the library; policy lives in the library modules, not here.

/// `println!` that a closed stdout (`cairn … | head`) does not turn into a
/// panic: the output ends there, the command goes on and exits as it would.
macro_rules! outln {
    () => {
        $crate::cli::out(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// `print!` as [`outln!`] is `println!`.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::cli::out(format_args!($($t)*))
    };
}

mod build;
mod config;
mod disk;
mod fleet;
mod image;
mod live;
mod mirror;
mod netboot;
mod report;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::progress::Mode;

pub use build::{BuildArgs, UpgradeArgs};
pub use config::ConfigCommand;
pub use disk::{BootCommand, DiskCommand, MenuArgs, SecureBootArgs, parse_size};
pub use fleet::{CycleArgs, PublishArgs, PullArgs, StatusArgs, parse_duration};
pub use image::{ImageCommand, KeyCommand};
pub use live::{ApplyLiveArgs, LiveTarget, RebootArgs};
pub use mirror::{
    DEFAULT_JOBS as DEFAULT_MIRROR_JOBS, MirrorCommand, SourcesArgs, SyncArgs, VerifyArgs,
};
pub use netboot::NetbootArgs;
pub use vm::VmCommand;

/// cairn keeps Debian machines as signed, layered live images. It starts with
/// a local, verified mirror of the Debian repositories the images are built from.
#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Settings come from flags, then the environment (CAIRN_STORE), then \
/etc/cairn/cairn.toml and /etc/cairn/cairn.toml.d/*.toml (CAIRN_CONFIG names another file), \
then built-in defaults: `cairn config show`. Exit codes: 0 success, 1 failure, 2 usage, \
3 verification failed (a signature, hash or trust check refused the data)."
)]
pub struct Cli {
    /// Where mirrors and images live (a directory) [default: /srv/cairn].
    #[arg(
        long = "store",
        id = "store",
        global = true,
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub store_flag: Option<PathBuf>,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet", help_heading = "Global options")]
    pub verbose: u8,
    /// Nothing on stderr but errors: no progress, no notes.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Print the result as one JSON document on stdout, errors too (for
    /// scripts; the shapes are in docs/cli.md, each with `schema-version`).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
    /// The store, once flags, environment and files are weighed.
    #[arg(skip)]
    pub store: PathBuf,
    /// The host's configuration files, merged.
    #[arg(skip)]
    pub config: crate::config::Config,
}

impl Cli {
    /// No progress or notes on stderr: `--quiet`, or `--json` (stdout is
    /// for the document; stderr keeps errors only).
    pub fn quiet(&self) -> bool {
        self.quiet || self.json
    }
}

/// The exit codes, documented in `--help` and docs/cli.md.
pub mod exit {
    /// It worked.
    pub const SUCCESS: i32 = 0;
    /// It did not: an operational error (missing file, full disk, a tool that failed).
    pub const FAILURE: i32 = 1;
    /// The command line was wrong.
    pub const USAGE: i32 = 2;
    /// A signature, hash or trust check refused the data: tampering,
    /// corruption, or an untrusted key.
    pub const VERIFICATION: i32 = 3;
}

/// The version of every JSON document's shape (`schema-version`).
pub const JSON_SCHEMA_VERSION: u32 = 1;

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
    /// them: no firmware, no boot loader. With --soft, an image with the
    /// running kernel is switched to without restarting the kernel
    /// (systemd's soft-reboot): its layers mounted through dm-verity with
    /// their signed root hashes, every service restarted in it. When
    /// neither can be used, a normal reboot, with GRUB's next_entry set to
    /// the image.
    Reboot(RebootArgs),
    /// On the build host: write each profile's signed index for machines to pull.
    ///
    /// <store>/images/<profile>/index.json (+ .sig, by the store's key):
    /// every bootable image with its files' sizes and SHA-256, a serial
    /// that grows with each publication and an expiry. Serve the store's
    /// images/ and mirror/ read-only with a web server (docs/fleet.md has
    /// an nginx configuration); machines refuse an index older than one
    /// they saw, an expired one, or one signed by another key.
    Publish(PublishArgs),
    /// On a machine: fetch the newest image of its profile onto the boot disk.
    ///
    /// The profile's signed index is taken from the first base URL that
    /// serves a valid one (fleet.urls in the image, or --url); only the
    /// files the boot disk lacks are fetched (a delta shares its parent's
    /// layers), each verified while it streams, resumable, staged and
    /// renamed into place. The image becomes the default on trial (boot
    /// counting: if it never boots well, GRUB goes back to the last good
    /// image); then the policy acts: stage, reboot, kexec, soft-reboot
    /// (the kernel stays when it can), kexec inside a maintenance window,
    /// or apply-live. No key is needed on the machine.
    Pull(PullArgs),
    /// On a machine: the booted image, what boots next and why, the images on the boot disk.
    Status(StatusArgs),
    /// On a machine: tell the build host how it is (a signed report).
    ///
    /// The boot disk's status (booted and next image, trial, health and the
    /// output of a failed check, last pull, images, free space, kernel,
    /// uptime), numbered and signed with the machine's own key (made on its
    /// boot partition when its disk was made, or now), sent with an HTTP
    /// PUT to <url>/reports/<machine>/report.json of the first fleet URL
    /// that takes it. The report timer runs it after each boot and then
    /// every fleet.report; each pull reports by itself.
    Report(report::ReportArgs),
    /// On the build host: the machines, their reports, their health.
    #[command(subcommand)]
    Fleet(report::FleetCommand),
    /// On the build host: rollouts that advance or halt on the machines' reports.
    ///
    /// A profile with [fleet.rollout] stages (or `cairn publish --rollout
    /// VERSION=1,10,50,100`) sends a new version to its machines stage by
    /// stage; `cairn cycle` takes the reports in and advances a stage when
    /// enough of its machines run the version healthy, or halts the
    /// rollout (the index signed again with the version at 0%) when too
    /// many report it failed.
    #[command(subcommand)]
    Rollout(report::RolloutCommand),
    /// On the build host: sync the mirror, upgrade the profiles, publish their indices.
    ///
    /// What the cairn-cycle timer runs, unattended: the [cycle] section of
    /// /etc/cairn/cairn.toml names the profiles (a profile without an image
    /// yet is built); each index is published again, so machines never see
    /// it expire while the build host is up.
    Cycle(CycleArgs),
    /// On the build host: what machines without a boot disk boot from, over the network.
    ///
    /// Writes <store>/netboot/: cairn's GRUB for BIOS PXE (core.0) and UEFI
    /// (grubx64.efi), the store's key built in and signatures enforced, and
    /// the signed menu of the store's images (newest first, rollback, in
    /// RAM). A DHCP/TFTP server (dnsmasq) hands out the GRUB files; the web
    /// server that serves the store (`cairn publish --nginx-config`) serves
    /// the rest; every file is checked as from a disk, and the initramfs
    /// fetches the signed layers into RAM and checks every block.
    Netboot(NetbootArgs),
    /// The host's configuration: /etc/cairn/cairn.toml and its drop-ins.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// The most jobs (threads) a `--jobs` or `mirror.jobs` asks for.
pub const MAX_JOBS: usize = 256;

/// A count of jobs, 1 to [`MAX_JOBS`], parsed where the command line is
/// read: 0 is no work at all, and each job is a thread (a count in the
/// tens of thousands fails to start, or takes the machine).
fn parse_jobs(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?}: a count of jobs, 1 to {MAX_JOBS}"))?;
    check_jobs(n)
}

/// [`parse_jobs`]'s rule for a count read elsewhere (the configuration).
pub fn check_jobs(n: usize) -> Result<usize, String> {
    match n {
        0 => Err(format!("0 jobs would do nothing: 1 to {MAX_JOBS}")),
        n if n > MAX_JOBS => Err(format!("{n} jobs: at most {MAX_JOBS}")),
        n => Ok(n),
    }
}

/// `physical` or `virtual`, parsed where the command line is read.
fn host_type_parser() -> impl clap::builder::TypedValueParser<Value = crate::profile::HostType> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["physical", "virtual"]).map(|s| {
        if s == "virtual" {
            crate::profile::HostType::Virtual
        } else {
            crate::profile::HostType::Physical
        }
    })
}

/// An http(s) or file URL, parsed where the command line is read (the
/// error names the argument).
fn repo_url(s: &str) -> Result<crate::mirror::url::RepoUrl, String> {
    crate::mirror::url::RepoUrl::parse(s).map_err(|e| format!("{e:#}"))
}

/// Whether colour may be used on stderr: a terminal, and `NO_COLOR` unset
/// (or empty), as no-color.org says.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    // Modes are chosen, not the caller's (fsutil): a hardened umask must
    // not make images, indices or a mirror nobody else can read.
    crate::fsutil::set_umask();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Under --json a usage error is a JSON document too: whether it was
    // asked for is read before parsing (up to a `--`).
    let json = args
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json" || a.to_string_lossy().starts_with("--json="));
    let mut cmd = <Cli as clap::CommandFactory>::command();
    if !colour() {
        cmd = cmd.color(clap::ColorChoice::Never);
    }
    let mut cli = match cmd
        .try_get_matches_from(&args)
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if !json {
                let _ = e.print();
                return e.exit_code();
            }
            // Under --json, help and the version are documents too.
            let what = match e.kind() {
                ErrorKind::DisplayHelp => Some("help"),
                ErrorKind::DisplayVersion => Some("version"),
                _ => None,
            };
            if let Some(what) = what {
                let doc = serde_json::json!({
                    "schema-version": JSON_SCHEMA_VERSION,
                    what: e.render().to_string().trim_end(),
                });
                outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                return exit::SUCCESS;
            }
            let text = e.render().to_string();
            print_json_error(&text, Vec::new(), "usage", exit::USAGE);
            let _ = e.print();
            return exit::USAGE;
        }
    };
    let level = match cli.verbose {
        0 if cli.quiet => tracing::Level::ERROR,
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour())
        .init();
    crate::progress::set_quiet(cli.quiet());
    let result = settle(&mut cli).and_then(|()| run(&cli)).and_then(|code| {
        // What was to be printed and could not be: the command failed.
        match output_failed() {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(code),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            let (kind, code) = if crate::trust::is_verification_failure(&e) {
                ("verification-failed", exit::VERIFICATION)
            } else {
                ("failure", exit::FAILURE)
            };
            if cli.json && !DOCUMENT_SENT.load(std::sync::atomic::Ordering::Relaxed) {
                let causes = e.chain().skip(1).map(|c| c.to_string()).collect();
                print_json_error(&e.to_string(), causes, kind, code);
            }
            // The message quotes programs' output, files and names from
            // untrusted media: no control character reaches the terminal.
            eprintln!(
                "error: {}{}",
                printable(&format!("{e:#}")),
                if code == exit::VERIFICATION {
                    " [verification failed]"
                } else {
                    ""
                }
            );
            code
        }
    }
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static DOCUMENT_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says that the command's one `--json` document is out (a pull's, before
/// its policy switches systems): an error after it goes to stderr only,
/// never as a second document.
fn document_sent() {
    DOCUMENT_SENT.store(true, std::sync::atomic::Ordering::Relaxed);
}

static STDOUT_FAILED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Writes to stdout. Once the reader has gone (a closed pipe), nothing more
/// is written and nothing fails: a command's work does not depend on
/// whether anyone still reads its report. Any other failure (a full disk
/// behind `> file`) is kept, and the command fails with it at its end.
pub(crate) fn out(args: std::fmt::Arguments) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let mut f = STDOUT_FAILED.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert_with(|| format!("writing the output: {e}"));
        }
    }
}

/// The output's failure other than a reader gone, if any.
fn output_failed() -> Option<String> {
    STDOUT_FAILED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// `s` with every control character but newline and tab escaped (`\u{1b}`).
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One line of text from a hostile source (a machine's report, a name in
/// the web server's inbox): control characters, line breaks and the
/// characters that reorder a terminal's text shown escaped.
pub fn printable_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
            {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `{"schema-version": 1, "error": {...}}` on stdout.
fn print_json_error(message: &str, causes: Vec<String>, kind: &str, code: i32) {
    let doc = serde_json::json!({
        "schema-version": JSON_SCHEMA_VERSION,
        "error": {
            "kind": kind,
            "exit-code": code,
            "message": message.trim_end(),
            "causes": causes,
        }
    });
    outln!(
        "{}",
        serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
    );
}

/// The configuration files, then the store (flag > environment > files >
/// default).
fn settle(cli: &mut Cli) -> Result<()> {
    cli.config = crate::config::Config::load_default()?;
    cli.store = cli.config.store(cli.store_flag.as_deref())?.0;
    Ok(())
}

fn run(cli: &Cli) -> Result<i32> {
    // apt source lines, overlayfs options and GRUB name the store's paths as
    // text: a store whose path is not UTF-8 is refused here, not half-used.
    if cli.store.to_str().is_none() {
        anyhow::bail!(
            "the store path {} is not UTF-8: apt sources and mount options name it as text; choose another --store",
            cli.store.display()
        );
    }
    let mode = if cli.quiet() { Mode::Quiet } else { Mode::Auto };
    match &cli.command {
        Command::Mirror(MirrorCommand::Sync(a)) => mirror::run_sync(cli, a, mode),
        Command::Mirror(MirrorCommand::Verify(a)) => mirror::run_verify(cli, a, mode),
        Command::Mirror(MirrorCommand::Sources(a)) => mirror::print_sources(cli, a),
        Command::Mirror(MirrorCommand::Snapshot(c)) => mirror::run_snapshot(cli, c),
        Command::Build(a) => build::run_build(cli, a),
        Command::Upgrade(a) => build::run_upgrade(cli, a),
        Command::ApplyLive(a) => live::run_apply_live(cli, a),
        Command::Reboot(a) => live::run_reboot(cli, a),
        Command::Key(c) => image::run_key(cli, c),
        Command::Image(c) => image::run_image(cli, c),
        Command::Disk(c) => disk::run_disk(cli, c),
        Command::Boot(c) => disk::run_boot(cli, c),
        Command::Vm(c) => vm::run_vm(cli, c),
        Command::Publish(a) => fleet::run_publish(cli, a),
        Command::Pull(a) => fleet::run_pull(cli, a),
        Command::Status(a) => fleet::run_status(cli, a),
        Command::Report(a) => report::run_report(cli, a),
        Command::Fleet(c) => report::run_fleet(cli, c),
        Command::Rollout(c) => report::run_rollout(cli, c),
        Command::Cycle(a) => fleet::run_cycle(cli, a),
        Command::Netboot(a) => netboot::run_netboot(cli, a),
        Command::Config(c) => config::run_config(cli, c),
    }
}

/// Prints `r` for scripts (`--json`: one document with `schema-version`;
/// a list goes under the key `what`), else as `human` writes it.
fn show<T: serde::Serialize>(
    cli: &Cli,
    what: &str,
    r: &T,
    human: impl FnOnce(&T) -> Result<()>,
) -> Result<()> {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&envelope(what, r)?)?);
        Ok(())
    } else {
        human(r)
    }
}

/// A generated text (a server's configuration) as is, or under --json as
/// `{"schema-version": 1, what: text}`.
fn print_text(cli: &Cli, what: &str, text: &str) -> Result<()> {
    show(cli, what, &text, |t| {
        out!("{t}");
        Ok(())
    })
}

/// `r` as a JSON object that starts with `schema-version`.
fn envelope<T: serde::Serialize>(what: &str, r: &T) -> Result<serde_json::Value> {
    let mut doc = serde_json::Map::new();
    doc.insert("schema-version".into(), JSON_SCHEMA_VERSION.into());
    match serde_json::to_value(r)? {
        serde_json::Value::Object(m) => doc.extend(m),
        v => {
            doc.insert(what.into(), v);
        }
    }
    Ok(serde_json::Value::Object(doc))
}
