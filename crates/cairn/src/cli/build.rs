//! `cairn build` and `cairn upgrade`.

use anyhow::Result;
use clap::Args;

use super::{Cli, show};
use crate::profile::{Compression, HostType, load_arg as load_profile};
use crate::progress::human_bytes;
use crate::rootfs::{self, BuildOptions};

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A profile file, a name in build.profile-dir (`web`: <dir>/web.toml),
    /// or `default` (built in).
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
    /// Compression level (gzip, lzo: 1-9; zstd: 1-22, cairn's default 9;
    /// images are packed in 1 MiB blocks).
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<u32>,
    /// Override the profile's host type (and `auto` detection).
    #[arg(long, value_parser = super::host_type_parser())]
    pub host_type: Option<HostType>,
    #[command(flatten)]
    pub inputs: InputArgs,
}

/// What a build reads, shared by `build` and `upgrade`.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// Build from this mirror snapshot (`cairn mirror snapshot create`)
    /// instead of the live mirrors: the same snapshot, profile and cairn
    /// give the same image bytes.
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
    /// mksquashfs threads [default: every core]. The image's bytes do not
    /// depend on it.
    #[arg(long, value_name = "THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub processors: Option<u32>,
}

impl InputArgs {
    /// SOURCE_DATE_EPOCH from the environment, when set: it must be a
    /// number of seconds, or the build is refused.
    pub fn epoch() -> Result<Option<i64>> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?}: not a number of seconds since 1970")
            }),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("SOURCE_DATE_EPOCH: {e}")),
        }
    }
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// A profile file, a name in build.profile-dir (`web`: <dir>/web.toml),
    /// or `default` (built in).
    #[arg(default_value = "default")]
    pub profile: String,
    /// auto: a delta unless the chain needs compacting; delta; full.
    #[arg(long, value_enum, default_value = "auto")]
    pub layer: crate::upgrade::LayerMode,
    /// Flatten when the new image would have more layers than this (a count).
    #[arg(long, default_value_t = 4, value_name = "LAYERS")]
    pub max_depth: usize,
    /// Flatten when the deltas together pass this share of the base layer
    /// (a fraction: 0.5 is half its bytes).
    #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
    pub max_delta_share: f64,
    /// Make an image even when nothing changed.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub inputs: InputArgs,
}

pub(super) fn run_upgrade(cli: &Cli, a: &UpgradeArgs) -> Result<i32> {
    let arg = cli.config.profile_arg(&a.profile)?;
    let prof = load_profile(&arg)?;
    let opts = crate::upgrade::UpgradeOptions {
        store: cli.store.clone(),
        mode: a.layer,
        max_depth: a.max_depth.max(1),
        max_delta_share: a.max_delta_share,
        force: a.force,
        host_type: None,
        snapshot: a.inputs.snapshot.clone(),
        epoch: InputArgs::epoch()?,
        processors: a.inputs.processors.map(|p| p as usize),
        quiet: cli.quiet(),
    };
    let r = crate::upgrade::upgrade(&prof, &arg, &opts)?;
    if cli.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&super::envelope("upgrade", &r)?)?
        );
    } else if let Some(v) = &r.version {
        outln!(
            "{} {v}: {} layer ({}), {} layer(s), image {}; {} upgraded, {} added, {} removed; {:.1}s",
            r.profile,
            r.layer.map(|l| l.to_string()).unwrap_or_default(),
            human_bytes(r.new_layer_bytes),
            r.layers.len(),
            human_bytes(r.image_bytes),
            r.upgraded.len(),
            r.added.len(),
            r.removed.len(),
            r.seconds
        );
        if let Some(c) = &r.compacted_because {
            outln!("flattened: {c}");
        }
    } else {
        outln!(
            "{}: nothing to upgrade from {} (use --force for a new image anyway)",
            r.profile,
            r.parent
        );
    }
    Ok(0)
}

pub(super) fn run_build(cli: &Cli, a: &BuildArgs) -> Result<i32> {
    let arg = cli.config.profile_arg(&a.profile)?;
    let prof = load_profile(&arg)?;
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
        packing: None,
        host_type: a.host_type,
        epoch: InputArgs::epoch()?,
        snapshot: a.inputs.snapshot.clone(),
        processors: a.inputs.processors.map(|p| p as usize),
        check_into: None,
        quiet: cli.quiet(),
    };
    let r = rootfs::build(&prof, &arg, &opts)?;
    show(cli, "build", &r, |r| {
        outln!(
            "{} {} ({} host, kernel {}, {} packages, {})",
            r.profile,
            r.version,
            r.host_type,
            r.kernel,
            r.packages,
            r.compression
        );
        for (f, size) in &r.files {
            outln!("  {f:<28} {}", human_bytes(*size));
        }
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|s| format!("{} {:.1}s", s.name, s.seconds))
            .collect();
        outln!(
            "built in {:.1}s ({}), signed by {} -> {}",
            r.seconds,
            stages.join(", "),
            r.signed_by,
            r.path.display()
        );
        Ok(())
    })?;
    Ok(0)
}
