//! Fetching a suite's Release file and judging it by apt's rules: signature,
//! suite name, `Valid-Until`, `Date` not in the future, no replay.

use std::path::Path;

use anyhow::{Context, Result};
use cairn_debian::Release;
use cairn_debian::date::format_release_date;

use super::fetch::{FetchError, RetryPolicy, Transport, fetch_small, join_url};
use crate::trust::hash::sha256_hex;
use crate::trust::openpgp::{Keyring, verify_cleartext, verify_detached};

/// Release problems a caller may need to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "Release of {suite} expired on {until} (Valid-Until); the source is stale or replaying an old file"
    )]
    Expired { suite: String, until: String },
    #[error("Release of {suite} is dated {date}, in the future beyond the allowed clock skew")]
    FromFuture { suite: String, date: String },
    #[error(
        "Release of {suite} is dated {new}, older than the published one ({old}): refusing a replayed or rolled-back archive"
    )]
    Replay {
        suite: String,
        new: String,
        old: String,
    },
    #[error(
        "Release at dists/{suite} names itself Suite {found_suite:?} / Codename {found_codename:?}"
    )]
    WrongSuite {
        suite: String,
        found_suite: String,
        found_codename: String,
    },
}

/// A verified Release and the raw signed files to publish.
pub struct SuiteRelease {
    pub suite: String,
    pub release: Release,
    /// Fingerprints of the good signatures.
    pub signers: Vec<String>,
    /// (file name, raw bytes) to publish: `InRelease`, or `Release` + `Release.gpg`.
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// SHA-256 of the signed file(s) as fetched.
    pub sha256: String,
}

impl SuiteRelease {
    pub fn signature_file(&self) -> &'static str {
        if self.files.len() == 1 {
            "InRelease"
        } else {
            "Release.gpg"
        }
    }
}

const RELEASE_LIMIT: u64 = 64 << 20;

/// Fetches `dists/<suite>/InRelease` (or `Release` + `Release.gpg` when
/// InRelease is missing) and verifies it. The Release parsed is the text the
/// verifier output.
pub fn fetch_release(
    t: &dyn Transport,
    url: &super::url::RepoUrl,
    suite: &str,
    keyring: &Keyring,
    tmp: &Path,
    retry: &RetryPolicy,
) -> Result<SuiteRelease> {
    let base = join_url(url, &format!("dists/{suite}"));
    let what = format!("{base}/InRelease");
    let (verified, files) = match fetch_small(t, &what, RELEASE_LIMIT, retry) {
        Ok(data) => {
            let v = verify_cleartext(&data, keyring, tmp)
                .with_context(|| format!("verifying the signature of {what}"))?;
            (v, vec![("InRelease", data)])
        }
        Err(FetchError::NotFound { .. }) => {
            let rel_url = format!("{base}/Release");
            let gpg_url = format!("{base}/Release.gpg");
            let data = fetch_small(t, &rel_url, RELEASE_LIMIT, retry)
                .with_context(|| format!("fetching {rel_url}"))?;
            let sig = match fetch_small(t, &gpg_url, 1 << 20, retry) {
                Ok(s) => s,
                Err(FetchError::NotFound { .. }) => {
                    return Err(crate::trust::VerificationFailed::new(format!(
                        "{base} is not signed: neither InRelease nor Release.gpg exists (apt refuses unsigned repositories)"
                    ))
                    .into())
                }
                Err(e) => return Err(e).with_context(|| format!("fetching {gpg_url}")),
            };
            let v = verify_detached(&data, &sig, keyring, tmp)
                .with_context(|| format!("verifying the signature of {rel_url}"))?;
            (v, vec![("Release", data), ("Release.gpg", sig)])
        }
        Err(e) => return Err(e).with_context(|| format!("fetching {what}")),
    };
    let text = String::from_utf8(verified.text)
        .with_context(|| format!("{what}: signed text is not UTF-8"))?;
    let release =
        Release::parse(&text).with_context(|| format!("parsing the signed Release of {base}"))?;
    let mut all = Vec::new();
    for (_, d) in &files {
        all.extend_from_slice(d);
    }
    Ok(SuiteRelease {
        suite: suite.into(),
        release,
        signers: verified.signers,
        files,
        sha256: sha256_hex(&all),
    })
}

/// The Release of a published suite directory, from verified bytes only —
/// the one reader of a published Release (sync's replay check and by-hash
/// links, verify): InRelease as apt prefers it, else Release + Release.gpg,
/// each checked against the keyring now. `None` when the directory holds
/// neither; an error when what it holds does not verify.
pub fn read_published(
    dir: &Path,
    keyring: &Keyring,
    tmp: &Path,
) -> Result<Option<(Release, Vec<String>)>> {
    let shown = |n: &str| dir.join(n).display().to_string();
    let v = match fs_err::read(dir.join("InRelease")) {
        Ok(data) => verify_cleartext(&data, keyring, tmp)
            .with_context(|| format!("verifying {}", shown("InRelease")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let data = match fs_err::read(dir.join("Release")) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("reading {}", shown("Release"))),
            };
            let sig = fs_err::read(dir.join("Release.gpg"))
                .with_context(|| format!("reading {}", shown("Release.gpg")))?;
            verify_detached(&data, &sig, keyring, tmp)
                .with_context(|| format!("verifying {}", shown("Release")))?
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", shown("InRelease"))),
    };
    let text = String::from_utf8(v.text).context("signed text is not UTF-8")?;
    let rel = Release::parse(&text)
        .with_context(|| format!("parsing the Release in {}", dir.display()))?;
    Ok(Some((rel, v.signers)))
}

/// apt's date and identity rules. `published` is the Date of the Release
/// already published for this suite, if any.
pub fn check_release(
    r: &SuiteRelease,
    now: i64,
    max_future: i64,
    published: Option<i64>,
) -> Result<(), crate::trust::VerificationFailed> {
    check_dates(r, now, max_future, published).map_err(crate::trust::VerificationFailed::because)
}

fn check_dates(
    r: &SuiteRelease,
    now: i64,
    max_future: i64,
    published: Option<i64>,
) -> Result<(), ReleaseError> {
    let rel = &r.release;
    let last = r.suite.rsplit('/').next().unwrap_or(&r.suite);
    let names = [rel.suite.as_deref(), rel.codename.as_deref()];
    if names.iter().any(Option::is_some)
        && !names.iter().flatten().any(|n| *n == r.suite || *n == last)
    {
        return Err(ReleaseError::WrongSuite {
            suite: r.suite.clone(),
            found_suite: rel.suite.clone().unwrap_or_default(),
            found_codename: rel.codename.clone().unwrap_or_default(),
        });
    }
    if let Some(until) = rel.valid_until
        && until < now
    {
        return Err(ReleaseError::Expired {
            suite: r.suite.clone(),
            until: format_release_date(until),
        });
    }
    if let Some(date) = rel.date {
        if date > now + max_future {
            return Err(ReleaseError::FromFuture {
                suite: r.suite.clone(),
                date: format_release_date(date),
            });
        }
        if let Some(old) = published
            && date < old
        {
            return Err(ReleaseError::Replay {
                suite: r.suite.clone(),
                new: format_release_date(date),
                old: format_release_date(old),
            });
        }
    }
    Ok(())
}
