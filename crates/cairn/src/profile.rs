//! Profiles: versioned TOML files that say what a system is. Strict
//! (`schema-version`, unknown keys are errors naming file and line), resolved
//! through `extends`, validated before any work starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::trust::hash::sha256_hex;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostType {
    Physical,
    Virtual,
    Auto,
}

/// How the base tree is made. mmdebstrap installs from several suites of a
/// partial mirror in one go; debootstrap reads the suite alone (its mirror
/// must keep every version), then apt in a chroot adds the other suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bootstrap {
    Mmdebstrap,
    Debootstrap,
}

/// squashfs compressors mksquashfs offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    Gzip,
    Lzma,
    Lzo,
    Lz4,
    Xz,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 6] = [
        Compression::Gzip,
        Compression::Lzma,
        Compression::Lzo,
        Compression::Lz4,
        Compression::Xz,
        Compression::Zstd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// The levels mksquashfs accepts for this compressor, if any.
    pub fn levels(self) -> Option<std::ops::RangeInclusive<u32>> {
        match self {
            Compression::Gzip | Compression::Lzo => Some(1..=9),
            Compression::Zstd => Some(1..=22),
            Compression::Lzma | Compression::Lz4 | Compression::Xz => None,
        }
    }

    /// Whether Debian's kernel can mount it (legacy LZMA is not built in).
    pub fn bootable(self) -> bool {
        self != Compression::Lzma
    }
}

/// A file to copy into the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    pub source: PathBuf,
    pub dest: String,
    pub mode: u32,
}

/// A hook: a script run on the build host with the tree's path as `$1`
/// and mmdebstrap's hook environment (it can `chroot "$1" ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub name: String,
    pub script: String,
}

impl Hook {
    /// What identifies the hook in a manifest: the SHA-256 of its script.
    pub fn digest(&self) -> String {
        crate::trust::hash::sha256_hex(self.script.as_bytes())
    }
}

/// A path kept on a data partition: `path` becomes a symlink to
/// `/<partition>/<dir>`, the partition is mounted by label with `nofail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPath {
    pub path: String,
    pub partition: String,
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RootAccess {
    pub password_hash: Option<String>,
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSpec {
    pub compression: Compression,
    pub level: Option<u32>,
    pub iso: bool,
}

/// A validated, fully resolved profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: String,
    /// The file it came from (`None` for the built-in default).
    pub path: Option<PathBuf>,
    pub suite: String,
    pub architecture: String,
    pub variant: String,
    pub bootstrap: Bootstrap,
    pub host_type: HostType,
    pub packages: Vec<String>,
    pub builder: bool,
    /// The image carries cairn itself (this binary), kexec-tools and the
    /// signing public key: `cairn apply-live` and `cairn reboot --kexec` work
    /// on the running system. Implied by `builder`.
    pub cairn: bool,
    pub hostname: String,
    pub root: RootAccess,
    pub kernel_cmdline: Vec<String>,
    pub files: Vec<FileSpec>,
    pub hooks: Vec<Hook>,
    pub data: Vec<DataPath>,
    pub image: ImageSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Unvalidated {
    schema_version: Option<u32>,
    name: Option<String>,
    extends: Option<PathBuf>,
    suite: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
    bootstrap: Option<Bootstrap>,
    host_type: Option<HostType>,
    #[serde(default)]
    packages: Vec<String>,
    builder: Option<bool>,
    cairn: Option<bool>,
    hostname: Option<String>,
    root: Option<UnvalidatedRoot>,
    #[serde(default)]
    kernel_cmdline: Vec<String>,
    #[serde(default)]
    files: Vec<UnvalidatedFile>,
    #[serde(default)]
    hooks: Vec<UnvalidatedHook>,
    #[serde(default)]
    data: Vec<UnvalidatedData>,
    image: Option<UnvalidatedImage>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UnvalidatedRoot {
    password_hash: Option<String>,
    #[serde(default)]
    ssh_keys: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UnvalidatedFile {
    source: PathBuf,
    dest: String,
    mode: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UnvalidatedHook {
    /// A script file, relative to the profile.
    run: Option<PathBuf>,
    /// Or an inline shell script.
    script: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UnvalidatedData {
    path: String,
    #[serde(default = "data_label")]
    partition: String,
    dir: Option<String>,
}

fn data_label() -> String {
    "data".into()
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UnvalidatedImage {
    compression: Option<Compression>,
    level: Option<u32>,
    iso: Option<bool>,
}

/// Loads a profile file, following `extends` (relative to the file).
pub fn load(path: &Path) -> Result<Profile> {
    let mut chain = Vec::new();
    let raw = load_chain(path, &mut chain)?;
    let name = raw.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    validate(raw, name, Some(path.to_path_buf()))
        .with_context(|| format!("profile {}", path.display()))
}

/// The built-in default profile: what `cairn build` makes without a file.
pub fn builtin_default(suite: &str) -> Profile {
    let raw = Unvalidated {
        suite: Some(suite.into()),
        ..Default::default()
    };
    validate(raw, "default".into(), None).expect("the built-in default profile is valid")
}

/// A `(file, base dir)` pair per level, so relative paths resolve against
/// the file that wrote them.
fn load_chain(path: &Path, seen: &mut Vec<PathBuf>) -> Result<Unvalidated> {
    let canon = path
        .canonicalize()
        .with_context(|| format!("reading profile {}", path.display()))?;
    if seen.contains(&canon) {
        bail!(
            "profile {} extends itself (through {})",
            path.display(),
            seen.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
    }
    seen.push(canon.clone());
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading profile {}", path.display()))?;
    let mut raw: Unvalidated =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match raw.schema_version {
        Some(SCHEMA_VERSION) => {}
        Some(v) => bail!(
            "{}: schema-version {v} is not supported (this cairn reads {SCHEMA_VERSION})",
            path.display()
        ),
        None => bail!(
            "{}: missing `schema-version = {SCHEMA_VERSION}`",
            path.display()
        ),
    }
    let base = canon.parent().unwrap_or(Path::new("/")).to_path_buf();
    for f in &mut raw.files {
        f.source = base.join(&f.source);
    }
    for h in &mut raw.hooks {
        if let Some(r) = &mut h.run {
            *r = base.join(&*r);
        }
    }
    match raw.extends.take() {
        None => Ok(raw),
        Some(parent) => {
            let parent_path = base.join(parent);
            let p = load_chain(&parent_path, seen)?;
            Ok(merge(p, raw))
        }
    }
}

/// `child` over `parent`: scalars replace, lists append (packages deduplicated).
fn merge(parent: Unvalidated, child: Unvalidated) -> Unvalidated {
    let mut packages = parent.packages;
    for p in child.packages {
        if !packages.contains(&p) {
            packages.push(p);
        }
    }
    let root = match (parent.root, child.root) {
        (Some(p), Some(c)) => Some(UnvalidatedRoot {
            password_hash: c.password_hash.or(p.password_hash),
            ssh_keys: p.ssh_keys.into_iter().chain(c.ssh_keys).collect(),
        }),
        (p, c) => c.or(p),
    };
    let image = match (parent.image, child.image) {
        (Some(p), Some(c)) => Some(UnvalidatedImage {
            compression: c.compression.or(p.compression),
            level: if c.compression.is_some() {
                c.level
            } else {
                c.level.or(p.level)
            },
            iso: c.iso.or(p.iso),
        }),
        (p, c) => c.or(p),
    };
    Unvalidated {
        schema_version: child.schema_version,
        name: child.name,
        extends: None,
        suite: child.suite.or(parent.suite),
        architecture: child.architecture.or(parent.architecture),
        variant: child.variant.or(parent.variant),
        bootstrap: child.bootstrap.or(parent.bootstrap),
        host_type: child.host_type.or(parent.host_type),
        packages,
        builder: child.builder.or(parent.builder),
        cairn: child.cairn.or(parent.cairn),
        hostname: child.hostname.or(parent.hostname),
        root,
        kernel_cmdline: parent
            .kernel_cmdline
            .into_iter()
            .chain(child.kernel_cmdline)
            .collect(),
        files: parent.files.into_iter().chain(child.files).collect(),
        hooks: parent.hooks.into_iter().chain(child.hooks).collect(),
        data: parent.data.into_iter().chain(child.data).collect(),
        image,
    }
}

/// Top-level directories a data partition label may not shadow.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "run", "sbin",
    "sys", "tmp", "usr", "var",
];

fn validate(raw: Unvalidated, name: String, path: Option<PathBuf>) -> Result<Profile> {
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
    let mut files = Vec::new();
    for f in raw.files {
        if !f.dest.starts_with('/') || f.dest.split('/').any(|c| c == "..") {
            bail!(
                "file dest {:?} must be an absolute path without `..`",
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
    let mut hooks = Vec::new();
    for (i, h) in raw.hooks.into_iter().enumerate() {
        let (name, script) = match (h.run, h.script) {
            (Some(r), None) => {
                let s =
                    std::fs::read_to_string(&r).with_context(|| format!("hook {}", r.display()))?;
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
    let mut data = Vec::new();
    let mut seen = BTreeSet::new();
    for d in raw.data {
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
    let img = raw.image.unwrap_or_default();
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
        if let Some(why) = crate::image::refused_kernel_arg(a) {
            bail!("kernel-cmdline entry {a:?}: {why}");
        }
    }
    Ok(Profile {
        name,
        path,
        suite,
        architecture: raw
            .architecture
            .unwrap_or_else(|| crate::mirror::config::host_arch().into()),
        variant,
        bootstrap: raw.bootstrap.unwrap_or(Bootstrap::Mmdebstrap),
        host_type: raw.host_type.unwrap_or(HostType::Auto),
        packages: raw.packages,
        builder: raw.builder.unwrap_or(false),
        cairn: raw.cairn.unwrap_or(false) || raw.builder.unwrap_or(false),
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
    })
}

impl Profile {
    /// `auto` resolved on this build host with systemd-detect-virt.
    pub fn resolved_host_type(&self) -> HostType {
        match self.host_type {
            HostType::Auto => detect_host_type(),
            t => t,
        }
    }

    /// Packages chosen by host type and role, then the profile's own.
    pub fn all_packages(&self, host: HostType) -> Vec<String> {
        let arch = &self.architecture;
        let mut v: Vec<String> = ["systemd-sysv", "live-boot", "zstd", "cryptsetup-bin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match host {
            HostType::Virtual => {
                v.push(format!("linux-image-cloud-{arch}"));
                v.push("qemu-guest-agent".into());
            }
            _ => {
                v.push(format!("linux-image-{arch}"));
                v.push("firmware-linux-free".into());
            }
        }
        if self.builder {
            v.extend(BUILDER_PACKAGES.iter().map(|s| s.to_string()));
        }
        if self.cairn {
            v.push("kexec-tools".into());
        }
        if self.bootstrap == Bootstrap::Debootstrap {
            // debootstrap always installs it on merged-/usr suites.
            v.push("usr-is-merged".into());
        }
        for p in &self.packages {
            if !v.contains(p) {
                v.push(p.clone());
            }
        }
        v
    }

    /// SHA-256 over the resolved profile, including the contents of its files and hooks.
    pub fn hash(&self) -> Result<String> {
        let mut data = serde_json::to_vec(self)?;
        for f in &self.files {
            data.extend(
                std::fs::read(&f.source)
                    .with_context(|| format!("reading {}", f.source.display()))?,
            );
        }
        Ok(sha256_hex(&data))
    }

    /// The git commit of the profile file, with `-dirty` when it has changes.
    pub fn git_commit(&self) -> Option<String> {
        let path = self.path.as_ref()?;
        let dir = path.parent()?;
        let out = Cmd::new("git")
            .arg("-C")
            .arg(dir)
            .args(["log", "-1", "--format=%H", "--"])
            .arg(path)
            .output_any_status()
            .ok()?;
        let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || commit.is_empty() {
            return None;
        }
        let st = Cmd::new("git")
            .arg("-C")
            .arg(dir)
            .args(["status", "--porcelain", "--"])
            .arg(path)
            .output_any_status()
            .ok()?;
        Some(if st.stdout.is_empty() {
            commit
        } else {
            format!("{commit}-dirty")
        })
    }
}

/// What an image needs to build other images.
pub const BUILDER_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "squashfs-tools",
    "xorriso",
    "grub-common",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "mtools",
    "gpg",
    "gpgv",
    "ca-certificates",
];

pub fn detect_host_type() -> HostType {
    match Cmd::new("systemd-detect-virt").output_any_status() {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() != "none" => {
            HostType::Virtual
        }
        Ok(_) => HostType::Physical,
        // No systemd-detect-virt: look at what the kernel says.
        Err(_) => {
            let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            if cpu.contains(" hypervisor") {
                HostType::Virtual
            } else {
                HostType::Physical
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn extends_merges_and_resolves_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("files")).unwrap();
        write(&d.path().join("files"), "motd", "hi\n");
        write(
            d.path(),
            "base.toml",
            "schema-version = 1\nsuite = \"bookworm\"\npackages = [\"less\"]\nkernel-cmdline = [\"quiet\"]\n\
[[files]]\nsource = \"files/motd\"\ndest = \"/etc/motd\"\n[image]\ncompression = \"xz\"\n",
        );
        let p = write(
            d.path(),
            "web.toml",
            "schema-version = 1\nextends = \"base.toml\"\nhost-type = \"virtual\"\npackages = [\"nginx\", \"less\"]\n\
[[data]]\npath = \"/var/lib/postgresql\"\n[[hooks]]\nscript = \"echo hi\"\n[image]\niso = true\n",
        );
        let prof = load(&p).unwrap();
        assert_eq!(prof.name, "web");
        assert_eq!(prof.packages, ["less", "nginx"]);
        assert_eq!(
            prof.files[0].source,
            d.path().canonicalize().unwrap().join("files/motd")
        );
        assert_eq!(prof.files[0].mode, 0o644);
        assert_eq!(
            prof.image,
            ImageSpec {
                compression: Compression::Xz,
                level: None,
                iso: true
            }
        );
        assert_eq!(
            prof.data[0],
            DataPath {
                path: "/var/lib/postgresql".into(),
                partition: "data".into(),
                dir: "var-lib-postgresql".into()
            }
        );
        let pk = prof.all_packages(HostType::Virtual);
        assert!(
            pk.contains(&"linux-image-cloud-amd64".to_string())
                && pk.contains(&"nginx".to_string())
        );
        let phys = prof.all_packages(HostType::Physical);
        assert!(
            phys.contains(&"linux-image-amd64".to_string())
                && phys.contains(&"firmware-linux-free".to_string())
        );
        assert_ne!(
            prof.hash().unwrap(),
            builtin_default("bookworm").hash().unwrap()
        );
    }

    #[test]
    fn strict_errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "p.toml",
            "schema-version = 1\nsuite = \"bookworm\"\npackage = [\"x\"]\n",
        );
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("p.toml") && e.contains("line 3") && e.contains("unknown field `package`"),
            "{e}"
        );
        let cases = [
            ("suite = \"bookworm\"\n", "missing `schema-version"),
            ("schema-version = 1\n", "no `suite`"),
            (
                "schema-version = 1\nsuite = \"bookworm\"\n[image]\ncompression = \"xz\"\nlevel = 3\n",
                "xz has no compression level",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\n[image]\ncompression = \"zstd\"\nlevel = 30\n",
                "out of range",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\n[[data]]\npath = \"/srv\"\npartition = \"etc\"\n",
                "not a system directory",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\n[root]\npassword-hash = \"hunter2\"\n",
                "crypt(3)",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\nextends = \"p.toml\"\n",
                "extends itself",
            ),
            // Arguments that would take layers or an overlay from elsewhere,
            // or pose as cairn's own: an image that could never boot.
            (
                "schema-version = 1\nsuite = \"bookworm\"\nkernel-cmdline = [\"persistence\"]\n",
                "initramfs refuses it",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\nkernel-cmdline = [\"module=evil\"]\n",
                "initramfs refuses it",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\nkernel-cmdline = [\"cairn.verity=x\"]\n",
                "cairn's own",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\nkernel-cmdline = [\"init=/bin/sh\"]\n",
                "other than the image's init",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\nkernel-cmdline = [\"MODULETORAMFILE=x\"]\n",
                "environment variable",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\n[[data]]\npath = \"/srv\"\npartition = \"-x\"\n",
                "simple name",
            ),
        ];
        for (text, want) in cases {
            let p = write(d.path(), "p.toml", text);
            let e = format!("{:#}", load(&p).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
