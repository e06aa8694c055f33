//! `cairn upgrade`: the next image of a profile made from its latest image.
//! The latest image's layers are mounted read-only and stacked with
//! overlayfs under a fresh upper directory; inside, apt upgrades from the
//! local mirror, the profile's package changes, files and hooks are applied.
//! The upper directory — overlayfs whiteouts and opaque directories
//! included, so deletions survive — becomes a new squashfs layer on top of
//! the parent's (a *delta*), or the merged tree becomes one new squashfs
//! (*full*, flattened). Chains are flattened automatically past a depth or
//! when their deltas outgrow a share of the base.

use fs_err as fs;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::boot::model::ImageId;
use crate::cmd::tool::MKSQUASHFS;
use crate::cmd::{Cmd, require};
use crate::image::{self, Manifest, SQUASHFS, squashfs};
use crate::parallel;
use crate::profile::{HostType, Profile};
use crate::rootfs::chroot::{ChrootMounts, apt, apt_sources, chroot, mount_at};
use crate::rootfs::customize::{self, inside};
use crate::rootfs::{WorkDir, lock_profile, next_version, preflight_mirror, seal_and_publish};
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
    /// "delta" or "full".
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

/// `Inst NAME [OLD] (NEW …)` lines of `apt-get -s`: packages apt would
/// upgrade.
fn simulated_upgrades(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            // `Inst name [old] (new …)`: an upgrade; without `[old]`, a new package.
            w.next()?.starts_with('[').then(|| name.to_string())
        })
        .collect()
}

/// A path for an overlayfs mount option: its bytes, unless they hold one of
/// the option separators (`,` `:` `\\`), which overlayfs would split on.
fn overlay_path(p: &Path) -> Result<&OsStr> {
    use std::os::unix::ffi::OsStrExt;
    if p.as_os_str().as_bytes().iter().any(|b| b",:\\".contains(b)) {
        bail!(
            "{}: a work path with `,`, `:` or `\\` cannot be an overlayfs layer; choose another --store",
            p.display()
        );
    }
    Ok(p.as_os_str())
}

pub fn upgrade(
    profile: &Profile,
    profile_arg: &str,
    opts: &UpgradeOptions,
) -> Result<UpgradeReport> {
    let steps = crate::progress::Steps::start(opts.quiet);
    let say = |m: &str| steps.say(m);
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
    let inputs = crate::rootfs::Inputs::read(
        &opts.store,
        &profile.suite,
        opts.snapshot.as_deref(),
        opts.epoch,
        crate::rootfs::Strictness::Refuse,
    )?;
    let mirrors = &inputs.mirrors;
    let epoch = inputs.source.epoch;
    preflight_mirror(mirrors, profile, &wanted, profile_arg, host)?;

    let (_lock, pdir) = lock_profile(&opts.store, &profile.name)?;
    let started = crate::unix_now();
    let version = next_version(&pdir, started, Some(&parent.version));
    let work = WorkDir(pdir.join(format!(".upgrade-{version}")));
    let _ = crate::rootfs::unmount_below(&work.0);
    let _ = fs::remove_dir_all(&work.0);
    crate::fsutil::private_dir(&work.0)?;
    let root = work.0.join("root");
    let upper = work.0.join("upper");
    let ovl = work.0.join("ovl-work");
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&ovl)?;

    // The parent's layers, lowest first, read-only; overlayfs wants the
    // topmost first. `work` unmounts them all when dropped.
    let mut lowers = Vec::new();
    for (i, l) in parent.layers.iter().enumerate() {
        let m = work.0.join(format!("lower{i}"));
        let layer = parent_dir.join(l);
        mount_at(
            &[
                OsStr::new("-t"),
                OsStr::new("squashfs"),
                OsStr::new("-o"),
                OsStr::new("loop,ro"),
                layer.as_os_str(),
            ],
            &m,
        )
        .with_context(|| format!("mounting layer {l}"))?;
        lowers.push(m);
    }
    // overlayfs options: the paths as they are (any bytes but its separators).
    let mut opt = OsString::from("lowerdir=");
    for (i, p) in lowers.iter().rev().enumerate() {
        if i > 0 {
            opt.push(":");
        }
        opt.push(overlay_path(p)?);
    }
    opt.push(",upperdir=");
    opt.push(overlay_path(&upper)?);
    opt.push(",workdir=");
    opt.push(overlay_path(&ovl)?);
    // uuid=off: no random identity (Linux 6.6+ stores one in an xattr
    // of the upper directory) would make every delta's bytes differ.
    opt.push(",redirect_dir=off,metacopy=off,index=off,uuid=off");
    mount_at(
        &[
            OsStr::new("-t"),
            OsStr::new("overlay"),
            OsStr::new("overlay"),
            OsStr::new("-o"),
            &opt,
        ],
        &root,
    )
    .context("stacking the layers with overlayfs")?;
    say(&format!(
        "{} {} ({} layer(s)) mounted with a fresh upper directory",
        profile.name,
        parent.version,
        parent.layers.len()
    ));

    // apt from the local mirrors, in a chroot.
    let roots: Vec<PathBuf> = mirrors.iter().map(|(p, _, _)| p.root.clone()).collect();
    let mounts = ChrootMounts::mount(&root, &roots)?;
    let list = apt_sources(&root, mirrors)?;
    let only_ours = [
        "-o",
        "Dir::Etc::SourceList=/etc/apt/sources.list.d/cairn-build.list",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        "Acquire::Languages=none",
    ];
    let pinned = inputs.apt_args();
    let with = |args: &[&str]| -> Vec<String> {
        only_ours
            .iter()
            .map(|s| s.to_string())
            .chain(pinned.iter().cloned())
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: &[&str]| -> Result<String> {
        let a = with(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        apt(&root, Some(epoch), &a)
    };
    run(&["update"])?;
    let upgraded = simulated_upgrades(&run(&["-s", "dist-upgrade"])?);
    // cairn's own package is not in the mirror: another cairn (version or
    // build) than the image's is a change of its own.
    let cairn_changed = customize::cairn_differs(&root, profile, cairn_package.as_ref())?;
    if upgraded.is_empty()
        && added.is_empty()
        && removed.is_empty()
        && !profile_changed
        && !cairn_changed
        && !opts.force
    {
        drop(mounts);
        say("nothing to upgrade: no newer packages in the mirror, the profile is unchanged");
        return Ok(UpgradeReport {
            profile: profile.name.clone(),
            parent: format!("{}/{}", parent.profile, parent.version),
            version: None,
            path: None,
            layer: None,
            layers: parent.layers.clone(),
            upgraded,
            added,
            removed,
            new_layer_bytes: 0,
            image_bytes: 0,
            compacted_because: None,
            seconds: steps.seconds(),
        });
    }
    say(&format!(
        "{} upgrade(s), {} to add, {} to remove{}{}",
        upgraded.len(),
        added.len(),
        removed.len(),
        if profile_changed {
            ", profile changed"
        } else {
            ""
        },
        if cairn_changed {
            ", cairn's package changed"
        } else {
            ""
        }
    ));
    run(&["dist-upgrade"])?;
    if !added.is_empty() {
        let mut a = vec!["install"];
        a.extend(added.iter().map(String::as_str));
        run(&a)?;
    }
    if !removed.is_empty() {
        let mut a = vec!["purge"];
        a.extend(removed.iter().map(String::as_str));
        run(&a)?;
        run(&["autoremove", "--purge"])?;
    }
    if profile_changed {
        for f in &profile.files {
            let dest = inside(&root, &f.dest)?;
            let new =
                fs::read(&f.source).with_context(|| format!("reading {}", f.source.display()))?;
            if fs::read(&dest).is_ok_and(|old| old == new) {
                // Unchanged: no copy in the delta.
                continue;
            }
            fs::create_dir_all(dest.parent().unwrap_or(&root))?;
            fs::copy(&f.source, &dest)
                .with_context(|| format!("copying {} to {}", f.source.display(), f.dest))?;
            fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(f.mode))?;
        }
        for (p, h) in crate::rootfs::write_hooks(profile, &work.0)?
            .iter()
            .zip(&profile.hooks)
        {
            if parent.hooks.contains(&h.digest()) {
                // Applied when the parent was made.
                continue;
            }
            say(&format!("hook {}", h.name));
            Cmd::new("sh")
                .arg(p)
                .arg(&root)
                .env("MMDEBSTRAP_MODE", "root")
                .env("MMDEBSTRAP_HOOK", "customize")
                .progress(&format!("hook {}", h.name))
                .run()
                .with_context(|| format!("hook {}", h.name))?;
        }
        // Data paths too: a path the profile added gets its link and
        // record (once recorded in the manifest, never applied).
        crate::rootfs::apply_profile_identity(&root, profile)?;
    }
    // cairn's initramfs scripts as this cairn has them: an image made by an
    // older cairn gets the new checks (a fix in the initramfs, network
    // boot) with its next upgrade, not only with a full build.
    if customize::live_verify_differs(&root)? {
        say("cairn's initramfs scripts changed: update-initramfs");
        customize::live_verify(&root)?;
        chroot(&root, epoch, &["update-initramfs", "-u", "-k", "all"])?;
    }
    chroot(&root, epoch, &["apt-get", "clean"])?;
    fs::remove_file(&list)?;
    drop(mounts);
    let out = work.0.join("out");
    let crate::rootfs::Finished {
        kernel,
        installed: packages,
    } = crate::rootfs::finish_tree(
        &root,
        profile,
        &key,
        cairn_package.as_ref(),
        epoch,
        mirrors,
        &out,
    )?;

    // Delta or full.
    let base_bytes = fs::metadata(parent_dir.join(&parent.layers[0]))?.len();
    let delta_bytes: u64 = parent.layers[1..]
        .iter()
        .map(|l| fs::metadata(parent_dir.join(l)).map_or(0, |m| m.len()))
        .sum();
    let compaction = if parent.layers.len() + 1 > opts.max_depth {
        Some(format!(
            "the chain would have {} layers (more than {})",
            parent.layers.len() + 1,
            opts.max_depth
        ))
    } else if delta_bytes as f64 > opts.max_delta_share * base_bytes as f64 {
        Some(format!(
            "the deltas ({} MiB) pass {:.0}% of the base ({} MiB)",
            delta_bytes >> 20,
            opts.max_delta_share * 100.0,
            base_bytes >> 20
        ))
    } else {
        None
    };
    let full = match opts.mode {
        LayerMode::Full => true,
        LayerMode::Delta => false,
        LayerMode::Auto => compaction.is_some(),
    };
    let compression = profile.image.compression;
    let level = profile.image.level;
    let (layers, new_layer) = if full {
        say(&format!(
            "flattening into one squashfs{}",
            compaction
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ));
        squashfs::pack(
            &root,
            &out.join(SQUASHFS),
            compression,
            level,
            opts.processors.unwrap_or_else(parallel::cpus),
            Some(epoch),
        )?;
        (vec![SQUASHFS.to_string()], SQUASHFS.to_string())
    } else {
        let name = format!("layer-{version}.squashfs");
        say(&format!("packing the upper directory as {name}"));
        stack_root_unmount(&root)?;
        squashfs::pack(
            &upper,
            &out.join(&name),
            compression,
            level,
            opts.processors.unwrap_or_else(parallel::cpus),
            Some(epoch),
        )?;
        for l in &parent.layers {
            fs::hard_link(parent_dir.join(l), out.join(l))
                .or_else(|_| fs::copy(parent_dir.join(l), out.join(l)).map(|_| ()))?;
        }
        let mut v = parent.layers.clone();
        v.push(name.clone());
        (v, name)
    };
    crate::rootfs::unmount_below(&work.0)?;
    let mut manifest = Manifest {
        version: version.clone(),
        profile_hash: profile.hash()?,
        profile_commit: profile.git_commit(),
        host_type: host,
        kernel,
        parent: Some(ImageId::new(&parent.profile, &parent.version)?),
        layers: layers.clone(),
        requested: wanted,
        hooks: profile.hooks.iter().map(|h| h.digest()).collect(),
        packages,
        files: Default::default(),
        data: profile.data.clone(),
        built_at: started,
        build_seconds: 0.0,
        signed_by: Some(key.fingerprint.clone()),
        cairn_version: env!("CARGO_PKG_VERSION").into(),
        source: Some(inputs.source.clone()),
        // What the profile says now, not what the parent was built with.
        suite: profile.suite.clone(),
        architecture: profile.architecture.clone(),
        kernel_cmdline: crate::rootfs::kernel_cmdline(profile),
        compression,
        level,
        bootable: compression.bootable(),
        ..parent.clone()
    };
    let new_layer_bytes = fs::metadata(out.join(&new_layer))?.len();
    let image_bytes = layers
        .iter()
        .map(|l| fs::metadata(out.join(l)).map_or(0, |m| m.len()))
        .sum();
    image::prepare_boot(&out, &manifest, &key)?;
    let dest = seal_and_publish(&out, &pdir, &mut manifest, &key, &steps)?;
    drop(work);
    say(&format!(
        "image {} {version} ({}) -> {}",
        profile.name,
        if full { "full" } else { "delta" },
        dest.display()
    ));
    Ok(UpgradeReport {
        profile: profile.name.clone(),
        parent: format!("{}/{}", parent.profile, parent.version),
        version: Some(version),
        path: Some(dest),
        layer: Some(if full {
            LayerMode::Full
        } else {
            LayerMode::Delta
        }),
        layers,
        upgraded,
        added,
        removed,
        new_layer_bytes,
        image_bytes,
        compacted_because: if full { compaction } else { None },
        seconds: steps.seconds(),
    })
}

/// Unmounts the overlay (the upper directory is only complete once it is
/// unmounted) before packing the upper directory.
fn stack_root_unmount(root: &Path) -> Result<()> {
    Cmd::new("umount").arg(root).run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn upgrades_are_read_from_apt_simulation() {
        let out = "Reading package lists...\n\
                   Inst libc6 [2.36-9+deb12u9] (2.36-9+deb12u10 Debian:12.9/stable [amd64])\n\
                   Inst newpkg (1.0 Debian:12.9/stable [amd64])\n\
                   Conf libc6 (2.36-9+deb12u10 Debian:12.9/stable [amd64])\n";
        assert_eq!(super::simulated_upgrades(out), ["libc6"]);
    }
}
