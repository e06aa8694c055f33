//! What a pull does to a boot partition besides adding the image: the new
//! default on trial (boot counting), room made from the oldest images
//! (never one the environment points at, never without a good image),
//! images beyond `keep` pruned, leftovers of earlier pulls removed, never
//! through a link someone planted.

use fs_err as fs;
use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::PullReport;
use crate::boot::env;
use crate::boot::model::{BootPartition, ImageId, var};

/// Refuses a symlink where cairn writes on the boot partition (a running
/// system mounts it nosymfollow; a directory given with --boot-dir is
/// checked here).
pub(super) fn no_link(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link: refusing to write through it",
            p.display()
        );
    }
    Ok(())
}

/// A regular file (a symbolic link, a FIFO or a device is not).
pub(super) fn regular(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Removes what a pull left in `dir` that `keep` does not name (files of
/// an earlier target that never completed): space on the partition is not
/// lost to pulls that failed.
pub(super) fn clear_stale(dir: &Path, keep: &BTreeSet<&str>) -> Result<()> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        if keep.contains(name.to_string_lossy().as_ref()) {
            continue;
        }
        let p = e.path();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// The images the partition must keep: what its environment block points
/// at (the last good, the trial, a one-shot next entry) and `booted` (the
/// directories this machine runs from).
pub(super) fn kept(part: &BootPartition, booted: &[String]) -> Result<BTreeSet<ImageId>> {
    let c = part.counter()?;
    Ok(part
        .images()?
        .into_iter()
        .filter(|i| c.protects(i) || booted.iter().any(|b| *b == i.dir()))
        .collect())
}

/// Bytes free on the file system of `p` (`df`'s available).
fn free_bytes(p: &Path) -> Result<u64> {
    let out = crate::cmd::Cmd::new("df")
        .args(["-B1", "--output=avail"])
        .arg(p)
        .run()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {}: no free space figure", p.display()))
}

/// Bytes that removing `dir` frees (files not linked from elsewhere).
fn freed_by(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file() && m.nlink() == 1)
        .map(|m| m.len())
        .sum()
}

/// Images of `profile` to remove for `need` more bytes, oldest first,
/// never one in `keep`; an error when even that is not enough.
pub(super) fn make_room(
    part: &BootPartition,
    profile: &str,
    need: u64,
    keep: &BTreeSet<ImageId>,
    r: &mut PullReport,
) -> Result<()> {
    let root = part.root();
    // Room for the files and a little for the file system's own use.
    let want = need.saturating_add(need / 50).saturating_add(1 << 20);
    let mut free = free_bytes(root)?;
    if free >= want {
        return Ok(());
    }
    let human = crate::progress::human_bytes;
    if part.counter()?.good.is_none() {
        bail!(
            "the boot partition has {} free, the image needs {}, and no image on it has booted well yet (no cairn_good): nothing is removed to make room",
            human(free),
            human(want)
        );
    }
    let kept = || keep.iter().map(ImageId::dir).collect::<Vec<_>>().join(", ");
    let old: Vec<ImageId> = part
        .images_of(profile)?
        .into_iter()
        .filter(|i| !keep.contains(i))
        .collect();
    // Only when removing is enough: nothing is removed in vain.
    let gains: Vec<u64> = old.iter().map(|i| freed_by(&part.image_dir(i))).collect();
    if free + gains.iter().sum::<u64>() < want {
        bail!(
            "the boot partition has {} free, the image needs {}: not enough room even without the older images (kept: {}); nothing was removed",
            human(free),
            human(want),
            kept()
        );
    }
    for (i, gain) in old.into_iter().zip(gains) {
        if free >= want {
            break;
        }
        fs::remove_dir_all(part.image_dir(&i))?;
        r.removed.push(i.dir());
        free += gain;
    }
    let free = free_bytes(root)?;
    if free < want {
        bail!(
            "the boot partition has {} free, the image needs {}: not enough room even without older images (kept: {})",
            human(free),
            human(want),
            kept()
        );
    }
    Ok(())
}

/// Keeps the newest `n` images of `profile` and every one in `keep`.
pub(super) fn prune(
    part: &BootPartition,
    profile: &str,
    n: u32,
    keep: &BTreeSet<ImageId>,
    r: &mut PullReport,
) -> Result<()> {
    let mut kept = 0;
    for i in part.images_of(profile)?.into_iter().rev() {
        if keep.contains(&i) || kept < n {
            kept += 1;
            continue;
        }
        fs::remove_dir_all(part.image_dir(&i))?;
        r.removed.push(i.dir());
    }
    Ok(())
}

/// The selectors of the entries that boot `id`: the "found now" ones, and
/// the signed menu's own when it has one.
fn selectors(part: &BootPartition, id: &ImageId, key: &Path) -> Vec<String> {
    [false, true]
        .iter()
        .map(|&ram| id.found_selector(ram))
        .chain(
            crate::live::menu_selector(part.root(), &id.dir(), false, key)
                .ok()
                .flatten(),
        )
        .collect()
}

/// Whether `id` had its trial and did not pass it (no tries left, never
/// marked good), or was refused by the initramfs.
pub(super) fn gave_up(part: &BootPartition, id: &ImageId, key: &Path) -> Result<bool> {
    let c = part.counter()?;
    let ids = selectors(part, id, key);
    let is = |v: &Option<String>| v.as_ref().is_some_and(|v| ids.iter().any(|i| i == v));
    let exhausted = is(&c.trial) && c.left.is_none_or(|l| l == 0) && !is(&c.good);
    Ok(exhausted || is(&c.bad))
}

/// Makes `id` the default on trial: the disk's tries before GRUB falls
/// back to the last good one. The signed menu's own entry when it has one,
/// else the "found now" entry every cairn menu makes for a signed image.
pub(super) fn set_trial(
    part: &BootPartition,
    id: &ImageId,
    key: &Path,
    r: &mut PullReport,
) -> Result<()> {
    let entry = crate::live::menu_selector(part.root(), &id.dir(), false, key)
        .unwrap_or_else(|e| {
            tracing::warn!("{e:#}: using the found-now entry");
            None
        })
        .unwrap_or_else(|| id.found_selector(false));
    let mut vars = part.vars()?;
    let c = crate::boot::model::BootCounter::from_vars(&vars);
    if c.good.as_deref() == Some(entry.as_str()) {
        // Booted fine before (a copy staged again): nothing to try.
        r.entry = Some(entry);
        return Ok(());
    }
    let tries = part.tries();
    let t = tries.to_string();
    let mut set = vec![(var::TRIAL, entry.as_str()), (var::LEFT, t.as_str())];
    if c.bad.as_deref() == Some(entry.as_str()) {
        set.push((var::BAD, ""));
    }
    env::update(&mut vars, &set);
    env::save(&part.grubenv(), &vars)?;
    r.entry = Some(entry);
    r.tries = Some(tries);
    Ok(())
}
