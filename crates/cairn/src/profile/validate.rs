//! A merged profile checked, field by field, before any work starts; every
//! error names the field and what was wrong with it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::raw::Unvalidated;
use super::{
    Bootstrap, Compression, DataPath, FileSpec, Hook, HostType, ImageSpec, Profile, RootAccess,
};

/// Top-level directories a data partition label may not shadow.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "run", "sbin",
    "sys", "tmp", "usr", "var",
];

pub(super) fn validate(raw: Unvalidated, name: String, path: Option<PathBuf>) -> Result<Profile> {
    let simple = crate::names::is_safe;
    if !simple(&name) {
        bail!("name {name:?}: use letters, digits, `-`, `_`, `.`, `+`");
    }
    let suite = raw
        .suite
        .context("no `suite` (e.g. suite = \"bookworm\")")?;
    if !simple(&suite) {
        bail!("suite {suite:?} is not a suite name");
    }
    for p in &raw.packages {
        let n = p.split_once('=').map_or(p.as_str(), |x| x.0);
        if !n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
            || n.is_empty()
        {
            bail!("package {p:?} is not a Debian package name");
        }
    }
    let hostname = raw.hostname.unwrap_or_else(|| "cairn".into());
    if hostname.is_empty()
        || hostname.len() > 63
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        bail!("hostname {hostname:?}: letters, digits and `-`, at most 63");
    }
    let root = raw.root.unwrap_or_default();
    if let Some(h) = &root.password_hash
        && !(h.starts_with('$') && h.matches('$').count() >= 3)
    {
        bail!(
            "root.password-hash must be a crypt(3) hash such as `mkpasswd -m sha-512` prints, not a password"
        );
    }
    let files = files(raw.files)?;
    let hooks = hooks(raw.hooks)?;
    let data = data_paths(raw.data)?;
    let (compression, level, img) = image(raw.image)?;
    let variant = raw.variant.unwrap_or_else(|| "minbase".into());
    if ![
        "extract",
        "custom",
        "essential",
        "apt",
        "required",
        "minbase",
        "buildd",
        "important",
        "debootstrap",
        "standard",
    ]
    .contains(&variant.as_str())
    {
        bail!("variant {variant:?} is not an mmdebstrap variant");
    }
    for a in &raw.kernel_cmdline {
        if a.contains(char::is_whitespace) || a.is_empty() {
            bail!("kernel-cmdline entries are single words: {a:?}");
        }
        if let Some(why) = super::refused_kernel_arg(a) {
            bail!("kernel-cmdline entry {a:?}: {why}");
        }
    }
    let cairn = raw.cairn.unwrap_or(false) || raw.builder.unwrap_or(false);
    let fleet = raw.fleet.map(|f| f.validate(cairn)).transpose()?;
    let health = raw.health.map(|h| h.validate()).transpose()?;
    Ok(Profile {
        name,
        path,
        suite,
        architecture: raw
            .architecture
            .unwrap_or_else(|| crate::host::debian_arch().into()),
        variant,
        bootstrap: raw.bootstrap.unwrap_or(Bootstrap::Mmdebstrap),
        host_type: raw.host_type.unwrap_or(HostType::Auto),
        packages: raw.packages,
        builder: raw.builder.unwrap_or(false),
        cairn,
        non_free_firmware: raw.non_free_firmware.unwrap_or(true),
        hostname,
        root: RootAccess {
            password_hash: root.password_hash,
            ssh_keys: root.ssh_keys,
        },
        kernel_cmdline: raw.kernel_cmdline,
        files,
        hooks,
        data,
        image: ImageSpec {
            compression,
            level,
            iso: img.iso.unwrap_or(false),
        },
        fleet,
        health,
    })
}

/// The files to copy in: absolute destinations without `..`, sources that
/// exist, octal modes (0644 unless said).
fn files(raw: Vec<super::raw::UnvalidatedFile>) -> Result<Vec<FileSpec>> {
    let mut files = Vec::new();
    for f in raw {
        if !f.dest.starts_with('/') || f.dest.split('/').any(|c| c == "..") {
            bail!(
                "file dest {:?} must be an absolute path without `..`",
                f.dest
            );
        }
        let own = [
            crate::image::paths::SOFT_CMDLINE,
            crate::image::paths::BUILD_DPKG_CFG,
        ];
        // (As paths: `//`, `/./` and a trailing `/` make no other file.)
        if own.iter().any(|o| Path::new(o) == Path::new(&f.dest)) {
            bail!(
                "file dest {}: that file is cairn's own (never an image's)",
                f.dest
            );
        }
        if !f.source.exists() {
            bail!("file source {} does not exist", f.source.display());
        }
        let mode = match &f.mode {
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .with_context(|| format!("file {}: mode {m:?} is not octal", f.dest))?,
            None => 0o644,
        };
        files.push(FileSpec {
            source: f.source,
            dest: f.dest,
            mode,
        });
    }
    Ok(files)
}

/// The hooks: each a script file (`run`) or inline (`script`), never both.
fn hooks(raw: Vec<super::raw::UnvalidatedHook>) -> Result<Vec<Hook>> {
    let mut hooks = Vec::new();
    for (i, h) in raw.into_iter().enumerate() {
        let (name, script) = match (h.run, h.script) {
            (Some(r), None) => {
                let s =
                    fs_err::read_to_string(&r).with_context(|| format!("hook {}", r.display()))?;
                (
                    r.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    s,
                )
            }
            (None, Some(s)) => (format!("inline-{}", i + 1), s),
            _ => bail!(
                "hook #{}: give exactly one of `run` (a script file) or `script` (inline)",
                i + 1
            ),
        };
        hooks.push(Hook { name, script });
    }
    Ok(hooks)
}

/// The data paths: absolute, not `/`, no `.` or `..`, each once, on a
/// partition whose label is a simple name that is no system directory.
fn data_paths(raw: Vec<super::raw::UnvalidatedData>) -> Result<Vec<DataPath>> {
    let simple = crate::names::is_safe;
    let mut data = Vec::new();
    let mut seen = BTreeSet::new();
    for d in raw {
        if !d.path.starts_with('/')
            || d.path == "/"
            || d.path.split('/').any(|c| c == ".." || c == ".")
        {
            bail!(
                "data path {:?} must be an absolute path (not /) without `.` or `..`",
                d.path
            );
        }
        if !simple(&d.partition) || SYSTEM_DIRS.contains(&d.partition.as_str()) {
            bail!(
                "data partition label {:?}: a simple name that is not a system directory",
                d.partition
            );
        }
        let dir = d
            .dir
            .unwrap_or_else(|| d.path.trim_start_matches('/').replace('/', "-"));
        if !simple(&dir) {
            bail!("data dir {dir:?} must be a simple name");
        }
        if !seen.insert(d.path.clone()) {
            bail!("data path {} is listed twice", d.path);
        }
        data.push(DataPath {
            path: d.path.trim_end_matches('/').to_string(),
            partition: d.partition,
            dir,
        });
    }
    Ok(data)
}

/// `[image]`: the compressor, its level (one it has), the rest as given.
fn image(
    raw: Option<super::raw::UnvalidatedImage>,
) -> Result<(Compression, Option<u32>, super::raw::UnvalidatedImage)> {
    let img = raw.unwrap_or_default();
    let compression = img.compression.unwrap_or(Compression::Zstd);
    let level = match (img.level, compression.levels()) {
        (None, _) => None,
        (Some(l), Some(r)) if r.contains(&l) => Some(l),
        (Some(l), Some(r)) => bail!(
            "image.level {l} is out of range for {} ({}..={})",
            compression.name(),
            r.start(),
            r.end()
        ),
        (Some(_), None) => bail!(
            "image.level: {} has no compression level in mksquashfs",
            compression.name()
        ),
    };
    Ok((compression, level, img))
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
