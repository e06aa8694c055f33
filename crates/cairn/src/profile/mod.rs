//! Profiles: versioned TOML files that say what a system is. Strict
//! (`schema-version`, unknown keys are errors naming file and line), resolved
//! through `extends`, validated before any work starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

mod fleet;
mod packages;
mod raw;
mod validate;

pub use fleet::{
    Fleet, FleetFile, Health, Policy, RawFleet, RolloutPolicy, in_window, parse_window,
};
pub use packages::BUILDER_PACKAGES;

use crate::cmd::Cmd;
use crate::trust::hash::sha256_hex;
use raw::{Unvalidated, load_chain};
pub use validate::refused_kernel_arg;
use validate::validate;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostType {
    Physical,
    Virtual,
    Auto,
}

impl HostType {
    /// Its name in profiles, manifests and reports.
    pub fn name(self) -> &'static str {
        match self {
            HostType::Physical => "physical",
            HostType::Virtual => "virtual",
            HostType::Auto => "auto",
        }
    }
}

impl std::fmt::Display for HostType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    /// The image carries cairn itself (this binary), kexec-tools, gpgv and
    /// the signing public key: `cairn apply-live`, `cairn reboot` and `cairn
    /// pull` work on the running system. Implied by `builder`.
    pub cairn: bool,
    /// A physical host's image carries CPU microcode and the firmware most
    /// network cards and GPUs need, from Debian's `non-free-firmware`
    /// component, as Debian's installer does (default); `false`: `main`
    /// only (`firmware-linux-free`). (Left out of the hash when true.)
    #[serde(skip_serializing_if = "is_true")]
    pub non_free_firmware: bool,
    pub hostname: String,
    pub root: RootAccess,
    pub kernel_cmdline: Vec<String>,
    pub files: Vec<FileSpec>,
    pub hooks: Vec<Hook>,
    pub data: Vec<DataPath>,
    pub image: ImageSpec,
    /// Its machines pull newer images by themselves (`[fleet]`).
    pub fleet: Option<Fleet>,
    /// What marks a boot of its images good (`[health]`).
    pub health: Option<Health>,
}

fn is_true(b: &bool) -> bool {
    *b
}

pub use crate::mirror::config::suite_family;

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

impl Profile {
    /// `auto` resolved on this build host with systemd-detect-virt.
    pub fn resolved_host_type(&self) -> HostType {
        match self.host_type {
            HostType::Auto => detect_host_type(),
            t => t,
        }
    }

    /// SHA-256 over what the profile makes: its resolved settings and the
    /// contents of its files and hooks — not where its files are (the same
    /// profile in two directories, or two checkouts, has one hash).
    pub fn hash(&self) -> Result<String> {
        let mut p = self.clone();
        p.path = None;
        let mut contents = Vec::new();
        for f in &mut p.files {
            let data = fs_err::read(&f.source)
                .with_context(|| format!("reading {}", f.source.display()))?;
            contents.push(sha256_hex(&data));
            f.source = PathBuf::new();
        }
        let mut data = serde_json::to_vec(&p)?;
        for c in contents {
            data.extend(c.into_bytes());
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

/// The host type `auto` stands for on this build host.
pub fn detect_host_type() -> HostType {
    if crate::host::is_virtual() {
        HostType::Virtual
    } else {
        HostType::Physical
    }
}

/// The profile a command line names: `default` is always the built-in one
/// (for this host's suite) — a file of that name where cairn runs is not
/// taken for it (write `./default`); anything else is a profile file.
pub fn load_arg(arg: &str) -> Result<Profile> {
    if arg == "default" {
        let suite = crate::mirror::config::host_repos(Path::new("/"))
            .ok()
            .and_then(|r| crate::mirror::config::host_release(&r))
            .unwrap_or_else(|| "bookworm".into());
        return Ok(builtin_default(&suite));
    }
    load(Path::new(arg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs_err::write(&p, text).unwrap();
        p
    }

    #[test]
    fn extends_merges_and_resolves_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(d.path().join("files")).unwrap();
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

    /// The same profile (and files) in two directories: one hash; a file's
    /// content changed: another.
    #[test]
    fn the_hash_is_the_profiles_not_its_paths() {
        let text = "schema-version = 1\nsuite = \"bookworm\"\n[[files]]\nsource = \"f/motd\"\ndest = \"/etc/motd\"\n";
        let d = tempfile::tempdir().unwrap();
        let mut hashes = Vec::new();
        for dir in ["a", "b/c"] {
            let at = d.path().join(dir);
            fs_err::create_dir_all(at.join("f")).unwrap();
            fs_err::write(at.join("f/motd"), "hello\n").unwrap();
            let p = write(&at, "web.toml", text);
            hashes.push(load(&p).unwrap().hash().unwrap());
        }
        assert_eq!(hashes[0], hashes[1]);
        fs_err::write(d.path().join("b/c/f/motd"), "hello!\n").unwrap();
        let p = d.path().join("b/c/web.toml");
        assert_ne!(load(&p).unwrap().hash().unwrap(), hashes[0]);
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
            // Files that are cairn's own, never an image's.
            (
                "schema-version = 1\nsuite = \"bookworm\"\n[[files]]\nsource = \"p.toml\"\ndest = \"/etc/dpkg/dpkg.cfg.d/cairn-build\"\n",
                "cairn's own",
            ),
            (
                "schema-version = 1\nsuite = \"bookworm\"\n[[files]]\nsource = \"p.toml\"\ndest = \"/etc/cairn/./cmdline\"\n",
                "cairn's own",
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
