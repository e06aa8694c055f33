//! `cairn build PROFILE`: a root tree from the local mirror only
//! (mmdebstrap), live-boot and initramfs, the profile's
//! packages, files and hooks, data paths, cleanup; then the image: squashfs,
//! kernel and initrd beside it, manifest, sums, signatures, optional ISO —
//! built in a work directory and moved into the store only when complete.

pub mod chroot;
pub mod customize;
pub mod debootstrap;
mod fleet;
mod inputs;
mod mmdebstrap;
mod tree;

pub use inputs::{Inputs, Strictness, mirror_sources, preflight_mirror};
pub(crate) use tree::{
    Finished, apply_profile_identity, finish_tree, installed_packages, write_hooks,
};

use fs_err as fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cmd::require;
use crate::cmd::tool::{DEBOOTSTRAP, GPG, MKSQUASHFS, MMDEBSTRAP};
use crate::fsutil::{WorkDir, unmount_below};
use crate::image::{self, Manifest, PackageVersion, SQUASHFS, squashfs};
use crate::parallel;
use crate::profile::{Bootstrap, Compression, HostType, Profile};
use crate::trust::keys;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub store: PathBuf,
    pub iso: Option<bool>,
    pub compression: Option<Compression>,
    pub level: Option<u32>,
    /// Pack exactly so, whatever the profile and cairn's defaults say (a
    /// rebuild: as the image records it).
    pub packing: Option<squashfs::Packing>,
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
            packing: None,
            host_type: None,
            epoch: None,
            snapshot: None,
            processors: None,
            check_into: None,
            quiet: true,
        }
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

/// What a build is to make, checked before any work: the tools, the
/// compressor and its level, the ISO, the key, the host type and its
/// packages, the inputs, and every package of the closure in them.
struct Plan<'a> {
    profile: &'a Profile,
    profile_arg: &'a str,
    cairn_package: Option<customize::CairnPackage>,
    packing: squashfs::Packing,
    iso: bool,
    key: keys::SigningKey,
    host: HostType,
    packages: Vec<String>,
    inputs: Inputs,
}

fn plan<'a>(
    profile: &'a Profile,
    profile_arg: &'a str,
    opts: &BuildOptions,
    say: &dyn Fn(&str),
) -> Result<Plan<'a>> {
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
    let packing = opts
        .packing
        .unwrap_or_else(|| squashfs::Packing::chosen(compression, level));
    let compression = packing.compression;
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
    let strictness = if opts.check_into.is_some() {
        Strictness::Report
    } else {
        Strictness::Refuse
    };
    let inputs = Inputs::read(
        &opts.store,
        &profile.suite,
        opts.snapshot.as_deref(),
        opts.epoch,
        strictness,
    )?;
    let closure = preflight_mirror(&inputs.mirrors, profile, &packages, profile_arg, host)?;
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
    Ok(Plan {
        profile,
        profile_arg,
        cairn_package,
        packing,
        iso,
        key,
        host,
        packages,
        inputs,
    })
}

/// Where a build works: the profile's lock, its directory, the new
/// version and a private work directory (a killed build's removed first);
/// for a rebuild, the caller's directory.
struct Workspace {
    // Fields drop in this order: the work directory is removed while the
    // profile's lock is still held (the next build removes what it finds).
    work: WorkDir,
    _lock: Option<crate::fsutil::Lock>,
    pdir: PathBuf,
    version: String,
    out: PathBuf,
}

fn workspace(profile: &Profile, opts: &BuildOptions, started: i64) -> Result<Workspace> {
    let (lock, pdir, version, work) = match &opts.check_into {
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
    let out = match &opts.check_into {
        Some(dir) => dir.join("image"),
        None => work.0.join("out"),
    };
    fs::create_dir_all(&out)?;
    Ok(Workspace {
        _lock: lock,
        pdir,
        version,
        work,
        out,
    })
}

/// The tree: bootstrapped from the local mirrors only (mmdebstrap, or
/// debootstrap then apt), the mirrors' mount points gone from it.
fn bootstrap(p: &Plan, rootfs: &Path, work: &Path, say: &dyn Fn(&str)) -> Result<()> {
    let (profile, mirrors, epoch) = (p.profile, &p.inputs.mirrors, p.inputs.source.epoch);
    say(&format!(
        "bootstrap with {} from {} local mirror(s)",
        match profile.bootstrap {
            Bootstrap::Mmdebstrap => MMDEBSTRAP.program,
            Bootstrap::Debootstrap => DEBOOTSTRAP.program,
        },
        mirrors.len()
    ));
    match profile.bootstrap {
        Bootstrap::Mmdebstrap => {
            let sources: Vec<String> = mirrors.iter().flat_map(|m| m.2.clone()).collect();
            mmdebstrap::bootstrap(
                profile,
                &p.packages,
                &sources,
                &p.inputs.apt_options(),
                rootfs,
                work,
                epoch,
            )?;
        }
        Bootstrap::Debootstrap => debootstrap::bootstrap(
            profile,
            &p.packages,
            &p.inputs,
            rootfs,
            work,
            epoch,
            p.profile_arg,
        )?,
    }
    let mirror_dirs: Vec<PathBuf> = mirrors.iter().map(|m| m.0.root.clone()).collect();
    customize::remove_mount_points(rootfs, &mirror_dirs)
}

/// The tree packed into the image's squashfs, then removed.
fn pack(
    p: &Plan,
    rootfs: &Path,
    out: &Path,
    opts: &BuildOptions,
    say: &dyn Fn(&str),
) -> Result<()> {
    say(&format!(
        "mksquashfs ({}{})",
        p.packing.compression.name(),
        p.packing
            .level
            .map(|l| format!(" level {l}"))
            .unwrap_or_default()
    ));
    squashfs::pack(
        rootfs,
        &out.join(SQUASHFS),
        p.packing,
        opts.processors.unwrap_or_else(parallel::cpus),
        Some(p.inputs.source.epoch),
    )?;
    unmount_below(rootfs)?;
    fs::remove_dir_all(rootfs).ok();
    Ok(())
}

/// The image's manifest, as the build made it.
fn manifest(p: &Plan, version: &str, started: i64, finished: Finished) -> Result<Manifest> {
    let profile = p.profile;
    Ok(Manifest {
        schema_version: 1,
        profile: profile.name.clone(),
        profile_hash: profile.hash()?,
        profile_commit: profile.git_commit(),
        version: version.to_string(),
        suite: profile.suite.clone(),
        architecture: profile.architecture.clone(),
        host_type: p.host,
        kernel: finished.kernel,
        kernel_cmdline: kernel_cmdline(profile),
        compression: p.packing.compression,
        level: p.packing.level,
        block_size: p.packing.block,
        bootable: p.packing.compression.bootable(),
        parent: None,
        layers: vec![SQUASHFS.into()],
        requested: p.packages.clone(),
        hooks: profile.hooks.iter().map(|h| h.digest()).collect(),
        packages: finished.installed,
        files: Default::default(),
        data: profile.data.clone(),
        built_at: started,
        build_seconds: 0.0,
        signed_by: Some(p.key.fingerprint.clone()),
        cairn_version: env!("CARGO_PKG_VERSION").into(),
        source: Some(p.inputs.source.clone()),
    })
}

/// The boot files (verity trees, boot.cfg, signatures), the ISO that
/// carries them too, the sums over everything; then into the store, whole
/// or not at all. Returns the image's directory.
fn seal(
    p: &Plan,
    w: &Workspace,
    manifest: &mut Manifest,
    steps: &crate::progress::Steps,
) -> Result<PathBuf> {
    steps.say("dm-verity hash trees, boot arguments, signatures");
    let args = image::prepare_boot(&w.out, manifest, &p.key)?;
    if p.iso {
        steps.say("hybrid ISO (BIOS + UEFI)");
        let name = &p.profile.name;
        image::iso::make(
            &w.out,
            manifest,
            &w.out.join(format!("{name}.iso")),
            &format!("cairn {name} {}", w.version),
            &args,
            &volid(name),
            &w.work.0,
        )?;
    }
    seal_and_publish(&w.out, &w.pdir, manifest, &p.key, steps)
}

/// Builds `profile` into the store: plan, bootstrap, cairn's own changes,
/// squashfs, seal (a rebuild stops before sealing).
pub fn build(profile: &Profile, profile_arg: &str, opts: &BuildOptions) -> Result<BuildReport> {
    let steps = crate::progress::Steps::start(opts.quiet);
    let say = |m: &str| steps.say(m);
    let p = plan(profile, profile_arg, opts, &say)?;
    let started = crate::unix_now();
    let w = workspace(profile, opts, started)?;
    let rootfs = w.work.0.join("rootfs");
    let mut stages = Vec::new();
    let mut stage = |name: &'static str, t: Instant| {
        stages.push(Stage {
            name,
            seconds: t.elapsed().as_secs_f64(),
        })
    };
    let t = Instant::now();
    bootstrap(&p, &rootfs, &w.work.0, &say)?;
    stage("bootstrap", t);
    let t = Instant::now();
    apply_profile_identity(&rootfs, profile)?;
    let finished = finish_tree(
        &rootfs,
        profile,
        &p.key,
        p.cairn_package.as_ref(),
        p.inputs.source.epoch,
        &p.inputs.mirrors,
        &w.out,
    )?;
    stage("customize", t);
    let t = Instant::now();
    pack(&p, &rootfs, &w.out, opts, &say)?;
    stage("squashfs", t);
    let mut report = BuildReport {
        profile: profile.name.clone(),
        version: w.version.clone(),
        path: w.out.clone(),
        host_type: p.host,
        kernel: finished.kernel.clone(),
        packages: finished.installed.len(),
        compression: p.packing.compression,
        files: Default::default(),
        signed_by: p.key.fingerprint.clone(),
        source: p.inputs.source.clone(),
        stages: Vec::new(),
        seconds: 0.0,
    };
    if opts.check_into.is_some() {
        // A rebuild compares these; it signs and publishes nothing.
        for e in fs::read_dir(&w.out)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            report.files.insert(n, e.metadata()?.len());
        }
        drop(w);
        report.stages = stages;
        report.seconds = steps.seconds();
        return Ok(report);
    }
    let t = Instant::now();
    let mut manifest = manifest(&p, &w.version, started, finished)?;
    let dest = seal(&p, &w, &mut manifest, &steps)?;
    stage("seal", t);
    say(&format!(
        "image {} {} -> {}",
        profile.name,
        w.version,
        dest.display()
    ));
    drop(w);
    report.path = dest;
    report.files = manifest.files;
    report.stages = stages;
    report.seconds = steps.seconds();
    Ok(report)
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

#[cfg(test)]
mod tests {
    use super::*;

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
