//! A profile's signed index: what the build host publishes so machines can
//! tell the newest image, fetch exactly its files, and refuse an index that
//! is older than one they saw (replay), past its expiry (freeze), or signed
//! by another key.
//!
//! `<store>/images/<profile>/index.json` and `index.json.sig` (the store
//! key's detached signature over exactly those bytes).

use fs_err as fs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::image::{self, MANIFEST};
use crate::trust::hash::sha256_hex;
use crate::trust::keys::{self, SigningKey};
use crate::trust::openpgp::{Keyring, verify_detached};

pub const INDEX: &str = "index.json";
/// The share of machines a version reaches when nothing else is said.
pub const FULL_ROLLOUT: u8 = 100;
/// Larger is not an index (a machine reads it into memory).
pub const INDEX_LIMIT: u64 = 4 << 20;
/// How far in the future an index may be dated (clock skew).
const FUTURE_SKEW: i64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileRef {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IndexVersion {
    pub version: String,
    pub parent: Option<String>,
    pub built_at: i64,
    pub kernel: String,
    /// squashfs layers, lowest first.
    pub layers: Vec<String>,
    /// Percent of machines that take this version (by a stable hash of
    /// their id): a staged rollout.
    pub rollout: u8,
    /// Every file of the image directory but ISO files.
    pub files: BTreeMap<String, FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Index {
    pub schema_version: u32,
    pub profile: String,
    /// Grows with every publication: a machine refuses a smaller one than
    /// it has seen.
    pub serial: u64,
    pub generated_at: i64,
    /// After this a machine refuses the index (a frozen mirror is noticed).
    pub expires: i64,
    pub signed_by: String,
    /// Newest first.
    pub versions: Vec<IndexVersion>,
}

/// Where a profile's index is in a store (and on a web server, under the
/// published store's base URL).
pub fn index_path(store: &Path, profile: &str) -> PathBuf {
    image::images_dir(store).join(profile).join(INDEX)
}

/// The URL path of a profile's index below a base URL.
pub fn index_rel(profile: &str) -> String {
    format!("images/{profile}/{INDEX}")
}

/// How to publish.
pub struct PublishOptions {
    /// Seconds the index stays valid.
    pub valid_for: i64,
    /// Rollout percentages by version (the rest: as last published, else 100).
    pub rollout: BTreeMap<String, u8>,
    pub now: i64,
}

/// Writes and signs the index of `profile` from the images in the store:
/// bootable images only, each file's size and SHA-256 (ISO files left out:
/// machines boot from the image's own files).
pub fn publish(store: &Path, key: &SigningKey, profile: &str, o: &PublishOptions) -> Result<Index> {
    crate::names::check("profile", profile)?;
    if !(60..=366 * 24 * 3600).contains(&o.valid_for) {
        bail!("an index is valid for a minute to a year");
    }
    let path = index_path(store, profile);
    // The last publication: its serial is the floor, its rollouts stay.
    // One that cannot be read is an error, never taken for none (every
    // version would go to every machine, a halted one too).
    let previous: Option<Index> = match fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).with_context(|| {
            format!("{}: not an index (remove it to start over)", path.display())
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let mut versions = Vec::new();
    let mut images: Vec<_> = image::list(store)?
        .into_iter()
        .filter(|e| e.profile == profile)
        .collect();
    images.sort_by(|a, b| b.version.cmp(&a.version));
    for e in &images {
        let m = image::read_manifest(&e.path)?;
        if !m.bootable || !e.path.join(image::BOOT_CFG).is_file() {
            continue;
        }
        let mut files = BTreeMap::new();
        for f in fs::read_dir(&e.path)? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if !f.file_type()?.is_file() || name.ends_with(".iso") || name.ends_with(".iso.sig") {
                continue;
            }
            crate::names::check("file name", &name)?;
            let (size, sha256) = crate::trust::hash::sha256_file(&f.path())?;
            files.insert(name, FileRef { size, sha256 });
        }
        for must in [MANIFEST, "SHA256SUMS", "SHA256SUMS.sig", image::BOOT_CFG] {
            if !files.contains_key(must) {
                bail!("{}: {must} missing: not published", e.path.display());
            }
        }
        // What machines fetch is the web server's workers' to read (an
        // image made by an older cairn had its hash trees 0600).
        crate::fsutil::make_public(&e.path)?;
        let rollout = o
            .rollout
            .get(&m.version)
            .copied()
            .or_else(|| {
                previous.as_ref().and_then(|p| {
                    p.versions
                        .iter()
                        .find(|v| v.version == m.version)
                        .map(|v| v.rollout)
                })
            })
            .unwrap_or(FULL_ROLLOUT);
        versions.push(IndexVersion {
            version: m.version.clone(),
            parent: m.parent.as_ref().map(ToString::to_string),
            built_at: m.built_at,
            kernel: m.kernel.clone(),
            layers: m.layers.clone(),
            rollout,
            files,
        });
    }
    for v in o.rollout.keys() {
        if !versions.iter().any(|x| &x.version == v) {
            bail!("--rollout {v}: no bootable image {profile}/{v} in the store");
        }
    }
    if versions.is_empty() {
        bail!("no bootable image of {profile} in the store to publish");
    }
    let serial = previous
        .as_ref()
        .map_or(0, |p| p.serial + 1)
        .max(o.now.max(0) as u64);
    let index = Index {
        schema_version: 1,
        profile: profile.to_string(),
        serial,
        generated_at: o.now,
        expires: o.now + o.valid_for,
        signed_by: key.fingerprint.clone(),
        versions,
    };
    // Written beside, signed, then both renamed: a reader sees the old pair
    // or the new pair (the signature last, so a new index never meets an
    // old signature for long; a mismatch is refused anyway).
    let dir = path.parent().context("index path")?;
    let tmp = dir.join(format!(".{INDEX}.new"));
    fs::write(&tmp, serde_json::to_vec_pretty(&index)?)?;
    crate::fsutil::set_mode(&tmp, crate::fsutil::PUBLIC_FILE)?;
    let sig = keys::sign_file(key, &tmp)?;
    fs::rename(&tmp, &path)?;
    fs::rename(&sig, dir.join(format!("{INDEX}.sig")))?;
    crate::fsutil::sync_dir(dir)?;
    Ok(index)
}

/// What a machine remembers of the last index it accepted for a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Seen {
    pub serial: u64,
    pub sha256: String,
    pub generated_at: i64,
}

/// Checks fetched index bytes: the signature by `key` over exactly these
/// bytes, the profile, the dates, and that it is not older than `seen`.
/// A refusal of the signature, the profile, the dates or the serial is a
/// failed verification (`trust::VerificationFailed`): exit code 3.
/// Returns the index and what to remember of it.
macro_rules! refuse {
    ($($t:tt)*) => {
        return Err(crate::trust::VerificationFailed::new(format!($($t)*)).into())
    };
}

pub fn check(
    data: &[u8],
    sig: &[u8],
    key: &Path,
    profile: &str,
    seen: Option<&Seen>,
    now: i64,
    work: &Path,
) -> Result<(Index, Seen)> {
    verify_detached(data, sig, &Keyring::new(vec![key.to_path_buf()]), work)
        .context("index.json: signature missing, bad, or by another key")?;
    let index: Index = serde_json::from_slice(data).context("index.json: not a cairn index")?;
    if index.schema_version != 1 {
        refuse!(
            "index.json: schema-version {} (this cairn reads 1)",
            index.schema_version
        );
    }
    if index.profile != profile {
        refuse!(
            "index.json is the index of {}, not of {profile}",
            index.profile
        );
    }
    if now >= index.expires {
        refuse!(
            "index.json expired at {} (now {now}): refusing a stale index (is the build host publishing?)",
            index.expires
        );
    }
    if index.generated_at > now + FUTURE_SKEW {
        refuse!(
            "index.json is dated {}, more than a day ahead of this machine's clock ({now})",
            index.generated_at
        );
    }
    let sha256 = sha256_hex(data);
    if let Some(s) = seen {
        if index.serial < s.serial {
            refuse!(
                "index.json has serial {}, older than serial {} already seen: refusing a replayed index",
                index.serial,
                s.serial
            );
        }
        if index.serial == s.serial && sha256 != s.sha256 {
            refuse!(
                "index.json has serial {} with other contents than the one seen: refusing it",
                index.serial
            );
        }
    }
    for v in &index.versions {
        crate::names::check("version", &v.version)?;
        if v.rollout > 100 {
            bail!("{}: rollout {}% is over 100", v.version, v.rollout);
        }
        for (name, f) in &v.files {
            crate::names::check("file name", name)?;
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                bail!("{}/{name}: not a SHA-256 in lower-case hex", v.version);
            }
            if f.size > MAX_FILE {
                bail!(
                    "{}/{name}: {} bytes is more than a boot partition holds",
                    v.version,
                    f.size
                );
            }
        }
        for must in [MANIFEST, "SHA256SUMS", "SHA256SUMS.sig", image::BOOT_CFG] {
            if !v.files.contains_key(must) {
                bail!("{}: the index lists no {must}", v.version);
            }
        }
    }
    let remember = Seen {
        serial: index.serial,
        sha256,
        generated_at: index.generated_at,
    };
    Ok((index, remember))
}

/// No file of an image is larger (a signed index saying otherwise is wrong).
pub const MAX_FILE: u64 = 1 << 40;

/// Whether machine `id` takes `version` of `profile` at `percent`: a stable
/// hash of the three, so a machine's place in a rollout does not change
/// between runs and differs between versions.
pub fn in_rollout(id: &str, profile: &str, version: &str, percent: u8) -> bool {
    if percent >= 100 {
        return true;
    }
    let h = crate::trust::hash::sha256_hex(format!("{id}\n{profile}\n{version}").as_bytes());
    let bucket = u16::from_str_radix(&h[..4], 16).unwrap_or(0) % 100;
    bucket < u16::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_is_stable_and_proportional() {
        let ids: Vec<String> = (0..2000).map(|i| format!("machine-{i}")).collect();
        let taken = ids.iter().filter(|i| in_rollout(i, "web", "2", 25)).count();
        assert!((400..600).contains(&taken), "{taken} of 2000 at 25%");
        for i in &ids {
            assert_eq!(in_rollout(i, "web", "2", 25), in_rollout(i, "web", "2", 25));
            // A machine in at 25% is in at 50% too: widening keeps it.
            if in_rollout(i, "web", "2", 25) {
                assert!(in_rollout(i, "web", "2", 50));
            }
        }
        assert!(ids.iter().all(|i| in_rollout(i, "web", "2", 100)));
        assert!(!ids.iter().any(|i| in_rollout(i, "web", "2", 0)));
    }
}
