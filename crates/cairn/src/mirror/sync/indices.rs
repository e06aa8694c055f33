//! Step 3 of a sync: the indices a client needs, fetched (or reused from
//! the published generation) into the new generation and checked against
//! the verified Release; the Packages files parsed.

use fs_err as fs;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_debian::date::format_release_date;
use cairn_debian::{Package, read_packages};
use sha2::{Digest, Sha256};

use super::{LeftOut, Repo, SuiteReport, SyncOptions};
use crate::mirror::config::RepoSpec;
use crate::mirror::fetch::{Counter, Expect, FetchError, fetch_verified, join_url, partial_for};
use crate::mirror::release::SuiteRelease;
use crate::parallel;
use crate::trust::hash::{hex, sha256_file};

/// Every packages of every suite of every repository, and which repository
/// each came from.
pub(super) struct Indices {
    pub reports: Vec<Vec<SuiteReport>>,
    pub packages: Vec<Package>,
    pub origin: Vec<usize>,
    /// The release each package comes from, as an index into `families`.
    pub family: Vec<usize>,
    pub families: Vec<String>,
    /// Per family: only vendors' repositories carry it (it serves every
    /// release: `closure::select_families`).
    pub shared: Vec<bool>,
}

/// The indices of every suite of `repos` into `<generation>.tmp`.
pub(super) fn fetch_all(
    repos: &[Repo],
    generation: &str,
    opts: &SyncOptions,
    counter: &Counter,
) -> Result<Indices> {
    let mut out = Indices {
        reports: Vec::new(),
        packages: Vec::new(),
        origin: Vec::new(),
        family: Vec::new(),
        families: Vec::new(),
        shared: Vec::new(),
    };
    for (ri, repo) in repos.iter().enumerate() {
        let gen_tmp = repo.paths.generations().join(format!("{generation}.tmp"));
        fs::create_dir_all(&gen_tmp).with_context(|| format!("creating {}", gen_tmp.display()))?;
        let mut reports = Vec::new();
        for rel in &repo.releases {
            let got = fetch_indices(repo, rel, &gen_tmp, opts, counter)
                .with_context(|| format!("mirror {}: indices of {}", repo.spec.name, rel.suite))?;
            let f = crate::mirror::config::suite_family(&rel.suite).to_string();
            let fi = match out.families.iter().position(|x| *x == f) {
                Some(i) => i,
                None => {
                    out.families.push(f);
                    out.shared.push(true);
                    out.families.len() - 1
                }
            };
            out.shared[fi] &= !repo.spec.is_debian_archive();
            for p in got.packages {
                out.packages.push(p);
                out.origin.push(ri);
                out.family.push(fi);
            }
            reports.push(SuiteReport {
                suite: rel.suite.clone(),
                date: rel.release.date.map(format_release_date),
                valid_until: rel.release.valid_until.map(format_release_date),
                signature: rel.signature_file(),
                signed_by: rel.signers.clone(),
                indices: got.count,
                indices_fetched: got.fetched,
                left_out: got.left_out,
            });
        }
        out.reports.push(reports);
    }
    Ok(out)
}

const COMPRESSIONS: &[&str] = &[".xz", ".gz", ".bz2", ".lzma", ".zst", ".lz4"];

fn strip_compression(p: &str) -> (&str, Option<&str>) {
    for c in COMPRESSIONS {
        if let Some(b) = p.strip_suffix(c) {
            return (b, Some(c));
        }
    }
    (p, None)
}

/// The Release entries of a suite that a client of this mirror needs.
fn wanted_indices(spec: &RepoSpec, rel: &SuiteRelease) -> Result<Vec<String>> {
    let r = &rel.release;
    for c in &spec.components {
        if !r.components.is_empty()
            && !r
                .components
                .iter()
                .any(|x| x == c || x.rsplit('/').next() == Some(c))
        {
            bail!(
                "component {c} is not in suite {} (it has: {})",
                rel.suite,
                r.components.join(" ")
            );
        }
    }
    for a in &spec.architectures {
        if !r.architectures.is_empty() && !r.architectures.contains(a) {
            bail!(
                "architecture {a} is not in suite {} (it has: {})",
                rel.suite,
                r.architectures.join(" ")
            );
        }
    }
    let mut archs = spec.architectures.clone();
    if r.architectures.iter().any(|a| a == "all")
        && !r.no_support_arch_all
        && !archs.iter().any(|a| a == "all")
    {
        archs.push("all".into());
    }
    let mut out = Vec::new();
    for path in r.files.keys() {
        let Some((comp, rest)) = path.split_once('/') else {
            continue;
        };
        if !spec.components.iter().any(|c| c == comp) {
            continue;
        }
        let keep = if let Some(f) = archs
            .iter()
            .find_map(|a| rest.strip_prefix(&format!("binary-{a}/")))
        {
            !f.contains('/')
        } else if let Some(f) = rest.strip_prefix("i18n/Translation-") {
            let lang = strip_compression(f).0;
            spec.translations.iter().any(|l| l == lang)
        } else {
            false
        };
        // A signed Release is trusted, but a path still never leaves its suite.
        if keep
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Fetches (or reuses from the published generation) every wanted index of a
/// suite into `gen_tmp/<suite>/`, verified against Release: the count, the
/// count downloaded, what was left out and why, and the parsed packages of
/// the selected architectures.
fn fetch_indices(
    repo: &Repo,
    rel: &SuiteRelease,
    gen_tmp: &Path,
    opts: &SyncOptions,
    counter: &Counter,
) -> Result<SuiteIndices> {
    let wanted = wanted_indices(repo.spec, rel)?;
    let suite_dir = gen_tmp.join(&rel.suite);
    let current = repo.paths.current_generation().map(|g| g.join(&rel.suite));
    let (direct, derived) = direct_and_derived(&wanted);
    // What Release says a file is; None when the published copy is still
    // right and was linked into the new generation.
    let needed = |p: &str| -> Result<Option<(Expect, PathBuf)>> {
        let f = &rel.release.files[p];
        let expect = Expect {
            size: f.size,
            sha256: f.sha256.clone(),
        };
        let dest = suite_dir.join(p);
        match &current {
            Some(cur) if reuse(&cur.join(p), &dest, &expect)? => Ok(None),
            _ => Ok(Some((expect, dest))),
        }
    };
    let results = parallel::map(&direct, opts.jobs, |p| -> Result<bool> {
        let Some((expect, dest)) = needed(p)? else {
            return Ok(false);
        };
        fetch_index(repo, rel, p, &expect, &dest, opts, counter)
            .with_context(|| format!("fetching {p}"))?;
        Ok(true)
    });
    let (fetched, ok, mut left_out) = settle_direct(rel, &direct, results)?;
    let dres = parallel::map(
        &derived,
        opts.jobs.min(parallel::cpus()),
        |p| -> Result<()> {
            let Some((expect, dest)) = needed(p)? else {
                return Ok(());
            };
            let src = [".xz", ".gz"]
                .iter()
                .map(|c| format!("{p}{c}"))
                .find(|c| suite_dir.join(c).exists());
            let Some(src) = src else {
                bail!("{p}: no compressed copy of it could be fetched")
            };
            decompress_verified(&suite_dir.join(&src), &dest, &expect)
                .with_context(|| format!("decompressing {src}"))
        },
    );
    left_out.extend(settle_derived(rel, &derived, dres, &ok)?);
    let packages = selected_packages(rel, &suite_dir, &wanted)?;
    Ok(SuiteIndices {
        count: wanted.len() - left_out.len(),
        fetched,
        packages,
        left_out,
    })
}

/// Compressed and plain files that can be fetched directly; plain files
/// whose compressed sibling is fetched are made by decompressing it.
fn direct_and_derived(wanted: &[String]) -> (Vec<String>, Vec<String>) {
    wanted.iter().cloned().partition(|p| {
        let (base, comp) = strip_compression(p);
        let has_sibling = wanted.iter().any(|q| {
            let (b, c) = strip_compression(q);
            b == base && matches!(c, Some(".xz" | ".gz"))
        });
        !(comp.is_none() && has_sibling)
    })
}

/// The outcome of the direct fetches: how many were downloaded, the ones
/// the mirror has, and what it left out. What failed even after the
/// push-in-progress retries is refused when a client needs it, left out
/// (and said) when no client reads it or another copy of it serves.
fn settle_direct<'a>(
    rel: &SuiteRelease,
    direct: &'a [String],
    results: Vec<Result<bool>>,
) -> Result<(usize, BTreeSet<&'a str>, Vec<LeftOut>)> {
    let mut fetched = 0;
    let mut ok: BTreeSet<&str> = BTreeSet::new();
    let mut failed = Vec::new();
    for (p, r) in direct.iter().zip(results) {
        match r {
            Ok(true) => {
                fetched += 1;
                ok.insert(p.as_str());
            }
            Ok(false) => {
                ok.insert(p.as_str());
            }
            Err(e) => failed.push((p, e)),
        }
    }
    let mut left_out = Vec::new();
    for (p, e) in failed {
        let Some(why) = unneeded(p, &ok) else {
            return Err(e);
        };
        let what = if is_not_found(&e) {
            "not on the server".to_string()
        } else if crate::trust::is_verification_failure(&e) {
            "the server's copy is not the one the signed Release lists".to_string()
        } else {
            format!("{e:#}")
        };
        tracing::warn!("{}: {p} left out of the mirror ({what}): {why}", rel.suite);
        left_out.push(LeftOut {
            path: format!("dists/{}/{p}", rel.suite),
            reason: format!("{what}; {why}"),
        });
    }
    Ok((fetched, ok, left_out))
}

/// What no decompressed copy could be made of: left out when no client
/// needs it (as its compressed copies were), else the error.
fn settle_derived(
    rel: &SuiteRelease,
    derived: &[String],
    results: Vec<Result<()>>,
    ok: &BTreeSet<&str>,
) -> Result<Vec<LeftOut>> {
    let mut left_out = Vec::new();
    for (p, r) in derived.iter().zip(results) {
        if let Err(e) = r {
            let Some(why) = unneeded(p, ok) else {
                return Err(e);
            };
            tracing::warn!("{}: {p} left out of the mirror ({e:#}): {why}", rel.suite);
            left_out.push(LeftOut {
                path: format!("dists/{}/{p}", rel.suite),
                reason: format!("no copy of it could be fetched; {why}"),
            });
        }
    }
    Ok(left_out)
}

/// The packages of the selected architectures' Packages files.
fn selected_packages(
    rel: &SuiteRelease,
    suite_dir: &Path,
    wanted: &[String],
) -> Result<Vec<Package>> {
    let mut pkgs = Vec::new();
    for p in wanted {
        if !p.ends_with("/Packages") || !p.contains("/binary-") {
            continue;
        }
        let path = suite_dir.join(p);
        let file = fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        read_packages(std::io::BufReader::with_capacity(1 << 20, file), |pk| {
            pkgs.push(pk)
        })
        .with_context(|| format!("parsing {}/{p}", rel.suite))?;
    }
    Ok(pkgs)
}

/// What one suite's indices gave.
pub(super) struct SuiteIndices {
    pub count: usize,
    pub fetched: usize,
    pub packages: Vec<Package>,
    pub left_out: Vec<LeftOut>,
}

/// Why the mirror can do without index `p` of a suite (`ok`: the ones it
/// has), or `None` when a client needs it. apt and debootstrap read an
/// index (Packages, a Translation) in one compression of those listed,
/// trying the next when one fails; neither reads a binary directory's own
/// `Release`. (A Translation that no copy of serves fails `apt-get
/// update`: needed.)
fn unneeded(p: &str, ok: &BTreeSet<&str>) -> Option<String> {
    if p.contains("/binary-") && p.ends_with("/Release") {
        return Some("apt and debootstrap never read it".into());
    }
    let (base, comp) = strip_compression(p);
    if comp.is_some() {
        let other = COMPRESSIONS
            .iter()
            .map(|c| format!("{base}{c}"))
            .find(|q| q != p && ok.contains(q.as_str()))?;
        return Some(format!("apt and debootstrap take {other} instead"));
    }
    None
}

/// How many times an index the signed Release names is asked for before
/// its absence or wrong bytes count, and the first pause between rounds
/// (doubled each time): an archive changes under a reader four times a
/// day and a mirror's copies lag behind its Release for a while.
const PUSH_ROUNDS: u32 = 4;
const PUSH_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Fetches index `p` of `rel` into `dest`: by hash first where the Release
/// says so (what apt does: the copy a hash names never changes), then by
/// name. A 404 or a copy that is not the signed one (a push in progress, a
/// lagging mirror) is asked for again, with pauses, before it is an error;
/// the error of the last round is returned (wrong bytes before a 404).
fn fetch_index(
    repo: &Repo,
    rel: &SuiteRelease,
    p: &str,
    expect: &Expect,
    dest: &Path,
    opts: &SyncOptions,
    counter: &Counter,
) -> std::result::Result<(), FetchError> {
    let f = &rel.release.files[p];
    let mut urls = Vec::new();
    if rel.release.acquire_by_hash {
        let dir = Path::new(p)
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        urls.push(join_url(
            &repo.spec.url,
            &format!("dists/{}/{dir}/by-hash/SHA256/{}", rel.suite, f.sha256),
        ));
    }
    urls.push(join_url(
        &repo.spec.url,
        &format!("dists/{}/{p}", rel.suite),
    ));
    let partial = partial_for(&repo.paths.work, &f.sha256, &format!("{}/{p}", rel.suite));
    let mut pause = PUSH_PAUSE;
    let mut round = 0;
    loop {
        round += 1;
        let mut wrong = None;
        let mut absent = None;
        for url in &urls {
            match fetch_verified(
                repo.transport.as_ref(),
                url,
                &partial,
                dest,
                expect,
                &opts.retry,
                counter,
            ) {
                Ok(_) => return Ok(()),
                Err(e @ FetchError::NotFound { .. }) => absent = Some(e),
                Err(e @ (FetchError::HashMismatch { .. } | FetchError::SizeMismatch { .. })) => {
                    wrong = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        let e = wrong.or(absent).expect("at least one URL");
        if round >= PUSH_ROUNDS {
            return Err(e);
        }
        tracing::info!(
            "{}: {p}: {e}; asking again in {pause:?} (an archive being updated)",
            rel.suite
        );
        std::thread::sleep(pause);
        pause *= 2;
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<FetchError>(),
            Some(FetchError::NotFound { .. })
        )
    })
}

/// Hard-links a published file into the new generation when it still has the
/// expected size and hash.
fn reuse(published: &Path, dest: &Path, expect: &Expect) -> Result<bool> {
    match fs::metadata(published) {
        Ok(m) if m.len() == expect.size => {}
        _ => return Ok(false),
    }
    let (_, sha) = sha256_file(published)?;
    if sha != expect.sha256 {
        return Ok(false);
    }
    if let Some(d) = dest.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fs::hard_link(published, dest)
        .with_context(|| format!("linking {} to {}", published.display(), dest.display()))?;
    Ok(true)
}

/// Decompresses `src` (xz or gzip) into `dest`, checking size and SHA-256 of
/// the output against what Release says.
pub(crate) fn decompress_verified(src: &Path, dest: &Path, expect: &Expect) -> Result<()> {
    let f = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut reader: Box<dyn Read> = match src.extension().and_then(|e| e.to_str()) {
        Some("xz") => Box::new(liblzma::read::XzDecoder::new_multi_decoder(
            std::io::BufReader::new(f),
        )),
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            f,
        ))),
        other => bail!("cannot decompress {other:?}"),
    };
    let tmp = dest.with_extension("tmp-decompress");
    let mut out = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let r = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", src.display()))?;
        if r == 0 {
            break;
        }
        n += r as u64;
        if n > expect.size {
            bail!(
                "decompressed data is larger than the {} bytes Release lists",
                expect.size
            );
        }
        h.update(&buf[..r]);
        out.write_all(&buf[..r])
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    let got = hex(&h.finalize());
    if n != expect.size || got != expect.sha256 {
        let _ = fs::remove_file(&tmp);
        return Err(crate::trust::VerificationFailed::new(format!(
            "decompressed {} does not match Release: {n} bytes, sha256 {got}",
            dest.display()
        ))
        .into());
    }
    out.sync_all()?;
    fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(())
}
