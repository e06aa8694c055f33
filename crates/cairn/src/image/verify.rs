//! Checking images: `cairn image verify` (signatures and every hash), and
//! what a running system checks before it boots one (`cairn reboot
//! --kexec`): the manifest from its signed sums, the boot files as cairn's
//! GRUB menu checks them.

use fs_err as fs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};

use super::{BOOT_CFG, BOOT_SUMS, GRUB_SIGNED, Manifest};
use crate::parallel;
use crate::trust::hash::hex;
use crate::trust::keys::{verify_file, verify_own_copy, verify_streamed};

/// The outcome of `cairn image verify`.
#[derive(Debug, Serialize)]
pub struct VerifyImage {
    pub path: PathBuf,
    pub ok: bool,
    pub signed_by: Option<String>,
    pub checked: Vec<String>,
    pub problems: Vec<String>,
}

/// Checks the signatures and every hash of an image against a public key.
pub fn verify(dir: &Path, public_key: &Path) -> Result<VerifyImage> {
    verify_with(dir, public_key, false)
}

/// As `verify`; with `iso_optional`, an ISO listed in the sums may be absent
/// (boot disks carry images without their ISO).
pub fn verify_with(dir: &Path, public_key: &Path, iso_optional: bool) -> Result<VerifyImage> {
    let work = tempfile::Builder::new()
        .prefix("cairn-verify-")
        .tempdir()
        .context("a private temporary directory")?;
    let work = work.path();
    let mut r = VerifyImage {
        path: dir.to_path_buf(),
        ok: false,
        signed_by: None,
        checked: Vec::new(),
        problems: Vec::new(),
    };
    let mut lists = Vec::new();
    for sums in ["SHA256SUMS", "SHA512SUMS"] {
        match verify_file(public_key, &dir.join(sums), work) {
            Ok(fpr) => {
                r.signed_by = Some(fpr);
                lists.push(sums);
            }
            Err(e) => r.problems.push(format!("{sums}: signature: {e:#}")),
        }
    }
    for n in GRUB_SIGNED.iter().skip(2) {
        if !dir.join(n).exists() && (*n == BOOT_CFG || *n == BOOT_SUMS) {
            r.problems
                .push(format!("{n}: missing (re-seal with `cairn image sign`)"));
            continue;
        }
        if let Err(e) = verify_file(public_key, &dir.join(n), work) {
            r.problems.push(format!("{n}: signature: {e:#}"));
        }
    }
    let mut expected: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for sums in &lists {
        let text = fs::read_to_string(dir.join(sums))?;
        for line in text.lines() {
            let Some((h, n)) = line.split_once("  ") else {
                r.problems.push(format!("{sums}: unreadable line {line:?}"));
                continue;
            };
            if n.contains('/') {
                r.problems
                    .push(format!("{sums}: path {n:?} outside the image"));
                continue;
            }
            let e = expected.entry(n.to_string()).or_default();
            if *sums == "SHA256SUMS" {
                e.0 = Some(h.into())
            } else {
                e.1 = Some(h.into())
            }
        }
    }
    if iso_optional {
        expected.retain(|n, _| !n.ends_with(".iso") || dir.join(n).exists());
    }
    let names: Vec<String> = expected.keys().cloned().collect();
    let hashes = parallel::map(&names, parallel::cpus(), |n| hash_both(&dir.join(n)));
    for (n, h) in names.iter().zip(hashes) {
        let (want256, want512) = &expected[n];
        match h {
            Err(e) => r.problems.push(format!("{n}: {e:#}")),
            Ok((a, b)) => {
                if want256.as_ref().is_some_and(|w| *w != a) {
                    r.problems.push(format!(
                        "{n}: SHA256 mismatch (expected {}, got {a})",
                        want256.as_deref().unwrap_or("")
                    ));
                } else if want512.as_ref().is_some_and(|w| *w != b) {
                    r.problems.push(format!("{n}: SHA512 mismatch"));
                } else {
                    r.checked.push(n.clone());
                }
            }
        }
    }
    for e in fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !expected.contains_key(&n) && !n.starts_with("SHA") && !n.ends_with(".sig") {
            r.problems
                .push(format!("{n}: not listed in the signed sums"));
        }
    }
    if lists.is_empty() && r.problems.is_empty() {
        bail!("nothing to verify in {}", dir.display());
    }
    r.ok = r.problems.is_empty();
    Ok(r)
}

pub(crate) fn hash_both(p: &Path) -> Result<(String, String)> {
    let (mut a, mut b) = (Sha256::new(), Sha512::new());
    crate::trust::hash::for_each_block(p, |d| {
        a.update(d);
        b.update(d);
    })?;
    Ok((hex(&a.finalize()), hex(&b.finalize())))
}

/// `name` in `dir` and its detached signature, read bounded (whoever wrote
/// the boot partition chose them: never a FIFO that hangs the read or a
/// sparse terabyte that fills the memory) and checked against `key`: the
/// bytes the signature holds for, not read again.
pub fn signed_small_file(dir: &Path, name: &str, key: &Path, work: &Path) -> Result<Vec<u8>> {
    let read = |f: &str| {
        crate::fsutil::small_file(&dir.join(f), SMALL_FILE_LIMIT)
            .with_context(|| format!("{}: {f} missing or unusable", dir.display()))
    };
    let (data, sig) = (read(name)?, read(&format!("{name}.sig"))?);
    let keyring = crate::trust::openpgp::Keyring::new(vec![key.to_path_buf()]);
    crate::trust::openpgp::verify_detached(&data, &sig, &keyring, work)
        .with_context(|| format!("{}: {name}: signature missing or bad", dir.display()))?;
    Ok(data)
}

/// The manifest of the image in `dir`, read once and trusted only if its
/// bytes are the ones the image's signed SHA256SUMS lists.
pub fn signed_manifest(dir: &Path, key: &Path, work: &Path) -> Result<Manifest> {
    let sums = signed_small_file(dir, "SHA256SUMS", key, work)?;
    let want = String::from_utf8_lossy(&sums)
        .lines()
        .find_map(|l| {
            l.strip_suffix(&format!("  {}", super::MANIFEST))
                .map(String::from)
        })
        .with_context(|| format!("{}: SHA256SUMS does not list the manifest", dir.display()))?;
    let data = crate::fsutil::small_file(&dir.join(super::MANIFEST), MANIFEST_LIMIT)
        .with_context(|| format!("{}: manifest missing or unusable", dir.display()))?;
    if crate::trust::hash::sha256_hex(&data) != want {
        return Err(crate::trust::VerificationFailed::new(format!(
            "{}: the manifest differs from the signed SHA256SUMS",
            dir.display()
        ))
        .into());
    }
    serde_json::from_slice(&data)
        .with_context(|| format!("{}: reading the manifest", dir.display()))
}

/// What cairn's menu entry would boot, checked the way the menu checks it,
/// in copies under `work` (what is loaded is what was checked).
#[derive(Debug, Serialize)]
pub struct CheckedBoot {
    pub image: PathBuf,
    pub signed_by: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// boot.cfg's arguments (boot=live, module, console, cairn.sha256=…).
    pub args: String,
}

/// A refusal of signed data: a failed verification (exit code 3).
macro_rules! refuse {
    ($($t:tt)*) => {
        return Err(crate::trust::VerificationFailed::new(format!($($t)*)).into())
    };
}

/// The largest kernel or initrd taken (Debian's are tens of MB), the
/// largest manifest (a package list), and the largest sums file, boot.cfg,
/// grub.cfg or signature.
const BOOT_FILE_LIMIT: u64 = 1 << 30;
const MANIFEST_LIMIT: u64 = 64 << 20;
const SMALL_FILE_LIMIT: u64 = 16 << 20;

pub fn check_boot_files(dir: &Path, key: &Path, work: &Path) -> Result<CheckedBoot> {
    let c = check_signed_boot(dir, key, work, Large::Copied)?;
    Ok(CheckedBoot {
        image: dir.to_path_buf(),
        signed_by: c.signed_by,
        kernel: work.join("vmlinuz"),
        initrd: work.join("initrd.img"),
        args: c.args,
    })
}

/// An image's boot files checked for a soft switch, which loads neither
/// kernel nor initrd: every check of [`check_boot_files`], but the kernel
/// and initrd are not copied: each is read once where it lies, hashed for
/// the signed BOOTSUMS and streamed to gpgv for its own signature (what
/// GRUB checks as it loads it) at the same time.
#[derive(Debug)]
pub struct CheckedInPlace {
    pub signed_by: String,
    /// boot.cfg's arguments.
    pub args: String,
    /// The start of the kernel as read and checked (its bzImage header).
    pub kernel_head: Vec<u8>,
}

pub fn check_boot_in_place(dir: &Path, key: &Path, work: &Path) -> Result<CheckedInPlace> {
    let c = check_signed_boot(dir, key, work, Large::HashedInPlace)?;
    Ok(CheckedInPlace {
        signed_by: c.signed_by,
        args: c.args,
        kernel_head: c.kernel_head,
    })
}

/// How the kernel and initrd are checked: copied under `work` and each
/// signature checked in the copy (what kexec loads), or read once where
/// they lie, hashed and streamed to gpgv (what a soft switch, which loads
/// neither, reads).
#[derive(Clone, Copy, PartialEq)]
enum Large {
    Copied,
    HashedInPlace,
}

/// The image's signed boot files, checked: SHA256SUMS, BOOTSUMS, boot.cfg
/// in copies under `work`, the kernel and the initrd as `large` says;
/// BOOTSUMS must be the one SHA256SUMS lists, and list exactly the kernel,
/// the initrd and boot.cfg, each file matching it.
struct SignedBoot {
    signed_by: String,
    args: String,
    kernel_head: Vec<u8>,
}

/// How much of the kernel [`CheckedInPlace`] keeps: its setup header.
const KERNEL_HEAD: usize = 64 * 1024;

fn check_signed_boot(dir: &Path, key: &Path, work: &Path, large: Large) -> Result<SignedBoot> {
    fs::create_dir_all(work)?;
    let names = ["SHA256SUMS", BOOT_SUMS, BOOT_CFG, "vmlinuz", "initrd.img"];
    let gpg_work = work.join(".gpg");
    fs::create_dir_all(&gpg_work)?;
    // Each file read once, hashed as it is read; a signature checked in the
    // copy (what is checked is what is used), all at once: a kernel and an
    // initrd are tens of MB, and a soft switch or kexec waits for them.
    // Only regular files, of a size a boot file has.
    type Checked = (String, Result<String>, Vec<u8>);
    let checked = parallel::map(&names, names.len(), |n| -> Result<Checked> {
        let at = |f: &str| dir.join(f);
        let why = |f: &str| format!("{}: {f} missing or unreadable", dir.display());
        let big = ["vmlinuz", "initrd.img"].contains(n);
        let limit = if big {
            BOOT_FILE_LIMIT
        } else {
            SMALL_FILE_LIMIT
        };
        let sig = format!("{n}.sig");
        let copy = |f: &str, limit: u64| {
            crate::trust::hash::copy_hashing(&at(f), &work.join(f), limit).with_context(|| why(f))
        };
        if big && large == Large::HashedInPlace {
            // Read once: hashed, its head kept, and streamed to gpgv with
            // the signature's own copy.
            copy(&sig, SMALL_FILE_LIMIT)?;
            let keep = if *n == "vmlinuz" { KERNEL_HEAD } else { 0 };
            let ((sha256, head), verified) =
                verify_streamed(key, &work.join(&sig), &gpg_work, |w| {
                    crate::trust::hash::sha256_regular_file_head(&at(n), limit, keep, w)
                        .with_context(|| why(n))
                })?;
            return Ok((sha256, verified, head));
        }
        let sha256 = copy(n, limit)?;
        copy(&sig, SMALL_FILE_LIMIT)?;
        Ok((
            sha256,
            verify_own_copy(key, &work.join(n), &gpg_work),
            Vec::new(),
        ))
    });
    let mut sha256 = BTreeMap::new();
    let mut signed_by = String::new();
    let mut kernel_head = Vec::new();
    for (n, c) in names.iter().zip(checked) {
        let (hash, verified, head) = c?;
        signed_by = match verified {
            Ok(s) => s,
            Err(e) => refuse!(
                "REFUSING {}: {n}: signature missing or bad: {e:#}",
                dir.display()
            ),
        };
        if *n == "vmlinuz" {
            kernel_head = head;
        }
        sha256.insert(*n, hash);
    }
    check_bootsums(dir, work, &sha256)?;
    let cfg = fs::read_to_string(work.join(BOOT_CFG))?;
    let args = super::boot_cfg_args(&cfg).with_context(|| {
        format!(
            "REFUSING {}: boot.cfg gives no kernel arguments",
            dir.display()
        )
    })?;
    Ok(SignedBoot {
        signed_by,
        args,
        kernel_head,
    })
}

/// The chain from the image's signed SHA256SUMS to its files, on the
/// copies in `work` and the hashes of what was read (`sha256`, by name):
/// BOOTSUMS is the one SHA256SUMS lists, and lists exactly the kernel, the
/// initrd and boot.cfg, each once, each as read.
fn check_bootsums(dir: &Path, work: &Path, sha256: &BTreeMap<&str, String>) -> Result<()> {
    // BOOTSUMS is this image's: the image's signed SHA256SUMS lists it (a
    // BOOTSUMS of another signed image, with that image's kernel, would
    // pass its own signature).
    let all = fs::read_to_string(work.join("SHA256SUMS"))?;
    let want = all
        .lines()
        .find_map(|l| l.strip_suffix(&format!("  {BOOT_SUMS}")))
        .with_context(|| {
            format!(
                "REFUSING {}: SHA256SUMS does not list {BOOT_SUMS}",
                dir.display()
            )
        })?;
    if sha256[BOOT_SUMS] != want {
        refuse!(
            "REFUSING {}: {BOOT_SUMS} is not the one the image's SHA256SUMS lists",
            dir.display()
        );
    }
    let sums = fs::read_to_string(work.join(BOOT_SUMS))?;
    let mut listed = std::collections::BTreeSet::new();
    for line in sums.lines() {
        let (h, n) = line
            .split_once("  ")
            .with_context(|| format!("{BOOT_SUMS}: unreadable line {line:?}"))?;
        if !["vmlinuz", "initrd.img", BOOT_CFG].contains(&n) {
            refuse!("{BOOT_SUMS} lists {n:?}");
        }
        if h.len() != 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            refuse!(
                "REFUSING {}: {BOOT_SUMS}: {n}'s SHA-256 {h:?} is not 64 lower-case hex digits",
                dir.display()
            );
        }
        if sha256[n] != h {
            refuse!(
                "REFUSING {}: {n} differs from the signed {BOOT_SUMS}",
                dir.display()
            );
        }
        if !listed.insert(n) {
            refuse!("REFUSING {}: {BOOT_SUMS} lists {n} twice", dir.display());
        }
    }
    if listed.len() != 3 {
        refuse!(
            "REFUSING {}: {BOOT_SUMS} does not list kernel, initrd and boot.cfg",
            dir.display()
        );
    }
    Ok(())
}
