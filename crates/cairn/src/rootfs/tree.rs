//! The end of every tree, built or upgraded: what the profile says of the
//! system itself, cairn's own steps, the packages, kernel and initrd found
//! in it, the tree cleaned for reproducible bytes.

use fs_err as fs;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_debian::compare_versions;

use super::{customize, refuse_medium_readers};
use crate::cmd::Cmd;
use crate::image::PackageVersion;
use crate::profile::Profile;
use crate::trust::keys;

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
    mirrors: &[super::fleet::Mirror],
    out: &Path,
) -> Result<Finished> {
    refuse_cairns_own(root)?;
    customize::boot_marker(root)?;
    customize::cairn_tools(root, profile, &key.public_key, cairn_package, epoch)?;
    super::fleet::fleet(root, profile, mirrors)?;
    let installed = installed_packages(root)?;
    refuse_medium_readers(&installed)?;
    let (kernel, vmlinuz, initrd) = find_kernel(root)?;
    fs::create_dir_all(out)?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;
    fs::copy(&initrd, out.join("initrd.img"))
        .with_context(|| format!("copying {}", initrd.display()))?;
    customize::mark_updated(root, epoch)?;
    customize::clean(root)?;
    Ok(Finished { kernel, installed })
}

/// Files that are cairn's and never an image's, refused in a finished
/// tree (however they got there: a file or a hook of the profile, a
/// dangling link): `/etc/cairn/cmdline`, written only by `cairn reboot
/// --soft` into a switched-to root's RAM overlay (an image carrying one
/// would name itself whatever GRUB booted), and dpkg's no-fsync setting
/// for the build alone.
fn refuse_cairns_own(root: &Path) -> Result<()> {
    for (path, what) in [
        (
            crate::image::paths::SOFT_CMDLINE,
            "it is cairn's, written at a soft reboot; remove it",
        ),
        (
            crate::image::paths::BUILD_DPKG_CFG,
            "dpkg's setting for the build alone (no fsync) must not reach an image",
        ),
    ] {
        // Looked for as the tree resolves it: a directory on the way that
        // is a link (even an absolute one) leads inside the tree.
        let at = super::chroot::inside_link(root, path)?;
        if std::fs::symlink_metadata(&at).is_ok() {
            bail!("the tree has {path}: {what}");
        }
    }
    Ok(())
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

    /// Either file, or a dangling link in its place, stops the build; so
    /// does the file behind a directory that is an absolute link (which the
    /// build host would resolve to its own /etc).
    #[test]
    fn cairns_own_files_never_reach_an_image() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        refuse_cairns_own(root).unwrap();
        for (path, link) in [
            (crate::image::paths::SOFT_CMDLINE, false),
            (crate::image::paths::BUILD_DPKG_CFG, false),
            (crate::image::paths::BUILD_DPKG_CFG, true),
        ] {
            let at = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            if link {
                std::os::unix::fs::symlink("/nowhere", &at).unwrap();
            } else {
                fs::write(&at, "x").unwrap();
            }
            let e = refuse_cairns_own(root).unwrap_err().to_string();
            assert!(e.contains(path), "{e}");
            fs::remove_file(&at).unwrap();
        }
        // /etc/dpkg -> /elsewhere/dpkg (absolute), the file there.
        let cfg = crate::image::paths::BUILD_DPKG_CFG;
        fs::create_dir_all(root.join("elsewhere/dpkg/dpkg.cfg.d")).unwrap();
        fs::write(root.join("elsewhere").join(&cfg[5..]), "force-unsafe-io").unwrap();
        fs::remove_dir_all(root.join("etc/dpkg")).unwrap();
        std::os::unix::fs::symlink("/elsewhere/dpkg", root.join("etc/dpkg")).unwrap();
        let e = refuse_cairns_own(root).unwrap_err().to_string();
        assert!(e.contains(cfg), "{e}");
    }
}
