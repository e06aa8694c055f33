//! A boot disk as cairn sees it, parsed once and carried whole: an image
//! by its `ImageId` (`PROFILE/VERSION`: its directory, its menu entries,
//! the GRUB selectors that boot it), a `BootPartition` (its images, its
//! GRUB environment block, what the disk records of itself), and the
//! `BootCounter` kept in that block (trial, tries left, good, bad, a
//! one-shot next entry). Pull, status, reboot, apply-live, the disk scan
//! and the menu read the disk through it. Whoever can write the partition
//! wrote what is read here: names pass the name rule, files are regular
//! files of bounded size, or they are not taken.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::disk::config::DiskConfig;
use super::env;
use crate::fsutil::small_file;

/// The GRUB environment block, on a boot partition.
pub const GRUBENV: &str = "boot/grub/grubenv";
/// The images, on a boot partition: `images/PROFILE/VERSION/`.
pub const IMAGES: &str = "images";

/// The boot counting variables of the GRUB environment block (the menu's
/// script sets and reads the same names).
pub mod var {
    /// The entry that last booted well (its health check passed).
    pub const GOOD: &str = "cairn_good";
    /// The default on trial, and the tries it has left.
    pub const TRIAL: &str = "cairn_trial";
    pub const LEFT: &str = "cairn_left";
    /// An entry the initramfs refused at its last boot.
    pub const BAD: &str = "cairn_bad";
    /// GRUB's own one-shot choice (`grub-reboot`, `cairn reboot`).
    pub const NEXT: &str = "next_entry";
}

/// An image on a boot disk or in a store: profile and version, both by
/// the name rule. Parsed once from `P/V` (or a directory `/images/P/V`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageId {
    profile: String,
    version: String,
}

impl ImageId {
    pub fn new(profile: &str, version: &str) -> Result<ImageId> {
        crate::names::check("profile", profile)?;
        crate::names::check("version", version)?;
        Ok(ImageId {
            profile: profile.to_string(),
            version: version.to_string(),
        })
    }

    /// `PROFILE/VERSION`.
    pub fn parse(s: &str) -> Result<ImageId> {
        let (p, v) = s
            .split_once('/')
            .with_context(|| format!("{s:?}: expected PROFILE/VERSION"))?;
        ImageId::new(p, v)
    }

    /// The image of a directory `/images/PROFILE/VERSION`, if it is one.
    pub fn from_dir(dir: &str) -> Option<ImageId> {
        let rest = dir.strip_prefix("/images/")?;
        let (p, v) = rest.split_once('/')?;
        ImageId::new(p, v).ok()
    }

    pub fn profile(&self) -> &str {
        &self.profile
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Its directory on a boot partition, as GRUB names it: `/images/P/V`.
    pub fn dir(&self) -> String {
        format!("/{IMAGES}/{}/{}", self.profile, self.version)
    }

    /// Its directory below a partition's (or a store's) root.
    pub fn dir_in(&self, root: &Path) -> PathBuf {
        root.join(IMAGES).join(&self.profile).join(&self.version)
    }

    /// The id of its entry in a signed menu (`P-V`, `P-V-ram`).
    pub fn entry_id(&self, ram: bool) -> String {
        super::menu::entry_id(&self.profile, &self.version, ram)
    }

    /// The selector of the entry the menu's "found now" loop makes for it.
    pub fn found_selector(&self, ram: bool) -> String {
        super::menu::found_selector(&self.dir(), ram)
    }

    /// Whether GRUB selector `sel` (an entry id, a `rollback>` one, a
    /// `found>` directory, on disk or in RAM) boots this image.
    pub fn is_selected_by(&self, sel: &str) -> bool {
        [false, true].iter().any(|&ram| {
            sel == self.found_selector(ram)
                || sel.strip_prefix("rollback>").unwrap_or(sel) == self.entry_id(ram)
        })
    }
}

/// Written and read as `PROFILE/VERSION` (a manifest's parent), checked
/// when read.
impl serde::Serialize for ImageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ImageId, D::Error> {
        let s = String::deserialize(d)?;
        ImageId::parse(&s).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.profile, self.version)
    }
}

/// Boot counting, as the GRUB environment block holds it (empty values are
/// no value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootCounter {
    pub good: Option<String>,
    pub trial: Option<String>,
    pub left: Option<u32>,
    pub bad: Option<String>,
    pub next: Option<String>,
}

impl BootCounter {
    pub fn from_vars(vars: &[(String, String)]) -> BootCounter {
        let get = |k: &str| {
            vars.iter()
                .find(|(n, v)| n == k && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        BootCounter {
            good: get(var::GOOD),
            trial: get(var::TRIAL),
            left: get(var::LEFT).and_then(|l| l.parse().ok()),
            bad: get(var::BAD),
            next: get(var::NEXT),
        }
    }

    /// The trial entry booted well: it stays the default.
    pub fn trial_passed(&self) -> bool {
        self.trial.is_some() && self.trial == self.good
    }

    /// What GRUB boots next, as the menu decides: a one-shot next entry, a
    /// trial with tries left (or one that passed), else the last good
    /// (None: the signed menu's own default).
    pub fn next_boot(&self) -> Option<String> {
        self.next
            .clone()
            .or_else(|| match (&self.trial, self.left) {
                (Some(t), _) if self.trial_passed() => Some(t.clone()),
                (Some(t), Some(n)) if n > 0 => Some(t.clone()),
                (Some(_), _) => self.good.clone(),
                (None, _) => None,
            })
    }

    /// Whether any of the selectors the block holds (good, trial, the next
    /// entry) boots `id`: an image the disk must keep.
    pub fn protects(&self, id: &ImageId) -> bool {
        [&self.good, &self.trial, &self.next]
            .into_iter()
            .flatten()
            .any(|s| id.is_selected_by(s))
    }
}

/// A directory below `images/`: its names (a name that is not UTF-8
/// shown with replacement characters, so it never passes the name rule)
/// and where it is.
#[derive(Debug, Clone)]
pub struct ImageDir {
    pub profile: String,
    pub version: String,
    pub path: PathBuf,
}

/// A boot partition's lock, held until dropped.
pub struct RootLock(#[allow(dead_code)] std::fs::File);

/// A boot partition's tree (mounted, or a directory standing in for one).
#[derive(Debug, Clone)]
pub struct BootPartition {
    root: PathBuf,
}

impl BootPartition {
    pub fn new(root: &Path) -> BootPartition {
        BootPartition {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every `images/P/V` directory on it (not a link, not a stray file),
    /// sorted: what `images` takes, and what a scan names when it leaves
    /// one out. No `images/` is none; a directory that cannot be listed is
    /// an error (never taken for an empty one).
    pub fn image_dirs(&self) -> Result<Vec<ImageDir>> {
        fn dirs(d: &Path) -> Result<Vec<(String, PathBuf)>> {
            let mut out = Vec::new();
            for e in std::fs::read_dir(d).with_context(|| format!("listing {}", d.display()))? {
                let e = e.with_context(|| format!("listing {}", d.display()))?;
                if e.file_type()
                    .with_context(|| format!("{}", e.path().display()))?
                    .is_dir()
                {
                    out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
                }
            }
            Ok(out)
        }
        let top = self.root.join(IMAGES);
        if std::fs::symlink_metadata(&top).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (p, pp) in dirs(&top)? {
            for (v, path) in dirs(&pp)? {
                out.push(ImageDir {
                    profile: p.clone(),
                    version: v,
                    path,
                });
            }
        }
        out.sort_by(|a, b| (&a.profile, &a.version).cmp(&(&b.profile, &b.version)));
        Ok(out)
    }

    /// The images on it: `images/P/V` directories whose names pass the
    /// name rule (a staging `.pull-V` does not), sorted.
    pub fn images(&self) -> Result<Vec<ImageId>> {
        Ok(self
            .image_dirs()?
            .into_iter()
            .filter(|d| d.path.file_name().and_then(|n| n.to_str()) == Some(d.version.as_str()))
            .filter_map(|d| ImageId::new(&d.profile, &d.version).ok())
            .collect())
    }

    /// The images of one profile, oldest first.
    pub fn images_of(&self, profile: &str) -> Result<Vec<ImageId>> {
        Ok(self
            .images()?
            .into_iter()
            .filter(|i| i.profile() == profile)
            .collect())
    }

    pub fn image_dir(&self, id: &ImageId) -> PathBuf {
        id.dir_in(&self.root)
    }

    pub fn grubenv(&self) -> PathBuf {
        self.root.join(GRUBENV)
    }

    /// The GRUB environment block's variables (an error when it is not one).
    pub fn vars(&self) -> Result<Vec<(String, String)>> {
        let p = self.grubenv();
        let data = small_file(&p, env::SIZE as u64)
            .with_context(|| format!("{}: no GRUB environment block", p.display()))?;
        let vars = env::parse(&data).with_context(|| p.display().to_string())?;
        // GRUB takes the last of a name set twice, a reader the first: a
        // block cairn or GRUB wrote never has one twice.
        let mut seen = std::collections::BTreeSet::new();
        if let Some((k, _)) = vars.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            bail!(
                "{}: {k} is set twice: not a block GRUB or cairn wrote",
                p.display()
            );
        }
        Ok(vars)
    }

    /// Boot counting as the block holds it.
    pub fn counter(&self) -> Result<BootCounter> {
        Ok(BootCounter::from_vars(&self.vars()?))
    }

    /// What the disk records about itself (`boot/cairn.json`), checked.
    pub fn config(&self) -> Result<DiskConfig> {
        DiskConfig::read(&self.root)
    }

    /// Boots a new default gets: the disk's own setting (bounded), else 3.
    pub fn tries(&self) -> u32 {
        self.config().map_or(3, |c| c.menu.tries)
    }

    /// Holds the partition locked (flock on its root directory) while one
    /// cairn writes it: two pulls, or a pull and a kexec's counted try,
    /// never interleave. Waits up to a minute for another holder.
    pub fn lock(&self) -> Result<RootLock> {
        self.lock_within(Duration::from_secs(60))
    }

    pub fn lock_within(&self, wait: Duration) -> Result<RootLock> {
        let root = &self.root;
        let f = std::fs::File::open(root)
            .with_context(|| format!("opening {} to lock it", root.display()))?;
        let t0 = std::time::Instant::now();
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(RootLock(f)),
                Err(std::fs::TryLockError::WouldBlock) if t0.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(std::fs::TryLockError::WouldBlock) => bail!(
                    "{}: another cairn has been writing this boot partition for {}s (a pull?): try again later",
                    root.display(),
                    wait.as_secs()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", root.display()));
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn an_image_is_parsed_once_and_names_its_selectors() {
        let id = ImageId::parse("web/20261201T000000Z").unwrap();
        assert_eq!(id.to_string(), "web/20261201T000000Z");
        assert_eq!(id.dir(), "/images/web/20261201T000000Z");
        assert_eq!(ImageId::from_dir(&id.dir()), Some(id.clone()));
        for sel in [
            "web-20261201T000000Z",
            "web-20261201T000000Z-ram",
            "rollback>web-20261201T000000Z",
            "found>/images/web/20261201T000000Z",
            "found>/images/web/20261201T000000Z-ram",
        ] {
            assert!(id.is_selected_by(sel), "{sel}");
        }
        for sel in ["web-2026", "found>/images/web/2", "other-20261201T000000Z"] {
            assert!(!id.is_selected_by(sel), "{sel}");
        }
        for bad in ["web", "../x/1", "web/1/2", "web/", "/images/web/1 x"] {
            assert!(ImageId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ImageId::from_dir("/images/../1"), None);
    }

    #[test]
    fn the_counter_says_what_boots_next() {
        let v = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = BootCounter::from_vars(&v(&[
            ("cairn_trial", "a"),
            ("cairn_left", "2"),
            ("cairn_good", "b"),
        ]));
        assert_eq!(c.next_boot().as_deref(), Some("a"));
        let c = BootCounter::from_vars(&v(&[
            ("cairn_trial", "a"),
            ("cairn_left", "0"),
            ("cairn_good", "b"),
        ]));
        assert_eq!(c.next_boot().as_deref(), Some("b"));
        let c = BootCounter::from_vars(&v(&[
            ("cairn_trial", "a"),
            ("cairn_left", "0"),
            ("cairn_good", "a"),
        ]));
        assert!(c.trial_passed());
        assert_eq!(c.next_boot().as_deref(), Some("a"));
        let c = BootCounter::from_vars(&v(&[
            ("next_entry", "n"),
            ("cairn_trial", "a"),
            ("cairn_left", "1"),
        ]));
        assert_eq!(c.next_boot().as_deref(), Some("n"));
        let id = ImageId::parse("w/1").unwrap();
        let c = BootCounter::from_vars(&v(&[("cairn_good", "found>/images/w/1")]));
        assert!(c.protects(&id));
        assert!(!BootCounter::default().protects(&id));
    }

    /// One walk of `images/P/V`: stray files, links and names that fail
    /// the rule are no images (another walk once failed on a stray file).
    #[test]
    fn the_images_on_a_partition_are_its_named_directories() {
        let d = tempfile::tempdir().unwrap();
        let b = BootPartition::new(d.path());
        assert!(b.images().unwrap().is_empty());
        for dir in [
            "images/web/2",
            "images/web/1",
            "images/db/1",
            "images/web/bad name",
        ] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        std::fs::write(d.path().join("images/stray"), b"x").unwrap();
        std::fs::write(d.path().join("images/web/3"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("images/web/1"), d.path().join("images/web/4"))
            .unwrap();
        let names: Vec<String> = b
            .images()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["db/1", "web/1", "web/2"]);
        assert_eq!(b.images_of("web").unwrap().len(), 2);
        // What cannot be listed is an error, never taken for no images.
        let e = BootPartition::new(&d.path().join("images/web/3"))
            .images()
            .unwrap_err();
        assert!(format!("{e:#}").contains("listing"), "{e:#}");
        // A name set twice: GRUB and a reader would disagree; refused.
        std::fs::create_dir_all(d.path().join("boot/grub")).unwrap();
        std::fs::write(
            b.grubenv(),
            crate::boot::env::render(&[
                ("cairn_good".into(), "web-1".into()),
                ("cairn_good".into(), "web-2".into()),
            ])
            .unwrap(),
        )
        .unwrap();
        assert!(format!("{:#}", b.vars().unwrap_err()).contains("cairn_good is set twice"));
        assert!(b.counter().is_err());
        // tries: typed, bounded, a regular file only.
        assert_eq!(b.tries(), 3);
        std::fs::create_dir_all(d.path().join("boot")).unwrap();
        let cfg = d.path().join(super::super::disk::config::PATH);
        std::fs::write(&cfg, disk_config(5)).unwrap();
        assert_eq!(b.tries(), 5);
        assert_eq!(b.config().unwrap().default_entry, "web-2");
        std::fs::write(&cfg, disk_config(500)).unwrap();
        assert_eq!(b.tries(), 3);
        assert!(format!("{:#}", b.config().unwrap_err()).contains("tries 500"));
        // Only the disk's own record, whole: a partial one is not guessed at.
        std::fs::write(&cfg, r#"{"menu":{"tries":5}}"#).unwrap();
        assert_eq!(b.tries(), 3);
    }

    /// A disk's `boot/cairn.json` giving new defaults `tries` boots.
    pub(crate) fn disk_config(tries: u32) -> String {
        serde_json::json!({
            "menu": {"timeout": 5, "tries": tries, "default-profile": null},
            "data-label": null,
            "default-entry": "web-2",
            "signed-by": "0123",
            "boot-uuid": "1234-5678",
        })
        .to_string()
    }
}
