//! What an upgrade changes in the stacked tree, in a chroot with the local
//! mirrors: apt's upgrades and the profile's package changes, its files and
//! new hooks when it changed, cairn's initramfs scripts when this cairn
//! has others.

use fs_err as fs;

use anyhow::{Context, Result};

use super::Plan;
use super::stack::Stack;
use crate::cmd::Cmd;
use crate::rootfs::chroot::{ChrootMounts, apt, apt_sources, chroot, inside};
use crate::rootfs::customize;

/// What apt found to upgrade.
pub(super) struct Changes {
    pub upgraded: Vec<String>,
}

/// `Inst NAME [OLD] (NEW …)` lines of `apt-get -s`: packages apt would
/// upgrade.
pub(super) fn simulated_upgrades(out: &str) -> Vec<String> {
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

/// Applies the plan to the stacked tree: returns what changed, or `Err`
/// of the same when nothing would (and nothing was done) unless `force`.
pub(super) fn change(
    p: &Plan,
    s: &Stack,
    force: bool,
    say: &dyn Fn(&str),
) -> Result<std::result::Result<Changes, Changes>> {
    let (root, epoch) = (&s.root, p.inputs.source.epoch);
    let roots: Vec<std::path::PathBuf> = p
        .inputs
        .mirrors
        .iter()
        .map(|(m, _, _)| m.root.clone())
        .collect();
    let mounts = ChrootMounts::mount(root, &roots)?;
    let list = apt_sources(root, &p.inputs.mirrors)?;
    let only_ours = [
        "-o",
        "Dir::Etc::SourceList=/etc/apt/sources.list.d/cairn-build.list",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        "Acquire::Languages=none",
    ];
    let pinned = p.inputs.apt_args();
    let run = |args: &[&str]| -> Result<String> {
        let a: Vec<String> = only_ours
            .iter()
            .map(|s| s.to_string())
            .chain(pinned.iter().cloned())
            .chain(args.iter().map(|s| s.to_string()))
            .collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        apt(root, Some(epoch), &a)
    };
    run(&["update"])?;
    let upgraded = simulated_upgrades(&run(&["-s", "dist-upgrade"])?);
    // cairn's own package is not in the mirror: another cairn (version or
    // build) than the image's is a change of its own.
    let cairn_changed = customize::cairn_differs(root, p.profile, p.cairn_package.as_ref())?;
    let c = Changes { upgraded };
    if c.upgraded.is_empty()
        && p.added.is_empty()
        && p.removed.is_empty()
        && !p.profile_changed
        && !cairn_changed
        && !force
    {
        return Ok(Err(c));
    }
    say(&format!(
        "{} upgrade(s), {} to add, {} to remove{}{}",
        c.upgraded.len(),
        p.added.len(),
        p.removed.len(),
        if p.profile_changed {
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
    if !p.added.is_empty() {
        let mut a = vec!["install"];
        a.extend(p.added.iter().map(String::as_str));
        run(&a)?;
    }
    if !p.removed.is_empty() {
        let mut a = vec!["purge"];
        a.extend(p.removed.iter().map(String::as_str));
        run(&a)?;
        run(&["autoremove", "--purge"])?;
    }
    if p.profile_changed {
        profile_changes(p, s, say)?;
    }
    // cairn's initramfs scripts as this cairn has them: an image made by an
    // older cairn gets the new checks (a fix in the initramfs, network
    // boot) with its next upgrade, not only with a full build.
    if customize::live_verify_differs(root)? {
        say("cairn's initramfs scripts changed: update-initramfs");
        customize::live_verify(root)?;
        chroot(root, epoch, &["update-initramfs", "-u", "-k", "all"])?;
    }
    chroot(root, epoch, &["apt-get", "clean"])?;
    fs::remove_file(&list)?;
    drop(mounts);
    Ok(Ok(c))
}

/// The profile changed: its files (only those that differ: nothing else
/// in the delta), the hooks the parent was not made with, its identity
/// and data paths (a path the profile added gets its link and record).
fn profile_changes(p: &Plan, s: &Stack, say: &dyn Fn(&str)) -> Result<()> {
    let root = &s.root;
    for f in &p.profile.files {
        let dest = inside(root, &f.dest)?;
        let new = fs::read(&f.source).with_context(|| format!("reading {}", f.source.display()))?;
        if fs::read(&dest).is_ok_and(|old| old == new) {
            continue;
        }
        fs::create_dir_all(dest.parent().unwrap_or(root))?;
        fs::copy(&f.source, &dest)
            .with_context(|| format!("copying {} to {}", f.source.display(), f.dest))?;
        fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(f.mode))?;
    }
    for (path, h) in crate::rootfs::write_hooks(p.profile, &s.work.0)?
        .iter()
        .zip(&p.profile.hooks)
    {
        if p.parent.hooks.contains(&h.digest()) {
            // Applied when the parent was made.
            continue;
        }
        say(&format!("hook {}", h.name));
        Cmd::new("sh")
            .arg(path)
            .arg(root)
            .env("MMDEBSTRAP_MODE", "root")
            .env("MMDEBSTRAP_HOOK", "customize")
            .progress(&format!("hook {}", h.name))
            .run()
            .with_context(|| format!("hook {}", h.name))?;
    }
    crate::rootfs::apply_profile_identity(root, p.profile)
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
