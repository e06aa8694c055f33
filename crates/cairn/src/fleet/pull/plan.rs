//! What a pull is to do, decided from the signed index and what the boot
//! disk holds — no I/O here, so every decision is tested as it is: which
//! version to take (or why none), and which of its files are on the disk
//! already and which must cross the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::Outcome;
use crate::boot::model::ImageId;
use crate::fleet::index::{self, FileRef, Index, IndexVersion};

/// The version a pull takes, or why it takes none.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice<'a> {
    /// Nothing newer than what runs (`UpToDate`), or this machine is not
    /// in the rollout of what is newer (`HeldBack`).
    Stay(Outcome),
    Take(&'a IndexVersion),
}

/// The version to take: the newest one newer than `running` whose rollout
/// has `machine_id`; one already on the disk (`on_disk`) that is not the
/// newest is held back (the newest waits for its rollout).
pub fn choose<'a>(
    idx: &'a Index,
    profile: &str,
    running: Option<&str>,
    machine_id: &str,
    on_disk: &[ImageId],
) -> Choice<'a> {
    let newer: Vec<&IndexVersion> = idx
        .versions
        .iter()
        .filter(|v| running.is_none_or(|r| v.version.as_str() > r))
        .collect();
    let Some(target) = newer
        .iter()
        .find(|v| index::in_rollout(machine_id, profile, &v.version, v.rollout))
        .copied()
    else {
        return Choice::Stay(if newer.is_empty() {
            Outcome::UpToDate
        } else {
            Outcome::HeldBack
        });
    };
    let newest = idx.versions.first().map(|v| v.version.as_str());
    let there = on_disk
        .iter()
        .any(|i| i.profile() == profile && i.version() == target.version);
    if there && newest != Some(target.version.as_str()) {
        return Choice::Stay(Outcome::HeldBack);
    }
    Choice::Take(target)
}

/// The files of the version to take, by where they come from.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Files {
    /// Fetched by an earlier (killed) pull, in cairn's own directory.
    pub have: Vec<(String, FileRef)>,
    /// On the disk already, in another image (a delta's parent layers).
    pub reuse: Vec<(String, PathBuf, u64)>,
    /// To fetch.
    pub fetch: Vec<(String, FileRef)>,
}

impl Files {
    /// Bytes to fetch.
    pub fn need(&self) -> u64 {
        self.fetch
            .iter()
            .fold(0u64, |a, (_, f)| a.saturating_add(f.size))
    }
}

/// Where each file of `target` comes from: `fetched` are the hashes cairn
/// fetched before and checked now, `present` files on the disk checked by
/// hash (hash → path).
pub fn files(
    target: &IndexVersion,
    fetched: &BTreeSet<String>,
    present: &BTreeMap<String, PathBuf>,
) -> Files {
    let mut out = Files::default();
    for (name, f) in &target.files {
        if fetched.contains(&f.sha256) {
            out.have.push((name.clone(), f.clone()));
        } else if let Some(p) = present.get(&f.sha256) {
            out.reuse.push((name.clone(), p.clone(), f.size));
        } else {
            out.fetch.push((name.clone(), f.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: &str, rollout: u8, files: &[(&str, &str)]) -> IndexVersion {
        IndexVersion {
            version: version.into(),
            parent: None,
            built_at: 0,
            kernel: "k".into(),
            layers: Vec::new(),
            rollout,
            files: files
                .iter()
                .map(|(n, h)| {
                    (
                        n.to_string(),
                        FileRef {
                            size: 10,
                            sha256: h.to_string(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn idx(versions: Vec<IndexVersion>) -> Index {
        Index {
            schema_version: 1,
            profile: "web".into(),
            serial: 1,
            generated_at: 0,
            expires: 1,
            signed_by: "F".into(),
            versions,
        }
    }

    #[test]
    fn the_newest_version_in_this_machines_rollout_is_taken() {
        let i = idx(vec![v("3", 100, &[]), v("2", 100, &[]), v("1", 100, &[])]);
        let on = |v: &str| vec![ImageId::new("web", v).unwrap()];
        assert!(
            matches!(choose(&i, "web", Some("1"), "m", &[]), Choice::Take(t) if t.version == "3")
        );
        assert_eq!(
            choose(&i, "web", Some("3"), "m", &[]),
            Choice::Stay(Outcome::UpToDate)
        );
        // Nobody takes a version at 0 %; the one before it is taken.
        let i = idx(vec![v("3", 0, &[]), v("2", 100, &[])]);
        assert!(
            matches!(choose(&i, "web", Some("1"), "m", &[]), Choice::Take(t) if t.version == "2")
        );
        // Already on the disk and not the newest: held back.
        assert_eq!(
            choose(&i, "web", Some("1"), "m", &on("2")),
            Choice::Stay(Outcome::HeldBack)
        );
        assert_eq!(
            choose(&i, "web", Some("2"), "m", &[]),
            Choice::Stay(Outcome::HeldBack)
        );
        // The newest, on the disk: taken (made the default again).
        let i = idx(vec![v("2", 100, &[])]);
        assert!(matches!(
            choose(&i, "web", None, "m", &on("2")),
            Choice::Take(_)
        ));
    }

    #[test]
    fn only_what_the_disk_lacks_crosses_the_wire() {
        let t = v(
            "2",
            100,
            &[
                ("a.squashfs", "ha"),
                ("b.squashfs", "hb"),
                ("vmlinuz", "hk"),
            ],
        );
        let fetched: BTreeSet<String> = ["hk".to_string()].into();
        let present: BTreeMap<String, PathBuf> =
            [("ha".to_string(), PathBuf::from("/images/web/1/a.squashfs"))].into();
        let f = files(&t, &fetched, &present);
        assert_eq!(f.have.len(), 1);
        assert_eq!(
            f.reuse,
            [(
                "a.squashfs".to_string(),
                PathBuf::from("/images/web/1/a.squashfs"),
                10
            )]
        );
        assert_eq!(f.fetch.len(), 1);
        assert_eq!(f.fetch[0].0, "b.squashfs");
        assert_eq!(f.need(), 10);
    }
}
