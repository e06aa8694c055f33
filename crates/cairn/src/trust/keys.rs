//! The image signing key: an OpenPGP RSA key kept by GnuPG (GRUB checks only
//! RSA/DSA signatures, reads the issuer key ID from the unhashed area, and
//! wants old-format packets: GnuPG's keys and signatures are all that, as
//! measured with a real GRUB). Generated into the store, or an existing key
//! of the user's GnuPG.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::openpgp::{Keyring, verify_detached, verify_detached_file};
use crate::cmd::tool::GPG;
use crate::cmd::{Cmd, require};
use crate::fsutil::write_atomic;

/// Which key signs images, recorded in `<store>/keys/signing.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct SigningKey {
    pub fingerprint: String,
    /// GnuPG home holding the secret key.
    pub gnupg_home: PathBuf,
    /// Binary public key, the form GRUB embeds (`grub-mkimage --pubkey`).
    pub public_key: PathBuf,
    pub algorithm: String,
    pub bits: u32,
    pub user_id: String,
}

pub fn keys_dir(store: &Path) -> PathBuf {
    store.join("keys")
}

fn config_path(store: &Path) -> PathBuf {
    keys_dir(store).join("signing.json")
}

fn gpg(home: &Path) -> Cmd {
    Cmd::new(GPG.program)
        .arg("--homedir")
        .arg(short_home(home))
        .args(["--batch", "--no-tty", "--pinentry-mode", "loopback"])
        .env("LC_ALL", "C")
}

/// gpg-agent's socket lives in the GnuPG home, and a Unix socket's path may
/// not exceed 107 bytes: a store deep in a file system would make every
/// signature fail ("No agent running"). For such a home (as root) gpg gets a
/// short, stable alias instead: a symlink in /run/cairn/gnupg (root's own,
/// mode 0700) to the real home; the sockets land in the real home.
fn short_home(home: &Path) -> PathBuf {
    let long = home.join("S.gpg-agent.browser").as_os_str().len() > 100;
    if !long || !crate::fsutil::is_root() {
        return home.to_path_buf();
    }
    let alias = || -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let real = home.canonicalize()?;
        let dir = Path::new("/run/cairn/gnupg");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        crate::fsutil::own_dir(dir)?;
        let h = crate::trust::hash::sha256_hex(real.as_os_str().as_encoded_bytes());
        let link = dir.join(&h[..16]);
        if fs::read_link(&link).ok().as_deref() != Some(real.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&real, &link)?;
        }
        Ok(link)
    };
    alias().unwrap_or_else(|_| home.to_path_buf())
}

/// The configured signing key, or a clear error telling how to make one.
pub fn load(store: &Path) -> Result<SigningKey> {
    let p = config_path(store);
    let data = fs::read(&p).with_context(|| {
        format!("no signing key in {}: run `cairn key generate` (or `cairn key use` for an existing GnuPG key)", keys_dir(store).display())
    })?;
    let key: SigningKey =
        serde_json::from_slice(&data).with_context(|| format!("reading {}", p.display()))?;
    Ok(key.resolved(store))
}

/// Generates an RSA signing key into `<store>/keys/gnupg` (0700).
pub fn generate(store: &Path, user_id: &str, bits: u32, force: bool) -> Result<SigningKey> {
    require(&[&GPG])?;
    if !(2048..=4096).contains(&bits) {
        bail!("RSA key size {bits}: choose 2048, 3072 or 4096");
    }
    if config_path(store).exists() && !force {
        bail!(
            "a signing key is already configured ({}); pass --force to replace it",
            config_path(store).display()
        );
    }
    let dir = keys_dir(store);
    let home = dir.join("gnupg");
    if home.exists() {
        fs::remove_dir_all(&home).with_context(|| format!("removing {}", home.display()))?;
    }
    fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    set_mode(&dir, 0o700)?;
    set_mode(&home, 0o700)?;
    gpg(&home)
        .args([
            "--passphrase",
            "",
            "--quick-gen-key",
            user_id,
            &format!("rsa{bits}"),
            "sign",
            "never",
        ])
        .run()
        .context("generating the signing key")?;
    let fpr = list_fingerprints(&home, None)?
        .into_iter()
        .next()
        .context("gpg made no key")?;
    adopt(store, &home, &fpr)
}

/// What protects the secret key, said plainly wherever a key is made or
/// shown.
pub const PROTECTION: &str = "protected by file permissions only (a directory of mode 0700, no \
passphrase: cairn signs unattended, in builds and menu writes): whoever can read it can sign \
images every machine of yours will boot. Keep it on the build host, back it up offline.";

/// Uses an existing key of a GnuPG home (its secret key stays there). A key
/// that needs a passphrase is refused here, with the reason, rather than
/// failing at every signature later: cairn signs without anyone to ask.
pub fn use_existing(store: &Path, gnupg_home: &Path, key: &str) -> Result<SigningKey> {
    // Recorded as given: a relative home would later read as the store's.
    let gnupg_home = &std::path::absolute(gnupg_home)
        .with_context(|| format!("resolving {}", gnupg_home.display()))?;
    require(&[&GPG])?;
    let fprs = list_fingerprints(gnupg_home, Some(key))?;
    let fpr = match fprs.as_slice() {
        [one] => one.clone(),
        [] => bail!("no secret key {key:?} in {}", gnupg_home.display()),
        _ => bail!(
            "{key:?} matches {} keys in {}: give a fingerprint",
            fprs.len(),
            gnupg_home.display()
        ),
    };
    // A trial signature, with no passphrase to give.
    let trial = tempfile::Builder::new()
        .prefix("cairn-key-")
        .tempdir()
        .context("a private temporary directory")?;
    let f = trial.path().join("trial");
    fs::write(&f, b"cairn: can this key sign unattended?\n")?;
    let signed = gpg(gnupg_home)
        .args([
            "--passphrase",
            "",
            "--local-user",
            &fpr,
            "--detach-sign",
            "-o",
        ])
        .arg(trial.path().join("trial.sig"))
        .arg(&f)
        .run();
    if let Err(e) = signed {
        bail!(
            "key {fpr} in {} cannot sign without a passphrase ({}): cairn signs unattended \
             (builds, menu writes) and cannot ask for one. Use a key without a passphrase kept \
             where only root can read it (`cairn key generate` makes one), or remove its \
             passphrase with `gpg --homedir {} --passwd {fpr}`",
            gnupg_home.display(),
            format!("{e:#}").lines().last().unwrap_or("").trim(),
            gnupg_home.display()
        );
    }
    adopt(store, gnupg_home, &fpr)
}

fn list_fingerprints(home: &Path, key: Option<&str>) -> Result<Vec<String>> {
    let mut c = gpg(home).args(["--with-colons", "--list-secret-keys"]);
    if let Some(k) = key {
        c = c.arg(k);
    }
    let out = c.output_any_status()?;
    // The fingerprint of each primary key is the `fpr` line right after its `sec` line.
    let mut fprs = Vec::new();
    let mut after_sec = false;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if l.starts_with("sec:") {
            after_sec = true;
        } else if after_sec && l.starts_with("fpr:") {
            fprs.extend(l.split(':').nth(9).map(String::from));
            after_sec = false;
        }
    }
    Ok(fprs)
}

fn adopt(store: &Path, home: &Path, fpr: &str) -> Result<SigningKey> {
    let out = gpg(home)
        .args(["--with-colons", "--list-keys", fpr])
        .run()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pub_line = text
        .lines()
        .find(|l| l.starts_with("pub:"))
        .context("key not found")?;
    let f: Vec<&str> = pub_line.split(':').collect();
    let bits: u32 = f.get(2).and_then(|b| b.parse().ok()).unwrap_or(0);
    let algorithm = match f.get(3).copied() {
        Some("1") => "RSA",
        Some("17") => "DSA",
        Some("22") => bail!(
            "key {fpr} is EdDSA: GRUB verifies only RSA and DSA signatures; generate an RSA key"
        ),
        Some("19") => bail!(
            "key {fpr} is ECDSA: GRUB verifies only RSA and DSA signatures; generate an RSA key"
        ),
        other => {
            bail!("key {fpr} has algorithm {other:?}: GRUB verifies only RSA and DSA signatures")
        }
    };
    let user_id = text
        .lines()
        .find(|l| l.starts_with("uid:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap_or("")
        .to_string();
    let exported = gpg(home).args(["--export", fpr]).run()?.stdout;
    if exported.is_empty() {
        bail!("exporting key {fpr} gave nothing");
    }
    let dir = keys_dir(store);
    let public_key = dir.join("signing.pub");
    write_atomic(&public_key, &exported)?;
    let key = SigningKey {
        fingerprint: fpr.to_string(),
        gnupg_home: home.to_path_buf(),
        public_key,
        algorithm: algorithm.into(),
        bits,
        user_id,
    };
    write_atomic(
        &config_path(store),
        &serde_json::to_vec_pretty(&key.recorded(store))?,
    )?;
    Ok(key)
}

impl SigningKey {
    /// As `signing.json` records it: paths inside the store's `keys/`
    /// relative to it, so a store copied or moved (a backup restored on
    /// a new build host) signs with its own key home, not the old place's.
    fn recorded(&self, store: &Path) -> SigningKey {
        let dir = keys_dir(store);
        let rel = |p: &Path| {
            p.strip_prefix(&dir)
                .map_or_else(|_| p.to_path_buf(), Path::to_path_buf)
        };
        SigningKey {
            gnupg_home: rel(&self.gnupg_home),
            public_key: rel(&self.public_key),
            ..self.clone()
        }
    }

    /// Read back from `signing.json`: relative paths are the store's
    /// `keys/`; an absolute one that names another store's `keys/gnupg`
    /// or `keys/signing.pub` (recorded before paths were relative, the
    /// store since moved) is this store's own, which `key generate` wrote.
    fn resolved(mut self, store: &Path) -> SigningKey {
        let dir = keys_dir(store);
        let fix = |p: &mut PathBuf, own: &str| {
            if p.is_relative() {
                *p = dir.join(&*p);
            } else if p.ends_with(Path::new("keys").join(own))
                && !p.starts_with(&dir)
                && dir.join(own).exists()
            {
                *p = dir.join(own);
            }
        };
        fix(&mut self.gnupg_home, "gnupg");
        fix(&mut self.public_key, "signing.pub");
        self
    }
}

/// Writes a binary detached signature `<file>.sig` (SHA-512: GRUB checks
/// those fastest on 64-bit).
pub fn sign_file(key: &SigningKey, file: &Path) -> Result<PathBuf> {
    let sig = PathBuf::from(format!("{}.sig", file.display()));
    gpg(&key.gnupg_home)
        .args([
            "--yes",
            "--digest-algo",
            "SHA512",
            "--local-user",
            &key.fingerprint,
            "--detach-sign",
            "-o",
        ])
        .arg(&sig)
        .arg(file)
        .run()
        .with_context(|| format!("signing {}", file.display()))?;
    // A signature is for everyone who checks it (a web server serves it).
    crate::fsutil::set_mode(&sig, crate::fsutil::PUBLIC_FILE)?;
    Ok(sig)
}

/// Checks `<file>.sig` against the public key alone (as GRUB or another
/// machine would), returning the signer's fingerprint.
pub fn verify_file(public_key: &Path, file: &Path, work: &Path) -> Result<String> {
    let data = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let sig_path = PathBuf::from(format!("{}.sig", file.display()));
    let sig = fs::read(&sig_path).with_context(|| format!("reading {}", sig_path.display()))?;
    let v = verify_detached(
        &data,
        &sig,
        &Keyring::new(vec![public_key.to_path_buf()]),
        work,
    )?;
    Ok(v.signers.into_iter().next().unwrap_or_default())
}

/// The signature `sig` (the caller's own copy) checked against
/// `public_key` over the bytes `feed` streams (see
/// [`super::openpgp::verify_detached_streamed`]): what `feed` returned, and
/// the signer's fingerprint or why not.
pub fn verify_streamed<T>(
    public_key: &Path,
    sig: &Path,
    work: &Path,
    feed: impl FnOnce(&mut dyn std::io::Write) -> Result<T>,
) -> Result<(T, Result<String>)> {
    let (t, v) = super::openpgp::verify_detached_streamed(
        sig,
        &Keyring::new(vec![public_key.to_path_buf()]),
        work,
        feed,
    )?;
    Ok((t, v.map(|s| s.into_iter().next().unwrap_or_default())))
}

/// As [`verify_file`], for a file that is the caller's own copy in a
/// directory only it writes (gpgv reads it there, and the caller uses the
/// same bytes afterwards).
pub fn verify_own_copy(public_key: &Path, file: &Path, work: &Path) -> Result<String> {
    let sig = PathBuf::from(format!("{}.sig", file.display()));
    let signers = verify_detached_file(
        file,
        &sig,
        &Keyring::new(vec![public_key.to_path_buf()]),
        work,
    )?;
    Ok(signers.into_iter().next().unwrap_or_default())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(home: &Path, public: &Path) -> SigningKey {
        SigningKey {
            fingerprint: "F".into(),
            gnupg_home: home.to_path_buf(),
            public_key: public.to_path_buf(),
            algorithm: "RSA".into(),
            bits: 2048,
            user_id: "u".into(),
        }
    }

    /// A store copied elsewhere signs with its own key home: paths inside
    /// keys/ are recorded relative; an absolute one recorded by an older
    /// cairn that names another store's keys/ is read as this store's; a
    /// key home outside any store (`key use`) stays where it is.
    #[test]
    fn a_moved_store_uses_its_own_keys() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("old");
        let new = d.path().join("new");
        fs::create_dir_all(new.join("keys/gnupg")).unwrap();
        fs::write(new.join("keys/signing.pub"), b"k").unwrap();
        let k = key(&old.join("keys/gnupg"), &old.join("keys/signing.pub"));
        let rec = k.recorded(&old);
        assert_eq!(rec.gnupg_home, Path::new("gnupg"));
        assert_eq!(rec.public_key, Path::new("signing.pub"));
        let moved = rec.clone().resolved(&new);
        assert_eq!(moved.gnupg_home, new.join("keys/gnupg"));
        assert_eq!(moved.public_key, new.join("keys/signing.pub"));
        // Recorded absolute (before): still this store's own.
        let legacy = k.clone().resolved(&new);
        assert_eq!(legacy.gnupg_home, new.join("keys/gnupg"));
        // An external home is the user's: kept.
        let ext = key(Path::new("/home/u/.gnupg"), &new.join("keys/signing.pub"));
        let r = ext.recorded(&new).resolved(&new);
        assert_eq!(r.gnupg_home, Path::new("/home/u/.gnupg"));
        assert_eq!(r.public_key, new.join("keys/signing.pub"));
    }
}
