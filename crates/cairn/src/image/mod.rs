//! Images in the store: `images/<profile>/<version>/` with kernel and initrd
//! beside the squashfs (GRUB never looks inside it), a manifest, SHA256SUMS
//! and SHA512SUMS, detached signatures; listing and verification.

pub mod iso;
pub mod squashfs;
pub mod verity;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::parallel;
use crate::trust::hash::hex;
use crate::trust::keys::{SigningKey, sign_file, verify_file};

pub const MANIFEST: &str = "manifest.json";
pub const SQUASHFS: &str = "filesystem.squashfs";
/// The image's own GRUB snippet: its title and kernel arguments (with the
/// SHA-256 of every squashfs layer), signed; cairn's menu sources it.
pub const BOOT_CFG: &str = "boot.cfg";
/// SHA-256 of the files GRUB loads (kernel, initrd, boot.cfg), signed: GRUB
/// checks them with `sha256sum -c` without touching the squashfs.
pub const BOOT_SUMS: &str = "BOOTSUMS";

/// Files GRUB opens under `check_signatures=enforce`: each gets a `.sig`.
const GRUB_SIGNED: [&str; 6] = [
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
    pub host_type: String,
    pub kernel: String,
    pub kernel_cmdline: Vec<String>,
    pub compression: String,
    pub level: Option<u32>,
    pub bootable: bool,
    pub parent: Option<String>,
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
}

pub fn images_dir(store: &Path) -> PathBuf {
    store.join("images")
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join(MANIFEST);
    let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))
}

/// The kernel arguments of an image, `live-media-path` aside (the boot
/// medium decides it): live-boot, the manifest's command line, the image's
/// name, and each layer (lowest first) with the root hash of its dm-verity
/// tree, which this writes beside it: the initramfs mounts exactly these
/// layers, in this order, each through dm-verity (see
/// `build::customize::live_verify`).
pub fn boot_args(dir: &Path, m: &Manifest) -> Result<String> {
    let mut args = vec!["boot=live".to_string()];
    for a in &m.kernel_cmdline {
        if let Some(why) = refused_kernel_arg(a) {
            bail!("kernel argument {a:?}: {why}");
        }
        args.push(a.clone());
    }
    args.push(format!("cairn.image={}/{}", m.profile, m.version));
    for l in &m.layers {
        if !crate::names::is_safe(l) || !l.ends_with(".squashfs") {
            bail!("layer {l:?}: not a squashfs with a plain name");
        }
    }
    let roots = parallel::map(&m.layers, parallel::cpus(), |l| {
        verity::format(&dir.join(l))
    });
    let mut specs = Vec::new();
    for (l, h) in m.layers.iter().zip(roots) {
        specs.push(format!("{l}:{}", h?));
    }
    args.push(format!("cairn.verity={}", specs.join(",")));
    Ok(args.join(" "))
}

/// Why the initramfs would refuse a kernel argument of a profile (it takes
/// layers or an overlay from elsewhere, or is cairn's own), if it would. The
/// same list is in live-verify.sh (`cairn_parse`).
pub fn refused_kernel_arg(a: &str) -> Option<&'static str> {
    const TAKES_ANOTHER_ROOT: &[&str] = &[
        "module=",
        "toram=",
        "todisk=",
        "fetch=",
        "httpfs=",
        "ftpfs=",
        "netboot=",
        "nfsroot=",
        "nfsopts=",
        "nfsoverlay=",
        "iscsi=",
        "live-media=",
        "bootfrom=",
        "live-media-offset=",
        "live-media-path=",
        "fromiso=",
        "isofrom=",
        "findiso=",
        "root=",
        "persistence-",
        "dm-verity-",
    ];
    if a.is_empty() || a.contains(char::is_whitespace) || a.contains('"') {
        return Some("empty, or holds a space or a quote");
    }
    if a.starts_with("cairn.") && a != "cairn.poweroff" {
        return Some("cairn.* arguments are cairn's own");
    }
    if [
        "plainroot",
        "exposedroot",
        "skipunion",
        "persistence",
        "swap",
    ]
    .contains(&a)
        || TAKES_ANOTHER_ROOT.iter().any(|p| a.starts_with(p))
    {
        return Some(
            "the initramfs refuses it: a cairn image mounts only its signed layers from its boot partition",
        );
    }
    // What would run something other than the image's own init, or open a
    // shell, before or instead of it.
    const OTHER_INIT: &[&str] = &[
        "init=",
        "rdinit=",
        "break=",
        "systemd.debug_shell",
        "systemd.debug-shell",
    ];
    if a == "break" || OTHER_INIT.iter().any(|p| a.starts_with(p)) {
        return Some(
            "the initramfs refuses it: it would run something other than the image's init, or a shell",
        );
    }
    // NAME=value the kernel hands to the initramfs as an environment
    // variable, which live-boot reads as its own settings.
    if let Some((k, _)) = a.split_once('=')
        && !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Some(
            "the initramfs refuses it: an upper-case NAME= argument becomes an environment variable of the initramfs",
        );
    }
    None
}

/// The image's signed GRUB snippet (`boot.cfg`).
pub fn boot_cfg(m: &Manifest, args: &str) -> String {
    format!(
        "# cairn image {p} {v}: read by cairn's GRUB menu, signed (boot.cfg.sig)\n\
         set cairn_title=\"{p} {v}\"\n\
         set cairn_args=\"{args}\"\n",
        p = m.profile,
        v = m.version
    )
}

/// The kernel arguments a `boot.cfg` sets (`cairn reboot --kexec` reads
/// them as the menu does, by sourcing it).
pub fn boot_cfg_args(cfg: &str) -> Option<String> {
    cfg.lines()
        .find_map(|l| l.strip_prefix("set cairn_args=\"")?.strip_suffix('"'))
        .filter(|a| !a.is_empty())
        .map(String::from)
}

/// Makes what GRUB and the initramfs check before an image boots: the
/// layers' dm-verity trees, `boot.cfg` (kernel arguments with their root
/// hashes) and `BOOTSUMS` from the manifest, and the detached signatures of
/// kernel, initrd, boot.cfg and BOOTSUMS. Returns the kernel arguments.
/// (An ISO made after this carries them all.)
pub fn prepare_boot(dir: &Path, m: &Manifest, key: &SigningKey) -> Result<String> {
    let args = boot_args(dir, m)?;
    fs::write(dir.join(BOOT_CFG), boot_cfg(m, &args))?;
    let mut sums = String::new();
    for n in ["vmlinuz", "initrd.img", BOOT_CFG] {
        let (_, h) = crate::trust::hash::sha256_file(&dir.join(n))?;
        sums.push_str(&format!("{h}  {n}\n"));
    }
    fs::write(dir.join(BOOT_SUMS), sums)?;
    for n in ["vmlinuz", "initrd.img", BOOT_CFG, BOOT_SUMS] {
        sign_file(key, &dir.join(n))?;
    }
    Ok(args)
}

/// Seals an image: `prepare_boot` (when it has a kernel), then `seal_sums`.
pub fn seal(dir: &Path, key: &SigningKey) -> Result<()> {
    if dir.join("vmlinuz").exists() {
        prepare_boot(dir, &read_manifest(dir)?, key)?;
    }
    seal_sums(dir, key)
}

/// SHA256SUMS and SHA512SUMS over every file of `dir` (coreutils format,
/// `sha256sum -c` reads it), and detached signatures of what GRUB opens
/// (under check_signatures=enforce it wants a .sig per file).
pub fn seal_sums(dir: &Path, key: &SigningKey) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("SHA") && !n.ends_with(".sig"))
        .collect();
    names.sort();
    let sums = parallel::map(&names, parallel::cpus(), |n| hash_both(&dir.join(n)));
    let (mut s256, mut s512) = (String::new(), String::new());
    for (n, r) in names.iter().zip(sums) {
        let (a, b) = r?;
        s256.push_str(&format!("{a}  {n}\n"));
        s512.push_str(&format!("{b}  {n}\n"));
    }
    fs::write(dir.join("SHA256SUMS"), s256)?;
    fs::write(dir.join("SHA512SUMS"), s512)?;
    // ISO files too: cairn's menu verifies one before it goes on a disk.
    let isos = names
        .iter()
        .filter(|n| n.ends_with(".iso"))
        .map(String::as_str);
    for n in ["SHA256SUMS", "SHA512SUMS"].into_iter().chain(isos) {
        sign_file(key, &dir.join(n))?;
    }
    Ok(())
}

fn hash_both(p: &Path) -> Result<(String, String)> {
    let mut f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let (mut a, mut b) = (Sha256::new(), Sha512::new());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        a.update(&buf[..n]);
        b.update(&buf[..n]);
    }
    Ok((hex(&a.finalize()), hex(&b.finalize())))
}

/// An image found in the store.
#[derive(Debug, Serialize)]
pub struct ImageEntry {
    pub profile: String,
    pub version: String,
    pub path: PathBuf,
    pub size: u64,
    pub compression: Option<String>,
    pub parent: Option<String>,
    pub packages: usize,
    pub iso: bool,
}

/// Every image in the store, per profile, newest first.
pub fn list(store: &Path) -> Result<Vec<ImageEntry>> {
    let mut out = Vec::new();
    let Ok(profiles) = fs::read_dir(images_dir(store)) else {
        return Ok(out);
    };
    let mut profiles: Vec<_> = profiles
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    profiles.sort_by_key(|e| e.file_name());
    for p in profiles {
        let mut versions: Vec<_> = fs::read_dir(p.path())?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
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
                compression: manifest.as_ref().map(|m| m.compression.clone()),
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
    let p = Path::new(spec);
    if spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") {
        if p.join(MANIFEST).is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("{spec} is not an image directory (no {MANIFEST})");
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

/// The outcome of `cairn image verify`.
#[derive(Debug, Serialize)]
pub struct VerifyImage {
    pub path: PathBuf,
    pub ok: bool,
    pub signed_by: Option<String>,
    pub checked: Vec<String>,
    pub problems: Vec<String>,
}

/// Checks the signatures and every hash of an image against a public key.
pub fn verify(dir: &Path, public_key: &Path) -> Result<VerifyImage> {
    verify_with(dir, public_key, false)
}

/// As `verify`; with `iso_optional`, an ISO listed in the sums may be absent
/// (boot disks carry images without their ISO).
pub fn verify_with(dir: &Path, public_key: &Path, iso_optional: bool) -> Result<VerifyImage> {
    let work = tempfile::Builder::new()
        .prefix("cairn-verify-")
        .tempdir()
        .context("a private temporary directory")?;
    let work = work.path();
    let mut r = VerifyImage {
        path: dir.to_path_buf(),
        ok: false,
        signed_by: None,
        checked: Vec::new(),
        problems: Vec::new(),
    };
    let mut lists = Vec::new();
    for sums in ["SHA256SUMS", "SHA512SUMS"] {
        match verify_file(public_key, &dir.join(sums), work) {
            Ok(fpr) => {
                r.signed_by = Some(fpr);
                lists.push(sums);
            }
            Err(e) => r.problems.push(format!("{sums}: signature: {e:#}")),
        }
    }
    for n in GRUB_SIGNED.iter().skip(2) {
        if !dir.join(n).exists() && (*n == BOOT_CFG || *n == BOOT_SUMS) {
            r.problems
                .push(format!("{n}: missing (re-seal with `cairn image sign`)"));
            continue;
        }
        if let Err(e) = verify_file(public_key, &dir.join(n), work) {
            r.problems.push(format!("{n}: signature: {e:#}"));
        }
    }
    let mut expected: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for sums in &lists {
        let text = fs::read_to_string(dir.join(sums))?;
        for line in text.lines() {
            let Some((h, n)) = line.split_once("  ") else {
                r.problems.push(format!("{sums}: unreadable line {line:?}"));
                continue;
            };
            if n.contains('/') {
                r.problems
                    .push(format!("{sums}: path {n:?} outside the image"));
                continue;
            }
            let e = expected.entry(n.to_string()).or_default();
            if *sums == "SHA256SUMS" {
                e.0 = Some(h.into())
            } else {
                e.1 = Some(h.into())
            }
        }
    }
    if iso_optional {
        expected.retain(|n, _| !n.ends_with(".iso") || dir.join(n).exists());
    }
    let names: Vec<String> = expected.keys().cloned().collect();
    let hashes = parallel::map(&names, parallel::cpus(), |n| hash_both(&dir.join(n)));
    for (n, h) in names.iter().zip(hashes) {
        let (want256, want512) = &expected[n];
        match h {
            Err(e) => r.problems.push(format!("{n}: {e:#}")),
            Ok((a, b)) => {
                if want256.as_ref().is_some_and(|w| *w != a) {
                    r.problems.push(format!(
                        "{n}: SHA256 mismatch (expected {}, got {a})",
                        want256.as_deref().unwrap_or("")
                    ));
                } else if want512.as_ref().is_some_and(|w| *w != b) {
                    r.problems.push(format!("{n}: SHA512 mismatch"));
                } else {
                    r.checked.push(n.clone());
                }
            }
        }
    }
    for e in fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !expected.contains_key(&n) && !n.starts_with("SHA") && !n.ends_with(".sig") {
            r.problems
                .push(format!("{n}: not listed in the signed sums"));
        }
    }
    if lists.is_empty() && r.problems.is_empty() {
        bail!("nothing to verify in {}", dir.display());
    }
    r.ok = r.problems.is_empty();
    Ok(r)
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

/// The image this system booted from (`cairn.image=` on the kernel command line).
pub fn booted_image() -> Option<String> {
    fs::read_to_string("/proc/cmdline").ok().and_then(|c| {
        c.split_whitespace()
            .find_map(|p| p.strip_prefix("cairn.image=").map(String::from))
    })
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    #[test]
    fn boot_cfg_args_read_back() {
        let m = m("20261126T000000Z", &[]);
        let cfg = boot_cfg(&m, "boot=live module=p cairn.sha256=a:b");
        assert_eq!(
            boot_cfg_args(&cfg).as_deref(),
            Some("boot=live module=p cairn.sha256=a:b")
        );
        assert_eq!(boot_cfg_args("set cairn_args=\"\"\n"), None);
    }

    fn m(v: &str, pk: &[(&str, &str)]) -> Manifest {
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
