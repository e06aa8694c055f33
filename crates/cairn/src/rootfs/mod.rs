//! `cairn build PROFILE`: a root tree from the local mirror only
//! (mmdebstrap), live-boot and initramfs, the profile's
//! packages, files and hooks, data paths, cleanup; then the image: squashfs,
//! kernel and initrd beside it, manifest, sums, signatures, optional ISO —
//! built in a work directory and moved into the store only when complete.

pub mod chroot;
pub mod customize;
pub mod debootstrap;

use fs_err as fs;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_debian::{Package, compare_versions, read_packages};
use serde::Serialize;

use crate::cmd::tool::{DEBOOTSTRAP, GPG, MKSQUASHFS, MMDEBSTRAP};
use crate::cmd::{Cmd, require, shell_quote};
use crate::image::{self, Manifest, PackageVersion, SQUASHFS, squashfs};
use crate::mirror::closure::select;
use crate::mirror::config::Selection;
use crate::mirror::state::list_mirrors;
use crate::mirror::state::{MirrorPaths, MirrorState, apt_source_lines};
use crate::parallel;
use crate::profile::{Bootstrap, Compression, HostType, Profile};
use crate::trust::keys;

const AUTOMOUNT_HOOK: &str = "/usr/share/mmdebstrap/hooks/file-mirror-automount";

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub store: PathBuf,
    pub iso: Option<bool>,
    pub compression: Option<Compression>,
    pub level: Option<u32>,
    pub host_type: Option<HostType>,
    /// SOURCE_DATE_EPOCH for the tree and the squashfs [default: the
    /// newest Release `Date` of the mirrors read, so the same inputs give
    /// the same bytes whenever they are built].
    pub epoch: Option<i64>,
    /// Build from this mirror snapshot, not the live mirrors.
    pub snapshot: Option<String>,
    /// mksquashfs threads [default: every core]; the bytes do not depend on it.
    pub processors: Option<usize>,
    /// `image rebuild`: make the tree and its files (squashfs, kernel,
    /// initrd) in this directory's `image/`, and stop there: nothing is
    /// signed or published.
    pub check_into: Option<PathBuf>,
    pub quiet: bool,
}

impl BuildOptions {
    pub fn new(store: PathBuf) -> BuildOptions {
        BuildOptions {
            store,
            iso: None,
            compression: None,
            level: None,
            host_type: None,
            epoch: None,
            snapshot: None,
            processors: None,
            check_into: None,
            quiet: true,
        }
    }
}

/// What a build or upgrade reads: the live mirrors or a snapshot's, as apt
/// sources, and the record of them for the manifest.
pub struct Inputs {
    pub mirrors: Vec<(MirrorPaths, MirrorState, Vec<String>)>,
    pub source: image::BuildSource,
    /// How the snapshot differs from what it recorded when it was made
    /// (only with `Strictness::Report`; otherwise such a snapshot is refused).
    pub snapshot_changes: Vec<String>,
    _hold: Option<crate::mirror::snapshot::InUse>,
}

/// What a snapshot that no longer holds what it recorded means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// A build: refused.
    Refuse,
    /// A rebuild check: reported, and the rebuild goes on with what is there.
    Report,
}

impl Inputs {
    /// The mirrors serving `suite`, from snapshot `snapshot` or the store's
    /// live mirrors; the epoch is `epoch`, else the newest Release `Date`
    /// among them. Every Release file is hashed: one that is not what the
    /// mirror verified is refused.
    pub fn read(
        store: &Path,
        suite: &str,
        snapshot: Option<&str>,
        epoch: Option<i64>,
        strictness: Strictness,
    ) -> Result<Inputs> {
        use crate::mirror::snapshot;
        let (base, hold, recorded) = match snapshot {
            Some(n) => {
                // Checked, held, then read (it was not deleted in between).
                snapshot::open(store, n)?;
                let hold = snapshot::hold(store, n)?;
                let s = snapshot::open(store, n)?;
                (s.path, Some(hold), Some(s.releases))
            }
            None => (store.to_path_buf(), None, None),
        };
        let mirrors = mirror_sources(&base, suite)?;
        let pairs: Vec<(MirrorPaths, MirrorState)> = mirrors
            .iter()
            .map(|(p, s, _)| (p.clone(), s.clone()))
            .collect();
        let releases = snapshot::releases_now(&pairs)?;
        let mut snapshot_changes = Vec::new();
        if let (Some(n), Some(recorded)) = (snapshot, recorded) {
            // The suites this build reads, as the snapshot recorded them.
            let mut wanted = snapshot::Releases::new();
            for (m, suites) in recorded {
                let s: std::collections::BTreeMap<_, _> = suites
                    .into_iter()
                    .filter(|(x, _)| in_family(x, suite))
                    .collect();
                if !s.is_empty() {
                    wanted.insert(m, s);
                }
            }
            snapshot_changes = snapshot::release_changes(&wanted, &releases);
            if !snapshot_changes.is_empty() && strictness == Strictness::Refuse {
                return Err(anyhow::Error::new(crate::trust::VerificationFailed::new(
                    snapshot_changes.join("; "),
                )))
                .context(format!(
                    "snapshot {n} no longer holds what it recorded when it was made: not built from"
                ));
            }
        }
        let newest = releases
            .values()
            .flat_map(|s| s.values())
            .filter_map(|r| r.date)
            .max();
        let epoch = epoch.or(newest).with_context(|| {
            format!("the Release files of the mirrors serving {suite} carry no Date: set SOURCE_DATE_EPOCH")
        })?;
        Ok(Inputs {
            mirrors,
            source: image::BuildSource {
                snapshot: snapshot.map(String::from),
                epoch,
                releases,
            },
            snapshot_changes,
            _hold: hold,
        })
    }

    /// apt options the inputs need: a snapshot is a pinned past, whose
    /// Release files may have passed their `Valid-Until` (their signatures
    /// and hashes are still checked).
    pub fn apt_options(&self) -> Vec<(&'static str, &'static str)> {
        if self.source.snapshot.is_some() {
            vec![("Acquire::Check-Valid-Until", "false")]
        } else {
            Vec::new()
        }
    }

    /// `apt_options` as `-o KEY=VALUE` arguments.
    pub fn apt_args(&self) -> Vec<String> {
        self.apt_options()
            .into_iter()
            .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
            .collect()
    }
}

#[derive(Debug, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub profile: String,
    pub version: String,
    pub path: PathBuf,
    pub host_type: HostType,
    pub kernel: String,
    pub packages: usize,
    pub compression: Compression,
    pub files: std::collections::BTreeMap<String, u64>,
    pub signed_by: String,
    /// The snapshot or mirrors' Release files read, and the epoch.
    pub source: image::BuildSource,
    pub stages: Vec<Stage>,
    pub seconds: f64,
}

/// Whether `s` is `suite` or one of its siblings (-updates, -security, /updates).
fn in_family(s: &str, suite: &str) -> bool {
    s == suite || s.starts_with(&format!("{suite}-")) || s.starts_with(&format!("{suite}/"))
}

/// `20261125T181500Z`: versions sort by time.
/// The published mirrors that serve `suite` (and its -updates/-security
/// siblings), as apt source lines.
pub fn mirror_sources(
    store: &Path,
    suite: &str,
) -> Result<Vec<(MirrorPaths, MirrorState, Vec<String>)>> {
    let mut out = Vec::new();
    for name in list_mirrors(store)? {
        let paths = MirrorPaths::new(store, &name);
        let Some(mut state) = MirrorState::load(&paths)? else {
            continue;
        };
        state.repo.suites.retain(|s| in_family(s, suite));
        if state.repo.suites.is_empty() || paths.current_generation().is_none() {
            continue;
        }
        let lines = apt_source_lines(&paths, &state, None);
        out.push((paths, state, lines));
    }
    if out.is_empty() {
        bail!(
            "no local mirror serves suite {suite} in {}: run `cairn mirror sync` (cairn builds from the local mirror only)",
            store.join("mirror").display()
        );
    }
    Ok(out)
}

/// Checks that the local mirrors hold every package the build will install
/// (the same closure `cairn mirror sync --profile` mirrors).
pub fn preflight_mirror(
    mirrors: &[(MirrorPaths, MirrorState, Vec<String>)],
    profile: &Profile,
    packages: &[String],
    profile_arg: &str,
    host: HostType,
) -> Result<usize> {
    let mut pkgs: Vec<Package> = Vec::new();
    let mut roots: Vec<PathBuf> = Vec::new();
    for (paths, state, _) in mirrors {
        let gen_dir = paths.current_generation().context("unpublished mirror")?;
        for suite in &state.repo.suites {
            for comp in &state.repo.components {
                let f = gen_dir
                    .join(suite)
                    .join(comp)
                    .join(format!("binary-{}", profile.architecture))
                    .join("Packages");
                let Ok(file) = fs::File::open(&f) else {
                    continue;
                };
                let before = pkgs.len();
                read_packages(std::io::BufReader::with_capacity(1 << 20, file), |p| {
                    pkgs.push(p)
                })
                .with_context(|| format!("reading {}", f.display()))?;
                roots.extend(std::iter::repeat_n(paths.root.clone(), pkgs.len() - before));
            }
        }
    }
    // A command that works: the host type this build is for, when the
    // profile alone would say another.
    let (hint, after) = if host == profile.resolved_host_type() {
        (format!("cairn mirror sync --profile {profile_arg}"), "")
    } else {
        (
            format!(
                "cairn mirror sync --profile {profile_arg} --host-type {}",
                host.name()
            ),
            " (a sync mirrors what it is asked for: name every profile and host type this mirror serves)",
        )
    };
    let sel = Selection {
        packages: packages.to_vec(),
        closure: true,
        ..Default::default()
    };
    let chosen = select(&pkgs, &sel).map_err(|e| {
        anyhow::anyhow!("{e}: the local mirror lacks them; add them with `{hint}`{after}")
    })?;
    let missing: Vec<String> = chosen
        .chosen
        .iter()
        .filter(|&&i| !roots[i].join(&pkgs[i].filename).exists())
        .map(|&i| format!("{} {}", pkgs[i].name, pkgs[i].version))
        .collect();
    if !missing.is_empty() {
        let n = missing.len();
        let shown: Vec<String> = missing.into_iter().take(12).collect();
        bail!(
            "the local mirror lacks {n} package file(s) this build needs ({}{}): add them with `{hint}`{after}",
            shown.join(", "),
            if n > 12 { ", …" } else { "" }
        );
    }
    Ok(chosen.chosen.len())
}

/// The lock that keeps one build or upgrade per profile at a time, and the
/// profile's directory in the store.
pub(crate) fn lock_profile(store: &Path, name: &str) -> Result<(crate::fsutil::Lock, PathBuf)> {
    let images = image::images_dir(store);
    fs::create_dir_all(&images)?;
    let lock = crate::fsutil::Lock::acquire(
        &images.join(format!(".{name}.lock")),
        &format!("profile {name}"),
        false,
        "",
    )?;
    Ok((lock, images.join(name)))
}

/// A new version name (a UTC stamp, `-N` when taken) that sorts after `after`.
pub(crate) fn next_version(pdir: &Path, started: i64, after: Option<&str>) -> String {
    let stamp = cairn_debian::date::format_compact(started);
    let mut version = stamp.clone();
    let mut n = 1;
    while pdir.join(&version).exists() || after.is_some_and(|a| version.as_str() <= a) {
        n += 1;
        version = format!("{stamp}-{n}");
    }
    version
}

/// Records the files of `out` in the manifest, writes it, seals the image
/// (sums and their signatures; `image::prepare_boot` has made the boot
/// files) and moves it into `pdir/<version>`.
pub(crate) fn seal_and_publish(
    out: &Path,
    pdir: &Path,
    manifest: &mut Manifest,
    key: &keys::SigningKey,
    steps: &crate::progress::Steps,
) -> Result<PathBuf> {
    for e in fs::read_dir(out)?.flatten() {
        manifest.files.insert(
            e.file_name().to_string_lossy().into_owned(),
            e.metadata()?.len(),
        );
    }
    manifest.build_seconds = steps.seconds();
    fs::write(
        out.join(image::MANIFEST),
        serde_json::to_vec_pretty(manifest)?,
    )?;
    image::seal_sums(out, key)?;
    let dest = pdir.join(&manifest.version);
    crate::fsutil::sync_dir(out)?;
    fs::rename(out, &dest).with_context(|| format!("moving the image to {}", dest.display()))?;
    crate::fsutil::sync_dir(pdir)?;
    Ok(dest)
}

/// Unmounts anything still mounted below `dir` (a killed build's /proc,
/// /dev…) so removing the tree can never reach into the host. `dir` itself
/// stays mounted if it is a mount point. A mount table that cannot be read
/// is an error: nothing below `dir` may then be removed.
pub fn unmount_below(dir: &Path) -> Result<()> {
    unmount_below_by(dir, Path::new("/proc/self/mountinfo"))
}

fn unmount_below_by(dir: &Path, mountinfo: &Path) -> Result<()> {
    let Ok(canon) = dir.canonicalize() else {
        return Ok(());
    };
    for _ in 0..3 {
        let info = fs::read_to_string(mountinfo).with_context(|| {
            format!(
                "reading {}: cannot tell what is mounted below {}, so nothing there is removed",
                mountinfo.display(),
                dir.display()
            )
        })?;
        let mut points: Vec<PathBuf> = mount_points(&info)
            .into_iter()
            .filter(|p| p.starts_with(&canon) && *p != canon)
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = Cmd::new("umount").arg("--lazy").arg(&p).output_any_status();
        }
    }
    bail!(
        "{} still has mounts below it; not removing it",
        dir.display()
    )
}

/// The mount points of a mountinfo table (its octal escapes undone).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            PathBuf::from(
                p.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .collect()
}

/// A work directory removed on drop (after unmounting anything below it).
pub(crate) struct WorkDir(pub(crate) PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if unmount_below(&self.0).is_ok() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Builds `profile` into the store.
pub fn build(profile: &Profile, profile_arg: &str, opts: &BuildOptions) -> Result<BuildReport> {
    let steps = crate::progress::Steps::start(opts.quiet);
    let say = |m: &str| steps.say(m);
    // Everything that can fail early does, before any work.
    if !crate::fsutil::is_root() {
        bail!("cairn build needs root (mmdebstrap --mode=root, hooks that chroot)");
    }
    let boot_tool = match profile.bootstrap {
        Bootstrap::Mmdebstrap => &MMDEBSTRAP,
        Bootstrap::Debootstrap => &DEBOOTSTRAP,
    };
    require(&[boot_tool, &MKSQUASHFS, &GPG])?;
    let cairn_package = customize::cairn_package(&opts.store, profile)?;
    let compression = opts.compression.unwrap_or(profile.image.compression);
    let level = if opts.compression.is_some() {
        opts.level
    } else {
        opts.level.or(profile.image.level)
    };
    if let (Some(l), r) = (level, compression.levels()) {
        match r {
            Some(r) if r.contains(&l) => {}
            _ => bail!("level {l} does not apply to {}", compression.name()),
        }
    }
    let iso = opts.iso.unwrap_or(profile.image.iso);
    if iso {
        image::iso::require_tools()?;
        if !compression.bootable() {
            bail!(
                "an ISO of an lzma image could never boot: the kernel has no legacy LZMA squashfs support; choose xz"
            );
        }
    }
    if !compression.bootable() {
        tracing::warn!(
            "lzma (legacy LZMA) squashfs cannot be mounted by Debian's kernel: this image will not boot; use xz"
        );
    }
    let key = keys::load(&opts.store)?;
    let host = opts
        .host_type
        .unwrap_or_else(|| profile.resolved_host_type());
    let packages = profile.all_packages(host);
    let inputs = Inputs::read(
        &opts.store,
        &profile.suite,
        opts.snapshot.as_deref(),
        opts.epoch,
        if opts.check_into.is_some() {
            Strictness::Report
        } else {
            Strictness::Refuse
        },
    )?;
    let mirrors = &inputs.mirrors;
    let epoch = inputs.source.epoch;
    let closure = preflight_mirror(mirrors, profile, &packages, profile_arg, host)?;
    say(&format!(
        "profile {}: {} host, {} packages requested ({closure} with dependencies), all in {}",
        profile.name,
        host.name(),
        packages.len(),
        match &opts.snapshot {
            Some(n) => format!("mirror snapshot {n}"),
            None => "the local mirror".into(),
        }
    ));

    // The profile's lock and a fresh version, or (a rebuild) the caller's
    // directory.
    let started = crate::unix_now();
    let (_lock, pdir, version, work) = match &opts.check_into {
        Some(dir) => (
            None,
            dir.clone(),
            "rebuild".to_string(),
            WorkDir(dir.join("work")),
        ),
        None => {
            let (lock, pdir) = lock_profile(&opts.store, &profile.name)?;
            fs::create_dir_all(&pdir)?;
            for e in fs::read_dir(&pdir)?.flatten() {
                if e.file_name().to_string_lossy().starts_with(".build-") {
                    unmount_below(&e.path())?;
                    fs::remove_dir_all(e.path()).with_context(|| {
                        format!("removing a killed build's {}", e.path().display())
                    })?;
                }
            }
            let version = next_version(&pdir, started, None);
            let work = WorkDir(pdir.join(format!(".build-{version}")));
            (Some(lock), pdir, version, work)
        }
    };
    crate::fsutil::private_dir(&work.0)?;
    let rootfs = work.0.join("rootfs");
    let out = match &opts.check_into {
        Some(dir) => dir.join("image"),
        None => work.0.join("out"),
    };
    fs::create_dir_all(&out)?;
    let mut stages = Vec::new();
    let mut stage = |name: &'static str, t: Instant| {
        stages.push(Stage {
            name,
            seconds: t.elapsed().as_secs_f64(),
        })
    };

    // 1. The tree.
    let t = Instant::now();
    say(&format!(
        "bootstrap with {} from {} local mirror(s)",
        boot_tool.program,
        mirrors.len()
    ));
    match profile.bootstrap {
        Bootstrap::Mmdebstrap => {
            let sources: Vec<String> = mirrors.iter().flat_map(|m| m.2.clone()).collect();
            bootstrap(
                profile,
                &packages,
                &sources,
                &inputs.apt_options(),
                &rootfs,
                &work.0,
                epoch,
            )?;
        }
        Bootstrap::Debootstrap => {
            debootstrap::bootstrap(
                profile,
                &packages,
                &inputs,
                &rootfs,
                &work.0,
                epoch,
                profile_arg,
            )?;
        }
    }
    let mirror_dirs: Vec<PathBuf> = mirrors.iter().map(|m| m.0.root.clone()).collect();
    customize::remove_mount_points(&rootfs, &mirror_dirs)?;
    stage("bootstrap", t);

    // 2. cairn's own changes.
    let t = Instant::now();
    apply_profile_identity(&rootfs, profile)?;
    let Finished { kernel, installed } = finish_tree(
        &rootfs,
        profile,
        &key,
        cairn_package.as_ref(),
        epoch,
        mirrors,
        &out,
    )?;
    stage("customize", t);

    // 3. squashfs.
    let t = Instant::now();
    say(&format!(
        "mksquashfs ({}{})",
        compression.name(),
        level.map(|l| format!(" level {l}")).unwrap_or_default()
    ));
    squashfs::pack(
        &rootfs,
        &out.join(SQUASHFS),
        compression,
        level,
        opts.processors.unwrap_or_else(parallel::cpus),
        Some(epoch),
    )?;
    unmount_below(&rootfs)?;
    fs::remove_dir_all(&rootfs).ok();
    stage("squashfs", t);
    if opts.check_into.is_some() {
        // A rebuild compares these; it signs and publishes nothing.
        drop(work);
        let files = fs::read_dir(&out)?
            .flatten()
            .map(|e| {
                Ok((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata()?.len(),
                ))
            })
            .collect::<Result<_>>()?;
        return Ok(BuildReport {
            profile: profile.name.clone(),
            version,
            path: out,
            host_type: host,
            kernel,
            packages: installed.len(),
            compression,
            files,
            signed_by: key.fingerprint,
            source: inputs.source,
            stages,
            seconds: steps.seconds(),
        });
    }

    // 4. Manifest, verity trees, boot arguments, ISO, sums and signatures.
    let t = Instant::now();
    let cmdline = kernel_cmdline(profile);
    let mut manifest = Manifest {
        schema_version: 1,
        profile: profile.name.clone(),
        profile_hash: profile.hash()?,
        profile_commit: profile.git_commit(),
        version: version.clone(),
        suite: profile.suite.clone(),
        architecture: profile.architecture.clone(),
        host_type: host,
        kernel: kernel.clone(),
        kernel_cmdline: cmdline.clone(),
        compression,
        level,
        bootable: compression.bootable(),
        parent: None,
        layers: vec![SQUASHFS.into()],
        requested: packages.clone(),
        hooks: profile.hooks.iter().map(|h| h.digest()).collect(),
        packages: installed,
        files: Default::default(),
        data: profile.data.clone(),
        built_at: started,
        build_seconds: 0.0,
        signed_by: Some(key.fingerprint.clone()),
        cairn_version: env!("CARGO_PKG_VERSION").into(),
        source: Some(inputs.source.clone()),
    };
    // The boot files (verity trees, boot.cfg, signatures), which the ISO
    // carries too; then the sums over everything.
    say("dm-verity hash trees, boot arguments, signatures");
    let args = image::prepare_boot(&out, &manifest, &key)?;
    if iso {
        say("hybrid ISO (BIOS + UEFI)");
        let title = format!("cairn {} {version}", profile.name);
        image::iso::make(
            &out,
            &manifest,
            &out.join(format!("{}.iso", profile.name)),
            &title,
            &args,
            &volid(&profile.name),
            &work.0,
        )?;
    }
    // 5. Sealed, then into the store, whole or not at all.
    let dest = seal_and_publish(&out, &pdir, &mut manifest, &key, &steps)?;
    stage("seal", t);
    drop(work);
    say(&format!(
        "image {} {version} -> {}",
        profile.name,
        dest.display()
    ));
    Ok(BuildReport {
        profile: profile.name.clone(),
        version,
        path: dest,
        host_type: host,
        kernel,
        packages: manifest.packages.len(),
        compression,
        files: manifest.files,
        signed_by: key.fingerprint,
        source: inputs.source,
        stages,
        seconds: steps.seconds(),
    })
}

/// Packages that would run what the boot medium holds: live-config reads
/// and runs `live/config.conf*` from the medium as root at every boot — and
/// whoever can write the boot partition writes those. Refused by name.
pub(crate) fn refuse_medium_readers(installed: &[PackageVersion]) -> Result<()> {
    if let Some(p) = installed.iter().find(|p| p.name == "live-config") {
        bail!(
            "the image would contain {} {}: it runs scripts from the boot medium as root, which anyone who can write the boot partition could place there; leave it (and live-config-systemd) out of the profile",
            p.name,
            p.version
        );
    }
    Ok(())
}

/// An image's kernel command line (before the boot arguments cairn adds):
/// the consoles, `panic=10` — a kernel panic, or initramfs-tools giving up
/// before cairn's initramfs part is in charge, reboots (boot counting goes
/// on) instead of waiting or opening a shell — then the profile's own.
pub(crate) fn kernel_cmdline(profile: &Profile) -> Vec<String> {
    let mut v = vec![
        "console=tty0".to_string(),
        "console=ttyS0,115200n8".to_string(),
        "panic=10".to_string(),
    ];
    v.extend(profile.kernel_cmdline.iter().cloned());
    v
}

/// ISO 9660 volume ids: at most 32 upper-case characters.
fn volid(name: &str) -> String {
    let mut v: String = format!("CAIRN_{}", name.to_ascii_uppercase())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    v.truncate(32);
    v
}

fn bootstrap(
    profile: &Profile,
    packages: &[String],
    sources: &[String],
    apt_options: &[(&str, &str)],
    rootfs: &Path,
    work: &Path,
    epoch: i64,
) -> Result<()> {
    // Profile files and hooks run inside mmdebstrap's customize phase, in
    // order, with its environment and /proc, /sys, /dev mounted for them.
    // Files are written from inside the tree (chroot): a symlink in it, such
    // as Debian's /var/run -> /run, resolves in the tree, never on the host.
    let mut hooks: Vec<String> = Vec::new();
    // Microcode for every CPU (a physical image's), before the profile's
    // own files and hooks.
    let microcode = work.join("microcode.sh");
    fs::write(&microcode, customize::MICROCODE_EVERYWHERE)?;
    hooks.push(format!(
        "chroot \"$1\" sh -s -- '' regenerate < {}",
        shell_quote(&microcode.display().to_string())
    ));
    for f in &profile.files {
        let parent = Path::new(&f.dest)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let dest = shell_quote(&f.dest);
        hooks.push(format!("chroot \"$1\" mkdir -p {}", shell_quote(&parent)));
        hooks.push(format!(
            "chroot \"$1\" sh -c 'cat > \"$0\"' {dest} < {}",
            shell_quote(&f.source.display().to_string()),
        ));
        hooks.push(format!("chroot \"$1\" chmod {:o} {dest}", f.mode));
    }
    for p in write_hooks(profile, work)? {
        hooks.push(format!(
            "sh {} \"$1\"",
            shell_quote(&p.display().to_string())
        ));
    }
    // cairn's initramfs parts go in before the kernel and live-boot are
    // installed, so the initramfs is generated once, with them.
    let early = work.join("early");
    customize::live_verify(&early)?;
    let mut cmd = Cmd::new(MMDEBSTRAP.program)
        .args(["--mode=root", "--format=directory"])
        .arg(format!(
            "--essential-hook=cp -a {}/. \"$1\"/",
            shell_quote(&early.display().to_string())
        ))
        .arg(format!("--variant={}", profile.variant))
        .arg(format!("--architectures={}", profile.architecture))
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!("--hook-dir={AUTOMOUNT_HOOK}"))
        .arg("--aptopt=Acquire::Languages \"none\"")
        .args(
            apt_options
                .iter()
                .map(|(k, v)| format!("--aptopt={k} \"{v}\"")),
        )
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    for h in &hooks {
        cmd = cmd.arg(format!("--customize-hook={h}"));
    }
    cmd.arg(&profile.suite)
        .arg(rootfs)
        .args(sources)
        .progress("mmdebstrap")
        .run()
        .context("bootstrapping with mmdebstrap")?;
    Ok(())
}

/// What the profile says of the system itself: its hostname, root's
/// access, its data paths. A build applies it to every tree; an upgrade
/// when the profile changed (the parent's tree has what it said before).
pub(crate) fn apply_profile_identity(root: &Path, profile: &Profile) -> Result<()> {
    customize::hostname(root, &profile.hostname)?;
    customize::root_access(root, profile)?;
    customize::data_paths(root, &profile.data)
}

/// What `finish_tree` found in the tree.
pub(crate) struct Finished {
    pub kernel: String,
    pub installed: Vec<PackageVersion>,
}

/// cairn's own steps that end every tree, built or upgraded: the boot
/// marker, cairn's tools and key, the fleet settings; then the packages
/// (refusing one that would read the boot medium), the kernel and initrd
/// copied into `out`, and the tree cleaned for reproducible bytes.
pub(crate) fn finish_tree(
    root: &Path,
    profile: &Profile,
    key: &keys::SigningKey,
    cairn_package: Option<&customize::CairnPackage>,
    epoch: i64,
    mirrors: &[(MirrorPaths, MirrorState, Vec<String>)],
    out: &Path,
) -> Result<Finished> {
    customize::boot_marker(root)?;
    customize::cairn_tools(root, profile, &key.public_key, cairn_package, epoch)?;
    customize::fleet(root, profile, mirrors)?;
    let installed = installed_packages(root)?;
    refuse_medium_readers(&installed)?;
    let (kernel, vmlinuz, initrd) = find_kernel(root)?;
    fs::create_dir_all(out)?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;
    fs::copy(&initrd, out.join("initrd.img"))
        .with_context(|| format!("copying {}", initrd.display()))?;
    customize::clean(root)?;
    Ok(Finished { kernel, installed })
}

/// The profile's hook scripts as files in the work directory, in order.
pub(crate) fn write_hooks(profile: &Profile, work: &Path) -> Result<Vec<PathBuf>> {
    let dir = work.join("hooks");
    fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for (i, h) in profile.hooks.iter().enumerate() {
        let p = dir.join(format!("{:02}-{}", i + 1, h.name));
        fs::write(&p, &h.script).with_context(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

pub(crate) fn installed_packages(root: &Path) -> Result<Vec<PackageVersion>> {
    let out = Cmd::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args([
            "-W",
            "-f",
            "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n",
        ])
        .run()?;
    let mut v: Vec<PackageVersion> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 4 && f[3].starts_with("ii")).then(|| PackageVersion {
                name: f[0].into(),
                version: f[1].into(),
                architecture: f[2].into(),
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// The newest kernel in /boot and its initrd.
pub(crate) fn find_kernel(root: &Path) -> Result<(String, PathBuf, PathBuf)> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    versions.sort_by(|a, b| compare_versions(a, b));
    let v = versions
        .pop()
        .context("no kernel in /boot: the profile's host type should have pulled one in")?;
    let initrd = boot.join(format!("initrd.img-{v}"));
    if !initrd.exists() {
        bail!(
            "no initrd for kernel {v}: update-initramfs did not run (is initramfs-tools installed?)"
        );
    }
    Ok((v.clone(), boot.join(format!("vmlinuz-{v}")), initrd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unreadable mount table stops a cleanup: the tree (which could hold
    /// bind mounts of /dev or the mirrors) is not removed.
    #[test]
    fn cleanup_fails_closed_without_a_mount_table() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        fs::create_dir_all(work.join("rootfs/dev")).unwrap();
        let err = unmount_below_by(&work, &d.path().join("no-such-mountinfo")).unwrap_err();
        assert!(
            format!("{err:#}").contains("nothing there is removed"),
            "{err:#}"
        );
        // The guard's drop goes through the same check (here the real table,
        // which has nothing below `work`): removed.
        drop(WorkDir(work.clone()));
        assert!(!work.exists());
        assert_eq!(
            mount_points("36 35 98:0 /mnt1 /a\\040b rw - ext3 /dev/root rw\n"),
            [PathBuf::from("/a b")]
        );
    }

    #[test]
    fn live_config_is_refused_by_name() {
        let p = |n: &str| PackageVersion {
            name: n.into(),
            version: "1".into(),
            architecture: "all".into(),
        };
        assert!(refuse_medium_readers(&[p("bash"), p("live-boot")]).is_ok());
        let e = refuse_medium_readers(&[p("bash"), p("live-config")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("live-config 1: it runs scripts from the boot medium"),
            "{e}"
        );
    }
}
