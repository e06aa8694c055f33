//! The host's configuration: `/etc/cairn/cairn.toml` and the drop-ins in
//! `/etc/cairn/cairn.toml.d/*.toml` (in name order, each overriding the
//! keys it sets). Strict like the profiles: an unknown key or section is an
//! error naming the file and line. Precedence, for every setting: a flag,
//! then the environment (`CAIRN_STORE`), then the files, then the built-in
//! default; [`Config::origin`] says which one a value came from, for
//! `cairn config show`.

use fs_err as fs;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::profile::RawFleet;

/// The main file; `CAIRN_CONFIG` names another (its drop-ins: `<file>.d/`).
pub const MAIN: &str = "/etc/cairn/cairn.toml";
/// The environment variable naming another main file.
pub const CONFIG_ENV: &str = "CAIRN_CONFIG";
/// The environment variable for the store.
pub const STORE_ENV: &str = "CAIRN_STORE";
/// The store when nothing says otherwise.
pub const DEFAULT_STORE: &str = "/srv/cairn";
/// The public key machines check images with when nothing says otherwise.
pub const DEFAULT_PUBLIC_KEY: &str = crate::image::paths::SIGNING_KEY;
/// Where a bare profile name (`web`) is looked up when nothing says otherwise.
pub const DEFAULT_PROFILE_DIR: &str = "/etc/cairn/profiles";

/// Everything a file may set; every key optional (a drop-in sets a few).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Must be 1 in every file that sets anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    pub store: Option<PathBuf>,
    #[serde(default)]
    pub key: KeySettings,
    #[serde(default)]
    pub mirror: MirrorSettings,
    #[serde(default)]
    pub build: BuildSettings,
    #[serde(default)]
    pub boot: BootSettings,
    /// A machine's overrides of its image's `[fleet]` (as in a profile).
    #[serde(default, skip_serializing)]
    pub fleet: Option<RawFleet>,
    /// The build host's unattended round (`cairn cycle`).
    #[serde(default, skip_serializing)]
    pub cycle: Option<CycleSettings>,
}

/// `[cycle]` as a file may say it (checked for unknown keys here; the
/// merged section is read by `fleet::cycle::load`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CycleSettings {
    pub profiles: Option<Vec<PathBuf>>,
    pub valid_for: Option<String>,
    pub sync: Option<bool>,
    pub mirror_config: Option<PathBuf>,
    pub all_versions: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KeySettings {
    /// The public key a machine checks images with (pull, status,
    /// apply-live, reboot).
    pub public: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MirrorSettings {
    /// A mirror config file (sources and selection) used instead of the
    /// host's apt sources by `cairn mirror sync`.
    pub config: Option<PathBuf>,
    /// The selection of `cairn mirror sync` without one: the closure of
    /// these profiles.
    pub profiles: Option<Vec<String>>,
    /// Concurrent downloads.
    pub jobs: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BuildSettings {
    /// Where a profile given by name (`web`) is found: `<dir>/web.toml`.
    pub profile_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BootSettings {
    /// Seconds GRUB's menu waits.
    pub timeout: Option<u32>,
    /// Boots a new default image gets before GRUB falls back.
    pub tries: Option<u32>,
    /// Profile whose newest image boots by default.
    pub default_profile: Option<String>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "from")]
pub enum Origin {
    Default,
    File { path: PathBuf, line: Option<usize> },
    Env { variable: String },
    Flag { flag: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "built-in default"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env { variable } => write!(f, "environment {variable}"),
            Origin::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// The effective configuration: the files merged, with each key's origin.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub settings: Settings,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Dotted key (`boot.timeout`) → the file (and line) that set it last.
    origins: BTreeMap<String, Origin>,
    /// The files merged, as written.
    merged: toml::Table,
}

impl Config {
    /// Reads the main file (`CAIRN_CONFIG`, else /etc/cairn/cairn.toml)
    /// and its drop-ins. A missing main file or drop-in directory is no
    /// configuration; an unreadable one, a file others may write, or any
    /// unknown key is an error.
    pub fn load_default() -> Result<Config> {
        let main = match std::env::var_os(CONFIG_ENV) {
            Some(p) if p.is_empty() => {
                bail!("{CONFIG_ENV} is set but empty: unset it or name a file")
            }
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(MAIN),
        };
        Config::load(&main)
    }

    /// Reads `main` and `<main>.d/*.toml`.
    pub fn load(main: &Path) -> Result<Config> {
        let mut files = Vec::new();
        // The directory of the main file is checked whether or not the
        // file exists: whoever could write it could remove the file, or
        // the drop-ins, and cairn would run on its defaults.
        let dir = main
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if exists(dir)? {
            check_dir(dir)?;
            check_ancestors(dir)?;
        }
        if exists(main)? {
            files.push(main.to_path_buf());
        }
        let mut dropins = PathBuf::from(main).into_os_string();
        dropins.push(".d");
        let dropins = PathBuf::from(dropins);
        if exists(&dropins)? {
            check_dir(&dropins)?;
            let mut names = Vec::new();
            for e in fs::read_dir(&dropins)? {
                let e = e?;
                let name = e.file_name();
                let Some(n) = name.to_str() else {
                    bail!(
                        "{}: a file name that is not UTF-8 in the drop-in directory: rename or remove it",
                        e.path().display()
                    );
                };
                if n.ends_with(".toml") && !n.starts_with('.') {
                    names.push(e.path());
                } else {
                    // As apt does with its .d directories: a dpkg leftover
                    // (`.dpkg-dist`, `.dpkg-old`) or an editor's backup is
                    // not configuration; said, not read.
                    tracing::warn!("ignoring {}: drop-ins end in .toml", e.path().display());
                }
            }
            names.sort();
            files.extend(names);
        }
        let mut c = Config::default();
        let mut merged = toml::Table::new();
        for f in &files {
            let text = read_checked(f)?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            // Strict: the file alone must be a valid (partial) configuration.
            let s: Settings =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            if !table.is_empty() && s.schema_version != Some(1) {
                bail!(
                    "{}: schema-version = 1 is missing{}: add it as the first line",
                    f.display(),
                    s.schema_version
                        .map(|v| format!(" (it says {v}, this cairn reads 1)"))
                        .unwrap_or_default()
                );
            }
            for (k, v) in table {
                if k == "schema-version" {
                    continue;
                }
                match v {
                    toml::Value::Table(t) => {
                        let section = merged
                            .entry(k.clone())
                            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                        for (k2, v2) in t {
                            let key = format!("{k}.{k2}");
                            c.origins.insert(
                                key.clone(),
                                Origin::File {
                                    path: f.clone(),
                                    line: line_of(&text, Some(&k), &k2),
                                },
                            );
                            if let toml::Value::Table(s) = section {
                                s.insert(k2, v2);
                            }
                        }
                    }
                    v => {
                        c.origins.insert(
                            k.clone(),
                            Origin::File {
                                path: f.clone(),
                                line: line_of(&text, None, &k),
                            },
                        );
                        merged.insert(k, v);
                    }
                }
            }
        }
        c.merged = merged.clone();
        c.settings = merged
            .try_into()
            .map_err(|e| anyhow::anyhow!("the configuration of {}: {e}", files_list(&files)))?;
        c.files = files;
        Ok(c)
    }

    /// Where the file value of a dotted key came from (Default if no file set it).
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// A section (`fleet`, `cycle`) merged over the files, as written.
    pub fn section(&self, name: &str) -> Option<&toml::Table> {
        self.merged.get(name)?.as_table()
    }

    /// The store: `--store`, else `CAIRN_STORE`, else the files, else /srv/cairn.
    pub fn store(&self, flag: Option<&Path>) -> Result<(PathBuf, Origin)> {
        if let Some(f) = flag {
            if f.as_os_str().is_empty() {
                bail!("--store is empty: name the store's directory");
            }
            return Ok((
                f.to_path_buf(),
                Origin::Flag {
                    flag: "--store".into(),
                },
            ));
        }
        match std::env::var_os(STORE_ENV) {
            Some(v) if v.is_empty() => {
                bail!("{STORE_ENV} is set but empty: unset it or name the store's directory")
            }
            Some(v) => Ok((
                PathBuf::from(v),
                Origin::Env {
                    variable: STORE_ENV.into(),
                },
            )),
            None => match &self.settings.store {
                Some(s) => Ok((s.clone(), self.origin("store"))),
                None => Ok((PathBuf::from(DEFAULT_STORE), Origin::Default)),
            },
        }
    }

    /// A profile as the command line names it: `default` (built in), a path
    /// (with a `/` or ending in `.toml`: `./web.toml`, `/srv/p/web.toml`),
    /// or a bare name, which is only ever `<build.profile-dir>/NAME.toml` —
    /// never a file of the current directory (a `web` someone left in /tmp
    /// must not become the signed `web` image). The profile directory is
    /// checked like the configuration's.
    pub fn profile_arg(&self, arg: &str) -> Result<String> {
        if arg == "default" || arg.contains('/') || arg.ends_with(".toml") {
            return Ok(arg.to_string());
        }
        crate::names::check("profile name", arg)?;
        let dir = self
            .settings
            .build
            .profile_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PROFILE_DIR));
        let p = dir.join(format!("{arg}.toml"));
        if !p.is_file() {
            bail!(
                "no profile {arg:?}: {} does not exist (a profile file is named as a path: ./{arg}.toml; `default` is built in)",
                p.display()
            );
        }
        check_dir(&dir)?;
        check_ancestors(&dir)?;
        // The file itself: root's, not writable by others.
        read_checked(&p)?;
        Ok(p.to_string_lossy().into_owned())
    }
}

fn files_list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `p` exists; an error other than "not found" (a directory we may
/// not read) is a refusal, not "no configuration".
fn exists(p: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("looking at {}", p.display())),
    }
}

/// A configuration file's text, if root (or this user) owns it and nobody
/// else may write it: whoever can write it chooses the store, the key and
/// the URLs cairn trusts. The checks are made on the file as opened (a
/// path swapped between a check and the read is not read), without
/// blocking on a FIFO.
pub(crate) fn read_checked(f: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(f)
        .with_context(|| format!("opening {}", f.display()))?;
    let m = file.metadata()?;
    if !m.is_file() {
        bail!("{}: not a regular file", f.display());
    }
    if m.uid() != 0 && Some(m.uid()) != crate::fsutil::euid() {
        bail!(
            "{}: owned by uid {}, not root: whoever owns it configures cairn; chown root it",
            f.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{}: writable by group or others (mode {:o}): chmod go-w it",
            f.display(),
            m.mode() & 0o7777
        );
    }
    const MAX: u64 = 1 << 20;
    let mut text = String::new();
    file.take(MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", f.display()))?;
    if text.len() as u64 > MAX {
        bail!(
            "{}: larger than 1 MiB: not a configuration file",
            f.display()
        );
    }
    Ok(text)
}

/// Every directory above `d` (to /): root's or this user's, and writable
/// by group or others only with the sticky bit (as /tmp): no one else
/// can rename what cairn reads out of the way.
fn check_ancestors(d: &Path) -> Result<()> {
    let abs = std::path::absolute(d)?;
    for a in abs.ancestors().skip(1) {
        let m = match fs::metadata(a) {
            Ok(m) => m,
            Err(e) => return Err(e).with_context(|| format!("looking at {}", a.display())),
        };
        if m.uid() != 0 && Some(m.uid()) != crate::fsutil::euid() {
            bail!(
                "{}: owned by uid {}: whoever owns it can replace the configuration below it",
                a.display(),
                m.uid()
            );
        }
        if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            bail!(
                "{}: writable by group or others without the sticky bit (mode {:o}): the configuration below it could be replaced",
                a.display(),
                m.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// A directory configuration is read from: whoever may add, rename or
/// replace files in it configures cairn, so it must be root's (or this
/// user's) and not writable by group or others.
fn check_dir(d: &Path) -> Result<()> {
    let m = fs::metadata(d)?;
    if !m.is_dir() {
        bail!("{}: not a directory", d.display());
    }
    if m.uid() != 0 && Some(m.uid()) != crate::fsutil::euid() {
        bail!(
            "{}: owned by uid {}, not root: whoever owns it configures cairn; chown root it",
            d.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{}: writable by group or others (mode {:o}): files could be put there; chmod go-w it",
            d.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// The line (1-based) where `key` is set in `section` (or at the top).
fn line_of(text: &str, section: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = Some(h.trim().to_string());
            continue;
        }
        if current.as_deref() == section
            && let Some((k, _)) = t.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return Some(i + 1);
        }
    }
    None
}

/// One line of `cairn config show`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Shown {
    pub key: String,
    pub value: toml::Value,
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    #[test]
    fn drop_ins_override_key_by_key_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("cairn.toml");
        write(
            &main,
            "schema-version = 1\nstore = \"/a\"\n[boot]\ntimeout = 3\ntries = 2\n",
        );
        write(
            &d.path().join("cairn.toml.d/20-b.toml"),
            "schema-version = 1\n[boot]\ntimeout = 9\n",
        );
        write(
            &d.path().join("cairn.toml.d/10-a.toml"),
            "schema-version = 1\n[boot]\ntimeout = 5\n",
        );
        write(
            &d.path().join("cairn.toml.d/x.toml.dpkg-dist"),
            "junk = 1\n",
        );
        let c = Config::load(&main).unwrap();
        assert_eq!(c.settings.boot.timeout, Some(9));
        assert_eq!(c.settings.boot.tries, Some(2));
        assert_eq!(c.settings.store.as_deref(), Some(Path::new("/a")));
        assert_eq!(
            c.origin("boot.timeout"),
            Origin::File {
                path: d.path().join("cairn.toml.d/20-b.toml"),
                line: Some(3)
            }
        );
        assert_eq!(
            c.origin("boot.tries").to_string(),
            format!("{}:5", main.display())
        );
        assert_eq!(c.origin("mirror.jobs"), Origin::Default);
        assert_eq!(c.files.len(), 3);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("cairn.toml");
        write(
            &main,
            "schema-version = 1\n[boot]\ntimeout = 3\ntimout = 4\n",
        );
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("timout") && e.contains("line 4"), "{e}");
        write(&main, "schema-version = 1\n[bot]\ntimeout = 3\n");
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("bot") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_file_without_schema_version_or_writable_by_others_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("cairn.toml");
        write(&main, "store = \"/x\"\n");
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("schema-version = 1 is missing"), "{e}");
        write(&main, "schema-version = 2\n");
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("it says 2"), "{e}");
        // Only comments: no configuration, no refusal.
        write(&main, "# store = \"/srv/cairn\"\n");
        assert!(Config::load(&main).unwrap().settings.store.is_none());
        write(&main, "schema-version = 1\nstore = \"/x\"\n");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&main, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("writable by group or others"), "{e}");
    }

    #[test]
    fn a_drop_in_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("cairn.toml");
        write(&main, "schema-version = 1\n");
        let dropins = d.path().join("cairn.toml.d");
        fs::create_dir(&dropins).unwrap();
        fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("cairn.toml.d") && e.contains("writable"), "{e}");
        fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o757)).unwrap();
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("writable"), "{e}");
        fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Config::load(&main).unwrap();
    }

    #[test]
    fn a_bad_fleet_override_is_refused_with_its_file() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("cairn.toml");
        write(
            &main,
            "schema-version = 1\n[fleet]\npolicy = \"sometimes\"\n",
        );
        let e = format!("{:#}", Config::load(&main).unwrap_err());
        assert!(e.contains("cairn.toml") && e.contains("sometimes"), "{e}");
    }

    #[test]
    fn a_bare_profile_name_is_only_ever_the_profile_directorys() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("cairn.toml");
        let dir = d.path().join("profiles");
        write(
            &main,
            &format!(
                "schema-version = 1\n[build]\nprofile-dir = \"{}\"\n",
                dir.display()
            ),
        );
        write(&dir.join("web.toml"), "schema-version = 1\n");
        let c = Config::load(&main).unwrap();
        assert_eq!(
            c.profile_arg("web").unwrap(),
            dir.join("web.toml").to_string_lossy()
        );
        // Not there: an error naming where it was looked for (never a
        // file of that name in the current directory).
        let e = format!("{:#}", c.profile_arg("db").unwrap_err());
        assert!(
            e.contains(&dir.join("db.toml").display().to_string()),
            "{e}"
        );
        assert!(c.profile_arg("..").is_err());
        assert_eq!(c.profile_arg("./db").unwrap(), "./db");
        assert_eq!(c.profile_arg("default").unwrap(), "default");
        // A profile directory others may write is refused.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(c.profile_arg("web").is_err());
    }

    #[test]
    fn no_files_is_the_defaults() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(&d.path().join("none.toml")).unwrap();
        assert!(c.files.is_empty());
        assert_eq!(c.origin("store"), Origin::Default);
    }
}
