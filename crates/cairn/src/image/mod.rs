//! Images in the store: `images/<profile>/<version>/` with kernel and initrd
//! beside the squashfs layers (GRUB never looks inside them), a manifest,
//! SHA256SUMS and SHA512SUMS, detached signatures; listing, resolving, diff
//! and retention. Sealing (`seal`) and checking (`verify`) have rooms of
//! their own.

pub mod iso;
pub mod paths;
pub mod rebuild;
pub mod seal;
pub mod squashfs;
pub mod verify;
pub mod verity;

use fs_err as fs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use seal::{boot_args, boot_cfg, boot_cfg_args, prepare_boot, seal, seal_sums};
pub use verify::{VerifyImage, verify, verify_with};

pub const MANIFEST: &str = "manifest.json";

pub const SQUASHFS: &str = "filesystem.squashfs";

/// The image's own GRUB snippet: its title and kernel arguments (with the
/// SHA-256 of every squashfs layer), signed; cairn's menu sources it.
pub const BOOT_CFG: &str = "boot.cfg";

/// SHA-256 of the files GRUB loads (kernel, initrd, boot.cfg), signed: GRUB
/// checks them with `sha256sum -c` without touching the squashfs.
pub const BOOT_SUMS: &str = "BOOTSUMS";

/// Files GRUB opens under `check_signatures=enforce`: each gets a `.sig`.
pub(crate) const GRUB_SIGNED: [&str; 6] = [
    "SHA256SUMS",
    "SHA512SUMS",
    BOOT_SUMS,
    BOOT_CFG,
    "vmlinuz",
    "initrd.img",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// What an image is and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub schema_version: u32,
    pub profile: String,
    pub profile_hash: String,
    pub profile_commit: Option<String>,
    pub version: String,
    pub suite: String,
    pub architecture: String,
    /// `physical` or `virtual`: what its kernel and firmware are for.
    pub host_type: crate::profile::HostType,
    pub kernel: String,
    pub kernel_cmdline: Vec<String>,
    pub compression: crate::profile::Compression,
    pub level: Option<u32>,
    /// The squashfs block size in bytes (absent in images of older
    /// cairns: mksquashfs's default, 128 KiB). With `level`: how the layer
    /// this image added was packed (an upgrade's lower layers keep the
    /// packing they were made with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    pub bootable: bool,
    /// The image it was upgraded from (`PROFILE/VERSION`).
    pub parent: Option<crate::boot::model::ImageId>,
    /// squashfs layers, lowest first.
    pub layers: Vec<String>,
    /// Packages the profile asked for (with the host type's), before dependencies.
    #[serde(default)]
    pub requested: Vec<String>,
    /// SHA-256 of each hook script applied to the tree (an upgrade runs only new ones).
    #[serde(default)]
    pub hooks: Vec<String>,
    pub packages: Vec<PackageVersion>,
    /// File name → size in bytes.
    pub files: BTreeMap<String, u64>,
    pub data: Vec<crate::profile::DataPath>,
    pub built_at: i64,
    pub build_seconds: f64,
    pub signed_by: Option<String>,
    pub cairn_version: String,
    /// The inputs it was built from (absent in images of older cairns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<BuildSource>,
}

/// What a build read: the mirror snapshot (or the live mirrors), the signed
/// Release file of every suite, and the time every file was clamped to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct BuildSource {
    /// The snapshot (`cairn mirror snapshot`); none: the live mirrors.
    pub snapshot: Option<String>,
    /// SOURCE_DATE_EPOCH: no file in the image is newer. The newest Release
    /// `Date` among the inputs unless `--epoch` said otherwise.
    pub epoch: i64,
    pub releases: crate::mirror::snapshot::Releases,
}

pub fn images_dir(store: &Path) -> PathBuf {
    store.join("images")
}

/// Images in the store whose manifest says they were built from mirror
/// snapshot `name` (`PROFILE/VERSION`).
pub fn built_from_snapshot(store: &Path, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in list(store)? {
        let m = read_manifest(&e.path)?;
        if m.source.as_ref().and_then(|s| s.snapshot.as_deref()) == Some(name) {
            out.push(format!("{}/{}", e.profile, e.version));
        }
    }
    Ok(out)
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join(MANIFEST);
    let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))
}

/// An image found in the store.
#[derive(Debug, Serialize)]
pub struct ImageEntry {
    pub profile: String,
    pub version: String,
    pub path: PathBuf,
    pub size: u64,
    pub compression: Option<crate::profile::Compression>,
    pub parent: Option<crate::boot::model::ImageId>,
    pub packages: usize,
    pub iso: bool,
}

/// Every image in the store, per profile, newest first.
pub fn list(store: &Path) -> Result<Vec<ImageEntry>> {
    let mut out = Vec::new();
    let Ok(profiles) = fs::read_dir(images_dir(store)) else {
        return Ok(out);
    };
    // Directories only (a profile's directory also holds its published
    // index), and no dot names (staging).
    let is_dir = |e: &fs::DirEntry| e.file_type().is_ok_and(|t| t.is_dir());
    let mut profiles: Vec<_> = profiles
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && is_dir(e))
        .collect();
    profiles.sort_by_key(|e| e.file_name());
    for p in profiles {
        let mut versions: Vec<_> = fs::read_dir(p.path())?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && is_dir(e))
            .collect();
        versions.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for v in versions {
            let dir = v.path();
            let manifest: Option<Manifest> = fs::read(dir.join(MANIFEST))
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
            let size = fs::read_dir(&dir)?
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
            out.push(ImageEntry {
                profile: p.file_name().to_string_lossy().into_owned(),
                version: v.file_name().to_string_lossy().into_owned(),
                size,
                compression: manifest.as_ref().map(|m| m.compression),
                parent: manifest.as_ref().and_then(|m| m.parent.clone()),
                packages: manifest.as_ref().map_or(0, |m| m.packages.len()),
                iso: fs::read_dir(&dir)?
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".iso")),
                path: dir,
            });
        }
    }
    Ok(out)
}

/// Finds an image by path, `profile` (latest), or `profile/version`.
pub fn resolve(store: &Path, spec: &str) -> Result<PathBuf> {
    // A path only when written as one: a bare name is always the store's
    // (a `web/` in the directory root happens to run cairn from — /tmp,
    // say — must not be signed or upgraded as the store's `web`).
    if spec.trim().is_empty() {
        bail!(
            "an empty image name names no image: give PROFILE, PROFILE/VERSION or a path (./DIR)"
        );
    }
    let p = Path::new(spec);
    if spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") {
        if p.join(MANIFEST).is_file() {
            return Ok(p.to_path_buf());
        }
        match fs::metadata(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{spec}: no such directory")
            }
            Err(e) => bail!("{spec}: {e}"),
            Ok(m) if !m.is_dir() => bail!("{spec}: not a directory (an image is a directory)"),
            Ok(_) => bail!(
                "{spec} is a directory without {MANIFEST}: not a cairn image (`cairn build` makes them; `cairn image list` shows the store's)"
            ),
        }
    }
    let all = list(store)?;
    let (profile, version) = match spec.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (spec, None),
    };
    all.into_iter()
        .find(|e| e.profile == profile && version.is_none_or(|v| e.version == v))
        .map(|e| e.path)
        .with_context(|| {
            format!(
                "no image {spec:?} in {} (see `cairn image list`; a directory is named as a path: ./{spec})",
                images_dir(store).display()
            )
        })
}

/// What changed between two images' package lists.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub from: String,
    pub to: String,
    pub added: Vec<PackageVersion>,
    pub removed: Vec<PackageVersion>,
    /// (name, from version, to version); also downgrades.
    pub changed: Vec<(String, String, String)>,
}

pub fn diff(a: &Manifest, b: &Manifest) -> Diff {
    let old: BTreeMap<&str, &PackageVersion> =
        a.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let new: BTreeMap<&str, &PackageVersion> =
        b.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    Diff {
        from: format!("{}/{}", a.profile, a.version),
        to: format!("{}/{}", b.profile, b.version),
        added: new
            .iter()
            .filter(|(n, _)| !old.contains_key(*n))
            .map(|(_, p)| (*p).clone())
            .collect(),
        removed: old
            .iter()
            .filter(|(n, _)| !new.contains_key(*n))
            .map(|(_, p)| (*p).clone())
            .collect(),
        changed: new
            .iter()
            .filter_map(|(n, p)| {
                old.get(n)
                    .filter(|o| o.version != p.version)
                    .map(|o| (n.to_string(), o.version.clone(), p.version.clone()))
            })
            .collect(),
    }
}

/// Images of each profile beyond the newest `keep`, except those a kept
/// image is built on (its layers live in its own directory, hard-linked, so
/// a parent can go) and the one named `booted`. Returns what was removed.
pub fn prune(
    store: &Path,
    keep: usize,
    booted: Option<&str>,
    dry_run: bool,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let all = list(store)?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for e in all {
        let n = seen.entry(e.profile.clone()).or_default();
        *n += 1;
        let id = format!("{}/{}", e.profile, e.version);
        if *n <= keep.max(1) || booted == Some(id.as_str()) {
            continue;
        }
        if !dry_run {
            fs::remove_dir_all(&e.path)
                .with_context(|| format!("removing {}", e.path.display()))?;
        }
        removed.push(e.path);
    }
    Ok(removed)
}

/// The image this system runs (`cairn.image=` on its command line:
/// [`boot_cmdline`]).
pub fn booted_image() -> Option<String> {
    boot_cmdline().ok().and_then(|c| {
        c.split_whitespace()
            .find_map(|p| p.strip_prefix("cairn.image=").map(String::from))
    })
}

/// The command line this userspace runs by: the one `cairn reboot --soft`
/// left in this root (/etc/cairn/cmdline, in its RAM overlay) for the
/// image it switched to — the kernel kept its own — else the kernel's. The
/// file counts only as root wrote it: a regular file (never followed as a
/// link), owned by root, written by nobody else; any other is a refusal.
pub fn boot_cmdline() -> Result<String> {
    cmdline_at(Path::new(paths::SOFT_CMDLINE), Path::new("/proc/cmdline"))
}

pub(crate) fn cmdline_at(soft: &Path, kernel: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(soft) {
        Ok(m) => {
            if !m.file_type().is_file() || m.uid() != 0 || m.mode() & 0o022 != 0 {
                bail!(
                    "{}: not a regular file that only root writes: refusing to take the command line from it",
                    soft.display()
                );
            }
            let t = crate::trust::hash::read_regular_file(soft, 64 * 1024)?;
            String::from_utf8(t).with_context(|| format!("{}: not UTF-8", soft.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::read_to_string(kernel).with_context(|| format!("reading {}", kernel.display()))
        }
        Err(e) => Err(e).with_context(|| format!("{}", soft.display())),
    }
}

/// A manifest for unit tests: version `v`, packages `pk` (name, version).
#[cfg(test)]
pub(crate) fn test_manifest(v: &str, pk: &[(&str, &str)]) -> Manifest {
    let mut m: Manifest = serde_json::from_str(&format!(
        r#"{{"schema-version":1,"profile":"p","profile-hash":"h","profile-commit":null,"version":"{v}","suite":"s","architecture":"amd64","host-type":"virtual","kernel":"k","kernel-cmdline":[],"compression":"zstd","level":null,"bootable":true,"parent":null,"layers":["filesystem.squashfs"],"packages":[],"files":{{}},"data":[],"built-at":0,"build-seconds":0.0,"signed-by":null,"cairn-version":"0"}}"#
    ))
    .unwrap();
    m.packages = pk
        .iter()
        .map(|(n, v)| PackageVersion {
            name: n.to_string(),
            version: v.to_string(),
            architecture: "amd64".into(),
        })
        .collect();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line a soft reboot left is taken only as root's own
    /// regular file that nobody else writes; anything else is refused.
    #[test]
    fn a_soft_reboots_command_line_is_read_only_from_root() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let (at, kernel) = (d.path().join("cmdline"), d.path().join("proc-cmdline"));
        fs::write(&kernel, "cairn.image=w/1\n").unwrap();
        let read = || cmdline_at(&at, &kernel);
        assert_eq!(read().unwrap(), "cairn.image=w/1\n");
        fs::write(&at, "cairn.image=w/2\n").unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o644)).unwrap();
        if std::fs::metadata(&at).unwrap().uid() == 0 {
            assert_eq!(read().unwrap(), "cairn.image=w/2\n");
        } else {
            assert!(read().is_err(), "not root's: refused");
        }
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read().is_err(), "written by others: refused");
        fs::remove_file(&at).unwrap();
        std::os::unix::fs::symlink(&kernel, &at).unwrap();
        assert!(read().is_err(), "a link: refused");
    }

    fn m(v: &str, pk: &[(&str, &str)]) -> Manifest {
        test_manifest(v, pk)
    }

    #[test]
    fn added_removed_changed() {
        let d = diff(
            &m("1", &[("a", "1"), ("b", "1"), ("c", "1")]),
            &m("2", &[("a", "1"), ("b", "2"), ("d", "1")]),
        );
        assert_eq!(d.added[0].name, "d");
        assert_eq!(d.removed[0].name, "c");
        assert_eq!(d.changed, [("b".into(), "1".into(), "2".into())]);
        assert_eq!((d.from.as_str(), d.to.as_str()), ("p/1", "p/2"));
    }
}
