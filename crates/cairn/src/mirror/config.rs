//! What to mirror: repositories (from the host's apt sources or a mirror
//! config file) and the selection of packages. Config files are strict TOML,
//! deserialized into `Unvalidated*` types, then validated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_debian::sources::{SourceEntry, parse_deb822_sources, parse_one_line_sources};
use serde::{Deserialize, Serialize};

use super::url::RepoUrl;

/// The packages the default selection is the closure of: what a bootable
/// cairn live image needs.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "live-boot",
    "linux-image-amd64",
    "zstd",
    "cryptsetup-bin",
];

/// One upstream repository and the parts of it to mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RepoSpec {
    /// Local name: the directory under `<store>/mirror/`.
    pub name: String,
    pub url: RepoUrl,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub architectures: Vec<String>,
    /// Keyring files that may sign the Release files.
    pub keyring: Vec<PathBuf>,
    /// Translation languages to mirror (`en`).
    pub translations: Vec<String>,
}

impl RepoSpec {
    /// Whether this is Debian's own archive (or a mirror of it): its
    /// keyring is Debian's archive keyring. Only those carry Debian's
    /// releases by codename and its components; a vendor's repository
    /// (Docker's `bookworm stable`, NodeSource's `nodistro`) does not.
    pub fn is_debian_archive(&self) -> bool {
        !self.keyring.is_empty()
            && self.keyring.iter().all(|k| {
                k.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("debian-archive-"))
            })
    }
}

/// Which packages' pool files to mirror. Indices are always mirrored whole
/// and untouched, so the upstream signature stays valid for apt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Selection {
    /// Every package of the chosen suites, components and architectures.
    #[serde(default)]
    pub full: bool,
    /// Packages to mirror (with their dependency closure when `closure`).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Every package with one of these priorities (`required`, `important`, …).
    #[serde(default)]
    pub priorities: Vec<String>,
    /// Add the dependency closure (Depends, Pre-Depends), and always the
    /// Essential and required packages, so apt and mmdebstrap can install
    /// the packages from the mirror alone.
    #[serde(default = "yes")]
    pub closure: bool,
    /// Follow Recommends too.
    #[serde(default)]
    pub recommends: bool,
    /// Keep every version of each selected package found in the mirrored
    /// suites, not only the newest (tools that read one suite alone, such as
    /// debootstrap, need the suite's own versions).
    #[serde(default)]
    pub all_versions: bool,
    /// Packages wanted from one release only, by its codename (`trixie`:
    /// from trixie, trixie-updates, trixie-security), each with its own
    /// closure: what a profile of that suite installs. `packages` apply to
    /// every release the mirror carries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suites: BTreeMap<String, Vec<String>>,
}

fn yes() -> bool {
    true
}

impl Selection {
    pub fn default_packages() -> Selection {
        Selection {
            packages: DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect(),
            closure: true,
            ..Default::default()
        }
    }

    pub fn describe(&self) -> String {
        if self.full {
            return "everything".into();
        }
        let mut parts = Vec::new();
        if !self.packages.is_empty() {
            parts.push(format!("packages {}", self.packages.join(" ")));
        }
        if !self.priorities.is_empty() {
            parts.push(format!("priorities {}", self.priorities.join(" ")));
        }
        for (family, packages) in &self.suites {
            parts.push(format!("{family}: {}", packages.join(" ")));
        }
        let mut what = parts.join(" + ");
        if self.closure {
            what.push_str(" with dependency closure");
        }
        if self.all_versions {
            what.push_str(", every version");
        }
        what
    }
}

/// A validated mirror configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorConfig {
    pub repos: Vec<RepoSpec>,
    pub selection: Selection,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UnvalidatedConfig {
    schema_version: u32,
    #[serde(default)]
    repository: Vec<UnvalidatedRepo>,
    #[serde(default)]
    selection: Option<Selection>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UnvalidatedRepo {
    name: Option<String>,
    url: String,
    suites: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    keyring: Vec<PathBuf>,
    #[serde(default)]
    translations: Option<Vec<String>>,
}

pub const SCHEMA_VERSION: u32 = 1;

/// What one profile needs of a mirror: its release, the packages it
/// installs (their closure from that release) and the components, beside
/// `main`, they come from (`profile::Profile::mirror_needs`).
#[derive(Debug, Clone)]
pub struct Needs {
    /// Whose needs, for messages (`profile web`).
    pub what: String,
    pub suite: String,
    pub packages: Vec<String>,
    pub components: Vec<String>,
}

/// The family a suite belongs to: its codename, without `-updates`,
/// `-security`, `-backports` or `/updates` (`trixie-security` → `trixie`).
pub fn suite_family(suite: &str) -> &str {
    suite.split(['-', '/']).next().unwrap_or(suite)
}

/// What `cairn mirror sync` was asked for, before any default applies.
pub struct SyncRequest<'a> {
    /// A mirror configuration file: its repositories and selection.
    pub config: Option<&'a Path>,
    /// Else one repository by URL; else the host's apt sources.
    pub url: Option<&'a RepoUrl>,
    pub name: Option<&'a str>,
    pub suites: &'a [String],
    /// Empty: the default (main; the host's for its sources).
    pub components: &'a [String],
    pub architectures: &'a [String],
    pub keyring: &'a [PathBuf],
    /// What the profiles to build need (with `packages`), each from its
    /// release, as a closure.
    pub needs: &'a [Needs],
    pub packages: &'a [String],
    pub priorities: &'a [String],
    pub full: bool,
    pub no_closure: bool,
    pub recommends: bool,
    pub all_versions: bool,
}

/// The repositories and selection a sync request means: a file, one URL,
/// or the host's apt sources; the selection from profiles, packages,
/// priorities or everything (`full`), else the default set. Checked.
pub fn resolve(r: &SyncRequest) -> Result<MirrorConfig> {
    let or = |given: &[String], default: Vec<String>| {
        if given.is_empty() {
            default
        } else {
            given.to_vec()
        }
    };
    let mut cfg = if let Some(path) = r.config {
        load_config(path)?
    } else if let Some(url) = r.url {
        let url = url.clone();
        MirrorConfig {
            repos: vec![RepoSpec {
                name: r.name.map_or_else(|| name_from_url(&url), String::from),
                url,
                suites: r.suites.to_vec(),
                components: or(r.components, vec!["main".into()]),
                architectures: or(r.architectures, vec![crate::host::debian_arch().into()]),
                keyring: r.keyring.to_vec(),
                translations: vec!["en".into()],
            }],
            selection: Selection::default_packages(),
        }
    } else {
        let mut repos = host_repos(Path::new("/")).context("reading the host's apt sources")?;
        for repo in &mut repos {
            repo.components = or(r.components, std::mem::take(&mut repo.components));
            repo.architectures = or(r.architectures, std::mem::take(&mut repo.architectures));
        }
        // The releases and components the profiles need, beside the
        // host's own: the host's sources for another codename (a Debian 12
        // build host mirrors trixie from where it gets bookworm).
        for n in r.needs {
            let components: Vec<&str> = n.components.iter().map(String::as_str).collect();
            widen_host_repos(&mut repos, &n.suite, &components);
        }
        MirrorConfig {
            repos,
            selection: Selection::default_packages(),
        }
    };
    if !r.needs.is_empty() {
        // Each profile's packages come from its own release, with their
        // own closure: a mirror carrying bookworm and trixie gives each
        // build its release's versions.
        let mut suites: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in r.needs {
            let family = suite_family(&n.suite).to_string();
            if !cfg
                .repos
                .iter()
                .any(|repo| repo.suites.iter().any(|s| suite_family(s) == family))
            {
                bail!(
                    "{}: suite {} is not among the mirrored suites ({}): add it to the mirror's sources",
                    n.what,
                    n.suite,
                    cfg.repos
                        .iter()
                        .flat_map(|r| r.suites.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            let list = suites.entry(family).or_default();
            for pk in &n.packages {
                if !list.contains(pk) {
                    list.push(pk.clone());
                }
            }
        }
        cfg.selection = Selection {
            packages: r.packages.to_vec(),
            closure: true,
            suites,
            ..Default::default()
        };
    } else if r.full || !r.packages.is_empty() || !r.priorities.is_empty() {
        cfg.selection = Selection {
            full: r.full,
            packages: r.packages.to_vec(),
            priorities: r.priorities.to_vec(),
            closure: true,
            ..Default::default()
        };
    }
    // The closure flags apply to whichever selection was chosen above.
    if r.no_closure || r.full {
        cfg.selection.closure = false;
    }
    cfg.selection.recommends |= r.recommends;
    cfg.selection.all_versions |= r.all_versions;
    validate_selection(&cfg.selection)?;
    Ok(cfg)
}

/// Adds `suite`'s release to the host's repositories that carry the host's
/// own release (each of its suites with the codename changed: bookworm,
/// bookworm-updates, bookworm-security → trixie, trixie-updates,
/// trixie-security), and `components` to every repository of that
/// release. Repositories of other origins (a vendor's `nodistro`) are left
/// as they are.
pub fn widen_host_repos(repos: &mut [RepoSpec], suite: &str, components: &[&str]) {
    let family = suite_family(suite);
    let own = host_release(repos);
    let own = own.as_deref();
    for repo in repos.iter_mut().filter(|r| r.is_debian_archive()) {
        let mut added = Vec::new();
        if !repo.suites.iter().any(|s| suite_family(s) == family) {
            // The repository's releases (Debian's: one codename and its
            // -updates, -security, -backports siblings).
            let hosts: BTreeSet<&str> = repo.suites.iter().map(|s| suite_family(s)).collect();
            if hosts.len() != 1 {
                continue;
            }
            let host = *hosts.iter().next().unwrap_or(&"");
            if Some(host) != own {
                continue;
            }
            added = repo
                .suites
                .iter()
                .map(|s| format!("{family}{}", &s[host.len()..]))
                .collect();
        }
        repo.suites.extend(added);
        if repo.suites.iter().any(|s| suite_family(s) == family) {
            for c in components {
                if !repo.components.iter().any(|x| x == c) {
                    repo.components.push(c.to_string());
                }
            }
        }
    }
}

/// The release the host's sources are for: the first plain suite (no
/// `-updates`, no `/updates`) of Debian's archive among them (else of any),
/// what the `default` profile is built for.
pub fn host_release(repos: &[RepoSpec]) -> Option<String> {
    let plain = |debian: bool| {
        repos
            .iter()
            .filter(|r| !debian || r.is_debian_archive())
            .flat_map(|r| r.suites.iter())
            .find(|s| !s.contains(['-', '/']))
            .cloned()
    };
    plain(true).or_else(|| plain(false))
}

/// Loads and validates a mirror config file.
pub fn load_config(path: &Path) -> Result<MirrorConfig> {
    let text =
        fs_err::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_config(&text).with_context(|| format!("in {}", path.display()))
}

pub fn parse_config(text: &str) -> Result<MirrorConfig> {
    let raw: UnvalidatedConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if raw.schema_version != SCHEMA_VERSION {
        bail!(
            "schema-version {} is not supported (this cairn reads {SCHEMA_VERSION})",
            raw.schema_version
        );
    }
    if raw.repository.is_empty() {
        bail!("no [[repository]] given");
    }
    let mut repos = Vec::new();
    for (i, r) in raw.repository.into_iter().enumerate() {
        let url = RepoUrl::parse(&r.url).with_context(|| format!("repository #{}", i + 1))?;
        let name = r.name.unwrap_or_else(|| name_from_url(&url));
        let spec = RepoSpec {
            name,
            url,
            suites: r.suites,
            components: if r.components.is_empty() {
                vec!["main".into()]
            } else {
                r.components
            },
            architectures: if r.architectures.is_empty() {
                vec![crate::host::debian_arch().into()]
            } else {
                r.architectures
            },
            keyring: r.keyring,
            translations: r.translations.unwrap_or_else(|| vec!["en".into()]),
        };
        validate_repo(&spec).with_context(|| format!("repository #{} ({})", i + 1, spec.name))?;
        repos.push(spec);
    }
    let mut names: Vec<&str> = repos.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "two repositories are named {:?}: give them distinct `name`s",
            w[0]
        );
    }
    let selection = raw.selection.unwrap_or_else(Selection::default_packages);
    validate_selection(&selection)?;
    Ok(MirrorConfig { repos, selection })
}

pub fn validate_selection(s: &Selection) -> Result<()> {
    let per_suite = s.suites.values().any(|p| !p.is_empty());
    if !s.full && s.packages.is_empty() && s.priorities.is_empty() && !per_suite {
        bail!(
            "the selection is empty: set `full = true`, or list `packages`, `priorities` or `suites`"
        );
    }
    if s.full && (!s.packages.is_empty() || !s.priorities.is_empty() || per_suite) {
        bail!(
            "`full = true` mirrors everything: drop `packages`, `priorities` and `suites`, or `full`"
        );
    }
    for f in s.suites.keys() {
        crate::names::check("release codename", f)?;
        if suite_family(f) != f {
            bail!("[selection.suites] {f:?}: a release's codename (trixie), not one of its suites");
        }
    }
    Ok(())
}

/// Checks a repository's names before any of them reaches a path: the
/// mirror's name, suites (`/`-separated plain names, as old layouts have),
/// components, architectures and languages follow the name rule
/// (`names::is_safe`). Every sync checks every repository, wherever it came
/// from (a config file, flags, the host's apt sources).
pub fn validate_repo(r: &RepoSpec) -> Result<()> {
    crate::names::check("mirror name", &r.name)?;
    if r.suites.is_empty() {
        bail!("no suites");
    }
    for s in &r.suites {
        // Suites may be paths like `bookworm/updates` in old layouts, never escape.
        if s.split('/').any(|c| !crate::names::is_safe(c)) {
            bail!("bad suite {s:?}: plain names, `/`-separated");
        }
    }
    for (what, list) in [
        ("component", &r.components),
        ("architecture", &r.architectures),
        ("language", &r.translations),
    ] {
        for w in list {
            crate::names::check(what, w)?;
        }
    }
    if r.keyring.is_empty() {
        bail!("no keyring: name the keyring file(s) that sign this repository");
    }
    Ok(())
}

/// `http://host/debian-security/` → `debian-security`.
pub fn name_from_url(url: &RepoUrl) -> String {
    let s = url.to_string();
    let rest = s.split_once("://").map_or(s.as_str(), |(_, r)| r);
    let mut parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    if !url.is_http() {
        return parts.pop().unwrap_or("local").to_string();
    }
    let host = parts.first().copied().unwrap_or("mirror");
    parts
        .get(1..)
        .and_then(|p| p.last().copied())
        .unwrap_or(host)
        .to_string()
}

/// Reads the host's apt sources below `root` (normally `/`): deb822
/// `sources.list.d/*.sources`, one-line `sources.list` and `*.list`.
/// Enabled `deb` entries are grouped per URL into repositories.
pub fn host_repos(root: &Path) -> Result<Vec<RepoSpec>> {
    let etc = root.join("etc/apt");
    let mut entries: Vec<(PathBuf, SourceEntry)> = Vec::new();
    let list = etc.join("sources.list");
    if list.exists() {
        let text =
            fs_err::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
        for e in
            parse_one_line_sources(&text).with_context(|| format!("parsing {}", list.display()))?
        {
            entries.push((list.clone(), e));
        }
    }
    let dir = etc.join("sources.list.d");
    if dir.is_dir() {
        let mut files: Vec<PathBuf> = fs_err::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "sources" && ext != "list" {
                continue;
            }
            let text =
                fs_err::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            let parsed = if ext == "sources" {
                parse_deb822_sources(&text)
            } else {
                parse_one_line_sources(&text)
            };
            for e in parsed.with_context(|| format!("parsing {}", f.display()))? {
                entries.push((f.clone(), e));
            }
        }
    }
    let default_keyrings = || -> Vec<PathBuf> {
        let mut v = Vec::new();
        let legacy = etc.join("trusted.gpg");
        if legacy.exists() {
            v.push(legacy);
        }
        if let Ok(rd) = fs_err::read_dir(etc.join("trusted.gpg.d")) {
            let mut ks: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("gpg" | "asc")))
                .collect();
            ks.sort();
            v.extend(ks);
        }
        v
    };
    let mut by_url: BTreeMap<RepoUrl, RepoSpec> = BTreeMap::new();
    for (file, e) in entries {
        if !e.enabled || !e.types.iter().any(|t| t == "deb") {
            continue;
        }
        let keyring = match &e.signed_by {
            Some(s) if s.contains("BEGIN PGP") => {
                bail!(
                    "{}:{}: inline Signed-By keys are not supported yet: put the key in a file",
                    file.display(),
                    e.line
                )
            }
            Some(s) => s
                .split([',', ' ', '\n'])
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from)
                .collect(),
            None => default_keyrings(),
        };
        for uri in &e.uris {
            let url =
                RepoUrl::parse(uri).with_context(|| format!("{}:{}", file.display(), e.line))?;
            let spec = by_url.entry(url.clone()).or_insert_with(|| RepoSpec {
                name: name_from_url(&url),
                url: url.clone(),
                suites: Vec::new(),
                components: Vec::new(),
                architectures: if e.architectures.is_empty() {
                    vec![crate::host::debian_arch().into()]
                } else {
                    e.architectures.clone()
                },
                keyring: Vec::new(),
                translations: vec!["en".into()],
            });
            for s in &e.suites {
                if !spec.suites.contains(s) {
                    spec.suites.push(s.clone());
                }
            }
            for c in &e.components {
                if !spec.components.contains(c) {
                    spec.components.push(c.clone());
                }
            }
            for k in &keyring {
                if !spec.keyring.contains(k) {
                    spec.keyring.push(k.clone());
                }
            }
        }
    }
    let repos: Vec<RepoSpec> = by_url.into_values().collect();
    if repos.is_empty() {
        bail!(
            "no enabled `deb` sources in {}: name a repository with --url or --config",
            etc.display()
        );
    }
    for r in &repos {
        validate_repo(r).with_context(|| format!("apt source {}", r.url))?;
    }
    Ok(repos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        assert_eq!(
            name_from_url(&RepoUrl::parse("http://m.invalid/debian").unwrap()),
            "debian"
        );
        assert_eq!(
            name_from_url(&RepoUrl::parse("http://m.invalid/debian-security/").unwrap()),
            "debian-security"
        );
        assert_eq!(
            name_from_url(&RepoUrl::parse("http://127.0.0.1:8080").unwrap()),
            "127.0.0.1:8080"
        );
        assert_eq!(
            name_from_url(&RepoUrl::parse("file:///srv/repo").unwrap()),
            "repo"
        );
    }

    #[test]
    fn strict_config() {
        let ok = "schema-version = 1\n[[repository]]\nurl = \"http://m.invalid/debian\"\nsuites = [\"bookworm\"]\nkeyring = [\"/k.gpg\"]\n[selection]\npackages = [\"bash\"]\n";
        let c = parse_config(ok).unwrap();
        assert_eq!(c.repos[0].name, "debian");
        assert_eq!(c.repos[0].components, ["main"]);
        assert!(c.selection.closure);
        let unknown = ok.replace("suites", "suits");
        let err = format!("{:#}", parse_config(&unknown).unwrap_err());
        assert!(
            err.contains("unknown field `suits`") && err.contains("line 4"),
            "{err}"
        );
        let v2 = ok.replace("schema-version = 1", "schema-version = 2");
        assert!(format!("{:#}", parse_config(&v2).unwrap_err()).contains("schema-version 2"));
        let bad_suite = ok.replace("\"bookworm\"", "\"../x\"");
        assert!(format!("{:#}", parse_config(&bad_suite).unwrap_err()).contains("bad suite"));
        let empty = ok.replace("packages = [\"bash\"]", "closure = true");
        assert!(format!("{:#}", parse_config(&empty).unwrap_err()).contains("selection is empty"));
    }

    #[test]
    fn host_sources_grouped_by_url() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc/apt/sources.list.d");
        fs_err::create_dir_all(&etc).unwrap();
        fs_err::write(
            etc.join("debian.sources"),
            "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n\
Types: deb\nURIs: http://m.invalid/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /k.gpg\n\n\
Types: deb-src\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        fs_err::write(
            d.path().join("etc/apt/sources.list"),
            "deb [signed-by=/k2.gpg] http://m.invalid/debian/ bookworm contrib\n",
        )
        .unwrap();
        fs_err::write(etc.join("off.list.disabled"), "garbage\n").unwrap();
        let repos = host_repos(d.path()).unwrap();
        assert_eq!(repos.len(), 2);
        assert_eq!(repos[0].name, "debian");
        assert_eq!(repos[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(repos[0].components, ["contrib", "main"]);
        assert_eq!(
            repos[0].keyring,
            [PathBuf::from("/k2.gpg"), PathBuf::from("/k.gpg")]
        );
        assert_eq!(repos[1].name, "debian-security");
    }

    /// A Debian 12 host mirrors trixie from where it gets bookworm (each
    /// suite with the codename changed), with the component a physical
    /// profile needs; a vendor's repository is left as it is.
    #[test]
    fn the_host_sources_widen_to_another_release() {
        let repo = |name: &str, suites: &[&str]| RepoSpec {
            name: name.into(),
            url: RepoUrl::parse(&format!("http://m.invalid/{name}")).unwrap(),
            suites: suites.iter().map(|s| s.to_string()).collect(),
            components: vec!["main".into()],
            architectures: vec!["amd64".into()],
            keyring: vec![PathBuf::from(if name.starts_with("debian") {
                "/usr/share/keyrings/debian-archive-keyring.gpg"
            } else {
                "/usr/share/keyrings/vendor.gpg"
            })],
            translations: vec!["en".into()],
        };
        let mut repos = vec![
            repo("vendor-stable", &["stable"]),
            repo("debian", &["bookworm", "bookworm-updates"]),
            repo("debian-security", &["bookworm-security"]),
            repo("vendor", &["nodistro"]),
            repo("docker", &["bookworm"]),
        ];
        // Debian's release, not a vendor's `stable` listed first.
        assert_eq!(host_release(&repos).as_deref(), Some("bookworm"));
        widen_host_repos(&mut repos, "trixie", &["non-free-firmware"]);
        assert_eq!(
            repos[1].suites,
            ["bookworm", "bookworm-updates", "trixie", "trixie-updates"]
        );
        assert_eq!(repos[2].suites, ["bookworm-security", "trixie-security"]);
        assert_eq!(repos[1].components, ["main", "non-free-firmware"]);
        // Vendors' repositories, whatever their suites are called: as they were.
        for v in [0, 3, 4] {
            assert_eq!(repos[v].components, ["main"], "{}", repos[v].name);
        }
        assert_eq!(repos[3].suites, ["nodistro"]);
        assert_eq!(repos[4].suites, ["bookworm"]);
        // The host's own release: the component only, once.
        widen_host_repos(&mut repos, "bookworm", &["non-free-firmware"]);
        assert_eq!(repos[1].suites.len(), 4);
        assert_eq!(repos[1].components, ["main", "non-free-firmware"]);
        assert_eq!(repos[4].components, ["main"]);
    }
}
