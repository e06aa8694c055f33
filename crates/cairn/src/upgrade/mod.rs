//! `cairn upgrade`: the next image of a profile made from its latest image.
//! The latest image's layers are mounted read-only and stacked with
//! overlayfs under a fresh upper directory; inside, apt upgrades from the
//! local mirror, the profile's package changes, files and hooks are applied.
//! The upper directory — overlayfs whiteouts and opaque directories
//! included, so deletions survive — becomes a new squashfs layer on top of
//! the parent's (a *delta*), or the merged tree becomes one new squashfs
//! (*full*, flattened). Chains are flattened automatically past a depth or
//! when their deltas outgrow a share of the base.

mod change;
mod pack;
mod stack;

use fs_err as fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::boot::model::ImageId;
use crate::cmd::require;
use crate::cmd::tool::MKSQUASHFS;
use crate::image::{self, Manifest};
use crate::profile::{HostType, Profile};
use crate::rootfs::customize;
use crate::rootfs::{Inputs, lock_profile, next_version, preflight_mirror, seal_and_publish};
use crate::trust::keys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LayerMode {
    /// A delta unless the chain is too deep or its deltas too big.
    Auto,
    Delta,
    Full,
}

impl std::fmt::Display for LayerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerMode::Auto => "auto",
            LayerMode::Delta => "delta",
            LayerMode::Full => "full",
        })
    }
}

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub store: PathBuf,
    pub mode: LayerMode,
    /// Flatten when the new image would have more layers than this.
    pub max_depth: usize,
    /// Flatten when the deltas together pass this share of the base layer.
    pub max_delta_share: f64,
    /// Make an image even when nothing changed.
    pub force: bool,
    pub host_type: Option<HostType>,
    /// Upgrade from this mirror snapshot, not the live mirrors.
    pub snapshot: Option<String>,
    /// SOURCE_DATE_EPOCH [default: the newest Release `Date` read].
    pub epoch: Option<i64>,
    /// mksquashfs threads [default: every core].
    pub processors: Option<usize>,
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
pub struct UpgradeReport {
    pub profile: String,
    pub parent: String,
    /// None when nothing changed (and no image was made).
    pub version: Option<String>,
    pub path: Option<PathBuf>,
    /// `delta` or `full`: what the new image added.
    pub layer: Option<LayerMode>,
    pub layers: Vec<String>,
    pub upgraded: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub new_layer_bytes: u64,
    pub image_bytes: u64,
    pub compacted_because: Option<String>,
    pub seconds: f64,
}

/// What an upgrade is to do, decided before any work: the parent, the
/// host type, the package changes, whether the profile changed, the
/// inputs read and checked.
pub(super) struct Plan<'a> {
    profile: &'a Profile,
    parent_dir: PathBuf,
    parent: Manifest,
    host: HostType,
    wanted: Vec<String>,
    added: Vec<String>,
    removed: Vec<String>,
    profile_changed: bool,
    inputs: Inputs,
    key: keys::SigningKey,
    cairn_package: Option<customize::CairnPackage>,
}

/// Everything that can refuse the upgrade does, before any work.
fn plan<'a>(profile: &'a Profile, profile_arg: &str, opts: &UpgradeOptions) -> Result<Plan<'a>> {
    if !crate::fsutil::is_root() {
        bail!("cairn upgrade needs root (loop and overlay mounts, apt in a chroot)");
    }
    require(&[&MKSQUASHFS])?;
    let key = keys::load(&opts.store)?;
    let cairn_package = customize::cairn_package(&opts.store, profile)?;
    let parent_dir = image::resolve(&opts.store, &profile.name).with_context(|| {
        format!(
            "no image of {} to upgrade: `cairn build {profile_arg}` first",
            profile.name
        )
    })?;
    let parent = image::read_manifest(&parent_dir)?;
    // The parent's, unless asked otherwise (a manifest never says auto).
    let host = opts.host_type.unwrap_or(match parent.host_type {
        HostType::Auto => profile.resolved_host_type(),
        h => h,
    });
    let wanted = profile.all_packages(host);
    let added: Vec<String> = wanted
        .iter()
        .filter(|p| !parent.packages.iter().any(|x| &x.name == *p))
        .cloned()
        .collect();
    let removed: Vec<String> = parent
        .requested
        .iter()
        .filter(|p| !wanted.contains(p))
        .cloned()
        .collect();
    let profile_changed = profile.hash()? != parent.profile_hash;
    let inputs = Inputs::read(
        &opts.store,
        &profile.suite,
        opts.snapshot.as_deref(),
        opts.epoch,
        crate::rootfs::Strictness::Refuse,
    )?;
    preflight_mirror(&inputs.mirrors, profile, &wanted, profile_arg, host)?;
    Ok(Plan {
        profile,
        parent_dir,
        parent,
        host,
        wanted,
        added,
        removed,
        profile_changed,
        inputs,
        key,
        cairn_package,
    })
}

/// Makes the next image of `profile` from its latest one: plan, stack the
/// parent's layers, change the tree, finish it as a build does, pack a
/// delta (or flatten), seal and publish. Nothing to change: no image.
pub fn upgrade(
    profile: &Profile,
    profile_arg: &str,
    opts: &UpgradeOptions,
) -> Result<UpgradeReport> {
    let steps = crate::progress::Steps::start(opts.quiet);
    let say = |m: &str| steps.say(m);
    let p = plan(profile, profile_arg, opts)?;
    let (_lock, pdir) = lock_profile(&opts.store, &profile.name)?;
    let started = crate::unix_now();
    let version = next_version(&pdir, started, Some(&p.parent.version));
    let s = stack::stack(
        pdir.join(format!(".upgrade-{version}")),
        &p.parent_dir,
        &p.parent,
    )?;
    say(&format!(
        "{} {} ({} layer(s)) mounted with a fresh upper directory",
        profile.name,
        p.parent.version,
        p.parent.layers.len()
    ));
    let mut report = UpgradeReport {
        profile: profile.name.clone(),
        parent: format!("{}/{}", p.parent.profile, p.parent.version),
        version: None,
        path: None,
        layer: None,
        layers: p.parent.layers.clone(),
        upgraded: Vec::new(),
        added: p.added.clone(),
        removed: p.removed.clone(),
        new_layer_bytes: 0,
        image_bytes: 0,
        compacted_because: None,
        seconds: 0.0,
    };
    let changes = match change::change(&p, &s, opts.force, &say)? {
        Ok(c) => c,
        Err(c) => {
            say("nothing to upgrade: no newer packages in the mirror, the profile is unchanged");
            report.upgraded = c.upgraded;
            report.seconds = steps.seconds();
            return Ok(report);
        }
    };
    report.upgraded = changes.upgraded;
    let out = s.work.0.join("out");
    let finished = crate::rootfs::finish_tree(
        &s.root,
        profile,
        &p.key,
        p.cairn_package.as_ref(),
        p.inputs.source.epoch,
        &p.inputs.mirrors,
        &out,
    )?;
    let packed = pack::pack(&p, &s, opts, &version, &out, &say)?;
    crate::fsutil::unmount_below(&s.work.0)?;
    let mut manifest = manifest(&p, &version, started, finished, &packed)?;
    report.new_layer_bytes = fs::metadata(out.join(&packed.new_layer))?.len();
    report.image_bytes = packed
        .layers
        .iter()
        .map(|l| fs::metadata(out.join(l)).map_or(0, |m| m.len()))
        .sum();
    image::prepare_boot(&out, &manifest, &p.key)?;
    let dest = seal_and_publish(&out, &pdir, &mut manifest, &p.key, &steps)?;
    drop(s);
    let layer = if packed.full {
        LayerMode::Full
    } else {
        LayerMode::Delta
    };
    say(&format!(
        "image {} {version} ({layer}) -> {}",
        profile.name,
        dest.display()
    ));
    report.version = Some(version);
    report.path = Some(dest);
    report.layer = Some(layer);
    report.layers = packed.layers;
    report.compacted_because = packed.compaction;
    report.seconds = steps.seconds();
    Ok(report)
}

/// The new image's manifest: the parent's, with what the profile says now
/// and what the upgrade made.
fn manifest(
    p: &Plan,
    version: &str,
    started: i64,
    finished: crate::rootfs::Finished,
    packed: &pack::Packed,
) -> Result<Manifest> {
    let (profile, packing) = (p.profile, packed.packing);
    Ok(Manifest {
        version: version.to_string(),
        profile_hash: profile.hash()?,
        profile_commit: profile.git_commit(),
        host_type: p.host,
        kernel: finished.kernel,
        parent: Some(ImageId::new(&p.parent.profile, &p.parent.version)?),
        layers: packed.layers.clone(),
        requested: p.wanted.clone(),
        hooks: profile.hooks.iter().map(|h| h.digest()).collect(),
        packages: finished.installed,
        files: Default::default(),
        data: profile.data.clone(),
        built_at: started,
        build_seconds: 0.0,
        signed_by: Some(p.key.fingerprint.clone()),
        cairn_version: env!("CARGO_PKG_VERSION").into(),
        source: Some(p.inputs.source.clone()),
        // What the profile says now, not what the parent was built with.
        suite: profile.suite.clone(),
        architecture: profile.architecture.clone(),
        kernel_cmdline: crate::rootfs::kernel_cmdline(profile),
        compression: packing.compression,
        level: packing.level,
        block_size: packing.block,
        bootable: packing.compression.bootable(),
        ..p.parent.clone()
    })
}
