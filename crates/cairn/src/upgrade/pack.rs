//! The new image from the changed tree: a delta (the upper directory,
//! whiteouts included, on top of the parent's layers) or, past the
//! chain's limits, one flattened squashfs.

use fs_err as fs;
use std::path::Path;

use anyhow::Result;

use super::stack::Stack;
use super::{LayerMode, Plan, UpgradeOptions};
use crate::image::{SQUASHFS, squashfs};
use crate::parallel;

/// The layers the new image has, and the one it adds.
pub(super) struct Packed {
    pub layers: Vec<String>,
    pub new_layer: String,
    pub full: bool,
    /// Why the chain was flattened, when it was by itself.
    pub compaction: Option<String>,
    /// How the layer it made was packed.
    pub packing: squashfs::Packing,
}

/// Why the parent's chain must be flattened now, if it must: one more
/// layer than `max_depth`, or deltas past `max_delta_share` of the base.
fn compaction(p: &Plan, opts: &UpgradeOptions) -> Result<Option<String>> {
    let layers = &p.parent.layers;
    let base_bytes = fs::metadata(p.parent_dir.join(&layers[0]))?.len();
    let delta_bytes: u64 = layers[1..]
        .iter()
        .map(|l| fs::metadata(p.parent_dir.join(l)).map_or(0, |m| m.len()))
        .sum();
    Ok(if layers.len() + 1 > opts.max_depth {
        Some(format!(
            "the chain would have {} layers (more than {})",
            layers.len() + 1,
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
    })
}

/// Packs the changed tree of `s` into `out` as version `version`'s layer.
pub(super) fn pack(
    p: &Plan,
    s: &Stack,
    opts: &UpgradeOptions,
    version: &str,
    out: &Path,
    say: &dyn Fn(&str),
) -> Result<Packed> {
    let compaction = compaction(p, opts)?;
    let full = match opts.mode {
        LayerMode::Full => true,
        LayerMode::Delta => false,
        LayerMode::Auto => compaction.is_some(),
    };
    let packing = squashfs::Packing::chosen(p.profile.image.compression, p.profile.image.level);
    let threads = opts.processors.unwrap_or_else(parallel::cpus);
    let epoch = Some(p.inputs.source.epoch);
    if full {
        say(&format!(
            "flattening into one squashfs{}",
            compaction
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ));
        squashfs::pack(&s.root, &out.join(SQUASHFS), packing, threads, epoch)?;
        return Ok(Packed {
            layers: vec![SQUASHFS.to_string()],
            new_layer: SQUASHFS.to_string(),
            full,
            compaction,
            packing,
        });
    }
    let name = format!("layer-{version}.squashfs");
    say(&format!("packing the upper directory as {name}"));
    s.unmount_root()?;
    squashfs::pack(&s.upper, &out.join(&name), packing, threads, epoch)?;
    for l in &p.parent.layers {
        fs::hard_link(p.parent_dir.join(l), out.join(l))
            .or_else(|_| fs::copy(p.parent_dir.join(l), out.join(l)).map(|_| ()))?;
    }
    let mut layers = p.parent.layers.clone();
    layers.push(name.clone());
    Ok(Packed {
        layers,
        new_layer: name,
        full,
        compaction: None,
        packing,
    })
}
