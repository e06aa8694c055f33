//! `cairn mirror sync|verify|sources`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{Cli, show};
use crate::mirror::config::{MirrorConfig, SyncRequest, resolve};
use crate::mirror::state::list_mirrors;
use crate::mirror::state::{MirrorPaths, MirrorState, apt_source_lines};
use crate::mirror::sync::{SyncOptions, SyncReport, sync};
use crate::mirror::verify::{VerifyOptions, VerifyReport, verify};
use crate::parallel;
use crate::profile::load_arg as load_profile;
use crate::progress::Mode;
use crate::progress::human_bytes;

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
    /// Named, immutable generations of the mirrors, to build from
    /// (`cairn build --snapshot NAME`) and rebuild from (`cairn image rebuild`).
    ///
    /// A snapshot holds each mirror's signed indices and every pool file they
    /// select, as hard links to the live mirror's files: it costs no space,
    /// and a pool file the live mirror later drops stays as long as a
    /// snapshot links it. Kept in <store>/snapshots/NAME/.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Capture the mirrors as they are published now under NAME (refused
    /// when NAME exists: a snapshot never changes).
    Create {
        /// The snapshot's name (letters, digits, `.`, `_`, `+`, `-`).
        name: String,
        /// Only these mirrors (repeatable) [default: every mirror in the store].
        #[arg(long = "mirror", value_name = "MIRROR")]
        mirrors: Vec<String>,
    },
    /// List the snapshots: their suites' Release dates and pool sizes.
    List,
    /// Delete a snapshot (pool files the live mirror or another snapshot
    /// links stay). Refused while an image records it as its input.
    Delete {
        /// The snapshot's name.
        name: String,
        /// Delete it even though images were built from it (they can then no
        /// longer be rebuilt with `cairn image rebuild --check`).
        #[arg(long)]
        force: bool,
    },
}

pub(super) fn run_snapshot(cli: &Cli, c: &SnapshotCommand) -> Result<i32> {
    use crate::mirror::snapshot;
    match c {
        SnapshotCommand::Create { name, mirrors } => {
            if !crate::fsutil::is_root() {
                anyhow::bail!("cairn mirror snapshot create needs root (the store is root's)");
            }
            let s = snapshot::create(&cli.store, name, mirrors)?;
            show(cli, "snapshot", &s, |s| {
                print_snapshot(s);
                Ok(())
            })?;
        }
        SnapshotCommand::List => {
            let all = snapshot::list(&cli.store)?;
            show(cli, "snapshots", &all, |all| {
                if all.is_empty() {
                    outln!(
                        "no snapshots in {}",
                        snapshot::snapshots_dir(&cli.store).display()
                    );
                }
                for s in all {
                    print_snapshot(s);
                }
                Ok(())
            })?;
        }
        SnapshotCommand::Delete { name, force } => {
            let s = snapshot::delete(&cli.store, name, *force, || {
                crate::image::built_from_snapshot(&cli.store, name)
            })?;
            #[derive(serde::Serialize)]
            struct Deleted<'a> {
                deleted: &'a str,
            }
            show(cli, "deleted", &Deleted { deleted: &s.name }, |d| {
                outln!("deleted snapshot {}", d.deleted);
                Ok(())
            })?;
        }
    }
    Ok(0)
}

fn print_snapshot(s: &crate::mirror::snapshot::Snapshot) {
    outln!(
        "{} (made {}) {}",
        s.name,
        cairn_debian::date::format_compact(s.created_at),
        s.path.display()
    );
    for (m, suites) in &s.releases {
        for (suite, r) in suites {
            outln!(
                "  {m}/{suite}: Release {} (Date {})",
                &r.release_sha256[..r.release_sha256.len().min(16)],
                r.date
                    .map(cairn_debian::date::format_compact)
                    .unwrap_or_else(|| "?".into())
            );
        }
        outln!(
            "  {m}: {} pool files ({})",
            s.pool_files.get(m).copied().unwrap_or(0),
            human_bytes(s.pool_bytes.get(m).copied().unwrap_or(0))
        );
    }
}

#[derive(Args, Debug)]
pub struct SourcesArgs {
    /// Mirror name(s) [default: every mirror in the store].
    pub names: Vec<String>,
    /// URL under which a web server serves `<store>/mirror/` [default: file:// paths].
    #[arg(long)]
    pub base_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// A mirror config file (TOML, schema-version = 1; see docs/mirror.md).
    #[arg(long, conflicts_with_all = ["url", "suite", "component", "arch", "keyring", "name"])]
    pub config: Option<PathBuf>,
    /// Mirror this repository instead of the host's apt sources.
    #[arg(long, requires_all = ["suite", "keyring"], value_parser = super::repo_url)]
    pub url: Option<crate::mirror::url::RepoUrl>,
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
    /// Concurrent downloads over keep-alive connections, 1 to 256 [default:
    /// mirror.jobs, or 20].
    #[arg(long, short = 'j', value_name = "N", value_parser = super::parse_jobs)]
    pub jobs: Option<usize>,
    /// Keep pool files that are no longer selected.
    #[arg(long)]
    pub keep_obsolete: bool,
    /// Wait for another sync of the same mirror instead of refusing.
    #[arg(long)]
    pub wait: bool,
    /// Accept a Release `Date` up to this many seconds in the future (clock skew).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub max_future: i64,
    /// Mirror exactly what this profile needs (file, or `default`): the
    /// closure of its packages for its host type.
    /// (Repeatable: the union of several profiles, plus any --package.)
    #[arg(long, conflicts_with_all = ["full", "priority"])]
    pub profile: Vec<String>,
    /// Mirror the profiles for this host type (physical, virtual; repeat
    /// for both) instead of each profile's own (`auto`: this build
    /// host's). A physical host's image needs another kernel, microcode and
    /// firmware (from the non-free-firmware component, unless the profile
    /// says `non-free-firmware = false`).
    #[arg(long, value_parser = super::host_type_parser(), conflicts_with_all = ["full", "priority"])]
    pub host_type: Vec<crate::profile::HostType>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Mirror name(s) [default: every mirror in the store].
    pub names: Vec<String>,
    /// Refetch missing and corrupt files from the source, verified against the
    /// published signed indices, and remove unexpected pool files.
    #[arg(long)]
    pub repair: bool,
    /// Hashing jobs, 1 to 256 [default: number of CPUs]: indices are hashed
    /// this many at once, pool files twice as many (a cold disk serves more
    /// reads at once).
    #[arg(long, short = 'j', value_parser = super::parse_jobs)]
    pub jobs: Option<usize>,
    /// Wait for a running sync instead of refusing.
    #[arg(long)]
    pub wait: bool,
}

/// Concurrent downloads of `mirror sync` when nothing says otherwise.
pub const DEFAULT_JOBS: usize = 20;

pub(super) fn run_sync(cli: &Cli, a: &SyncArgs, mode: Mode) -> Result<i32> {
    let jobs = match a.jobs {
        Some(j) => j,
        None => match cli.config.settings.mirror.jobs {
            Some(j) => super::check_jobs(j)
                .map_err(|e| anyhow::anyhow!("mirror.jobs in the configuration: {e}"))?,
            None => DEFAULT_JOBS,
        },
    };
    let cfg = sync_config(cli, a)?;
    let mut opts = SyncOptions::new(cli.store.clone());
    opts.jobs = jobs;
    opts.keep_obsolete = a.keep_obsolete;
    opts.wait = a.wait;
    opts.progress = mode;
    opts.max_future = a.max_future;
    if !cli.quiet() {
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
    show(cli, "sync", &report, |report| {
        print_sync(report);
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn run_verify(cli: &Cli, a: &VerifyArgs, mode: Mode) -> Result<i32> {
    let names = if a.names.is_empty() {
        list_mirrors(&cli.store)?
    } else {
        a.names.clone()
    };
    for n in &names {
        crate::names::check("mirror name", n)?;
    }
    // Each once (they are verified side by side, each under its lock).
    let mut seen = std::collections::BTreeSet::new();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect();
    if names.is_empty() {
        anyhow::bail!(
            "no mirrors in {}: run `cairn mirror sync` first",
            cli.store.join("mirror").display()
        );
    }
    let opts = VerifyOptions {
        store: cli.store.clone(),
        jobs: a
            .jobs
            .unwrap_or_else(|| parallel::cpus().clamp(1, super::MAX_JOBS)),
        repair: a.repair,
        wait: a.wait,
        progress: mode,
        max_future: 10,
    };
    // The mirrors side by side, four at most (each hashes on every core):
    // one's fixed costs (gpgv, the indices read) in the time another is
    // hashed. The first shows progress.
    let each: Vec<(usize, &String)> = names.iter().enumerate().collect();
    let reports = parallel::map(&each, 4, |&(i, n)| {
        let mut o = opts.clone();
        if i > 0 {
            o.progress = Mode::Quiet;
        }
        verify(n, &o).with_context(|| format!("verifying mirror {n}"))
    })
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let ok = reports.iter().all(|r| r.ok);
    show(cli, "mirrors", &reports, |reports| {
        for r in reports {
            print_verify(r);
        }
        Ok(())
    })?;
    Ok(if ok {
        super::exit::SUCCESS
    } else {
        super::exit::VERIFICATION
    })
}

pub(super) fn print_sources(cli: &Cli, a: &SourcesArgs) -> Result<i32> {
    let store = cli.store.as_path();
    let names = if a.names.is_empty() {
        list_mirrors(store)?
    } else {
        a.names.clone()
    };
    if names.is_empty() {
        anyhow::bail!(
            "no mirrors in {}: run `cairn mirror sync` first",
            store.join("mirror").display()
        );
    }
    let mut all = Vec::new();
    for n in &names {
        crate::names::check("mirror name", n)?;
        let paths = MirrorPaths::new(store, n);
        let state = MirrorState::load(&paths)?
            .with_context(|| format!("mirror {n} has not been synced into {}", store.display()))?;
        all.push(serde_json::json!({"name": n, "lines": apt_source_lines(&paths, &state, a.base_url.as_deref())}));
    }
    show(cli, "mirrors", &all, |all| {
        for m in all {
            for l in m["lines"].as_array().into_iter().flatten() {
                outln!("{}", l.as_str().unwrap_or_default());
            }
        }
        Ok(())
    })?;
    Ok(0)
}

/// The command line as a request; `mirror::config::resolve` owns the policy.
/// Without sources or a selection on the command line, the configuration's
/// (`mirror.config`, `mirror.profiles`); without those, the host's apt
/// sources and the closure of the `default` profile, which is what
/// `cairn build` with no profile needs.
fn sync_config(cli: &Cli, a: &SyncArgs) -> Result<MirrorConfig> {
    let m = &cli.config.settings.mirror;
    let sources_given = a.config.is_some() || a.url.is_some();
    let config = if sources_given {
        a.config.clone()
    } else {
        m.config.clone()
    };
    let selection_given = !a.profile.is_empty()
        || !a.package.is_empty()
        || !a.priority.is_empty()
        || a.full
        || a.no_closure;
    // A mirror config file carries its own selection.
    let profile_args = if selection_given || config.is_some() || a.url.is_some() {
        a.profile.clone()
    } else {
        m.profiles.clone().unwrap_or_else(|| vec!["default".into()])
    };
    let profiles = profile_args
        .iter()
        .map(|p| load_profile(&cli.config.profile_arg(p)?))
        .collect::<Result<Vec<_>>>()?;
    resolve(&SyncRequest {
        config: config.as_deref(),
        url: a.url.as_ref(),
        name: a.name.as_deref(),
        suites: &a.suite,
        components: &a.component,
        architectures: &a.arch,
        keyring: &a.keyring,
        needs: &profiles
            .iter()
            .map(|p| p.mirror_needs(&a.host_type))
            .collect::<Vec<_>>(),
        packages: &a.package,
        priorities: &a.priority,
        full: a.full,
        no_closure: a.no_closure,
        recommends: a.recommends,
        all_versions: a.all_versions,
    })
}

fn print_sync(r: &SyncReport) {
    if r.up_to_date {
        outln!(
            "up to date: nothing changed upstream or in the selection ({:.1}s)",
            r.seconds
        );
    }
    for repo in &r.repos {
        for s in &repo.suites {
            outln!(
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
            for l in &s.left_out {
                outln!("    left out {}: {}", l.path, l.reason);
            }
        }
        outln!(
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
        outln!(
            "warning: {} dependencies are not satisfied by the mirrored suites:",
            r.unsatisfied.len()
        );
        for u in r.unsatisfied.iter().take(20) {
            outln!("  {u}");
        }
    }
    outln!(
        "{} packages ({}); fetched {} in {:.1}s",
        r.packages,
        r.selection,
        human_bytes(r.fetched_bytes),
        r.seconds
    );
}

fn print_verify(r: &VerifyReport) {
    for s in &r.suites {
        outln!(
            "  {}/{}: signed by {} (Date {})",
            r.name,
            s.suite,
            s.signed_by.join(", "),
            s.date.as_deref().unwrap_or("?")
        );
    }
    for p in &r.release_problems {
        outln!("  RELEASE {}: {}", p.path, p.detail);
    }
    for m in &r.missing {
        outln!("  MISSING {m}");
    }
    for c in &r.corrupt {
        outln!("  CORRUPT {}: {}", c.path, c.detail);
    }
    for u in &r.unexpected {
        outln!("  UNEXPECTED {u}");
    }
    for f in &r.repaired {
        outln!("  REPAIRED {f}");
    }
    outln!(
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// The first run: `cairn mirror sync` with nothing else mirrors what
    /// `cairn build` (the default profile) installs.
    #[test]
    fn the_default_sync_covers_the_default_build() {
        if crate::mirror::config::host_repos(std::path::Path::new("/")).is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: this host has no apt sources to read"
            );
            eprintln!("SKIPPED: this host has no apt sources to read");
            return;
        }
        let cli = super::Cli::try_parse_from(["cairn", "mirror", "sync"]).unwrap();
        let super::super::Command::Mirror(super::MirrorCommand::Sync(a)) = &cli.command else {
            panic!("not a sync");
        };
        let cfg = super::sync_config(&cli, a).unwrap();
        let p = crate::profile::load_arg("default").unwrap();
        let mut want = p.all_packages(p.resolved_host_type());
        want.sort();
        // From the default profile's own release, with their closure.
        let mut got = cfg.selection.suites[crate::profile::suite_family(&p.suite)].clone();
        got.sort();
        assert_eq!(got, want);
        assert!(cfg.selection.packages.is_empty());
        assert!(cfg.selection.closure);
        // A selection on the command line wins.
        let cli = super::Cli::try_parse_from(["cairn", "mirror", "sync", "-p", "hello"]).unwrap();
        let super::super::Command::Mirror(super::MirrorCommand::Sync(a)) = &cli.command else {
            panic!("not a sync");
        };
        assert_eq!(
            super::sync_config(&cli, a).unwrap().selection.packages,
            ["hello"]
        );
    }
}
