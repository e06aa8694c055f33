//! A machine's own key: Ed25519, made for it when its disk is made (`cairn
//! disk create`, which enrols it in the store at once) or at its first
//! report (then the admin enrols the public key it prints: `cairn fleet
//! enroll`). It signs that machine's reports and nothing else: images,
//! indices and menus take the store's OpenPGP key, which no machine holds.
//!
//! The secret is kept on the machine's boot partition (`cairn/machine.key`,
//! 0600, root's): whoever can read that partition can speak for this one
//! machine, never for another (each report names its machine and is
//! checked against that machine's enrolled key).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Where a boot partition keeps its machine's key (relative to its root).
pub const KEY_FILE: &str = "cairn/machine.key";
/// The first line of the key file: what it is, and its version.
const KEY_TAG: &str = "cairn-machine-key-v1";
/// What a signature covers before the report's bytes: a report signature
/// is never a signature of anything else.
const DOMAIN: &[u8] = b"cairn-report-v1\n";

pub struct MachineKey(SigningKey);

impl MachineKey {
    /// A new key from the kernel's random numbers.
    pub fn generate() -> Result<MachineKey> {
        use std::io::Read;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .context("reading /dev/urandom for a machine key")?;
        Ok(MachineKey(SigningKey::from_bytes(&seed)))
    }

    /// The key of the boot partition at `root` (a link, a FIFO, anything
    /// but the small file cairn writes is refused).
    pub fn load(root: &Path) -> Result<MachineKey> {
        let p = key_path(root);
        let data = crate::fsutil::small_file(&p, 256)?;
        let text = std::str::from_utf8(&data).ok();
        let seed = text
            .and_then(|t| t.strip_prefix(KEY_TAG))
            .and_then(|t| t.strip_prefix(' '))
            .and_then(|t| t.strip_suffix('\n'))
            .and_then(unhex::<32>)
            .with_context(|| format!("{}: not a cairn machine key", p.display()))?;
        Ok(MachineKey(SigningKey::from_bytes(&seed)))
    }

    /// The boot partition's key, made (and saved, 0600) when it has none.
    /// The bool: made now.
    pub fn load_or_make(root: &Path) -> Result<(MachineKey, bool)> {
        if key_path(root).symlink_metadata().is_ok() {
            return Ok((MachineKey::load(root)?, false));
        }
        let k = MachineKey::generate()?;
        k.save(root)?;
        Ok((k, true))
    }

    /// Saves the key on the boot partition at `root`; an existing key is
    /// never replaced (its machine would lose its enrolment).
    pub fn save(&self, root: &Path) -> Result<()> {
        let p = key_path(root);
        if p.symlink_metadata().is_ok() {
            bail!("{} exists: a machine key is never replaced", p.display());
        }
        let dir = p.parent().expect("in cairn/");
        // A running system mounts the partition nosymfollow; a tree given
        // with --boot-dir is checked here.
        if dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            bail!(
                "{} is not a directory: refusing to write through it",
                dir.display()
            );
        }
        fs_err::create_dir_all(dir)?;
        let text = format!(
            "{KEY_TAG} {}\n",
            crate::trust::hash::hex(&self.0.to_bytes())
        );
        crate::fsutil::write_atomic_mode(&p, text.as_bytes(), 0o600)
    }

    /// The public key, as enrolled: 64 hex digits.
    pub fn public(&self) -> String {
        crate::trust::hash::hex(self.0.verifying_key().as_bytes())
    }

    /// The signature of a report's bytes (hex).
    pub fn sign(&self, report: &[u8]) -> String {
        let mut m = DOMAIN.to_vec();
        m.extend_from_slice(report);
        crate::trust::hash::hex(&self.0.sign(&m).to_bytes())
    }
}

pub fn key_path(root: &Path) -> PathBuf {
    root.join(KEY_FILE)
}

/// A public key as enrolled (64 hex digits), checked.
pub fn check_public(hex: &str) -> Result<()> {
    let b = unhex::<32>(hex).with_context(|| {
        format!("{hex:?}: a machine's public key is 64 hex digits (cairn report --print-key)")
    })?;
    VerifyingKey::from_bytes(&b)
        .map_err(|_| anyhow::anyhow!("{hex}: not an Ed25519 public key"))?;
    Ok(())
}

/// Whether `signature` (hex) is `public`'s (hex) over `report`: strict
/// Ed25519 verification (no malleable or small-order forms).
pub fn verify(public: &str, report: &[u8], signature: &str) -> Result<()> {
    let k = unhex::<32>(public)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .context("the enrolled key is not an Ed25519 public key")?;
    let s = unhex::<64>(signature).context("the signature is not 128 hex digits")?;
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(report);
    k.verify_strict(&m, &Signature::from_bytes(&s))
        .map_err(|_| anyhow::anyhow!("the signature is not this machine's key's"))
}

/// Exactly `N` bytes as lower-case hex, else None.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_only_their_reports_and_are_never_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (k, made) = MachineKey::load_or_make(d.path()).unwrap();
        assert!(made);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(d.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, made) = MachineKey::load_or_make(d.path()).unwrap();
        assert!(!made);
        assert_eq!(k.public(), again.public());
        assert!(k.save(d.path()).is_err(), "an existing key is replaced");
        check_public(&k.public()).unwrap();
        let sig = k.sign(b"{\"seq\":1}");
        verify(&k.public(), b"{\"seq\":1}", &sig).unwrap();
        // Another report, another key, a changed signature: refused.
        assert!(verify(&k.public(), b"{\"seq\":2}", &sig).is_err());
        let other = MachineKey::generate().unwrap();
        assert!(verify(&other.public(), b"{\"seq\":1}", &sig).is_err());
        let mut bad = sig.clone().into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        assert!(
            verify(
                &k.public(),
                b"{\"seq\":1}",
                &String::from_utf8(bad).unwrap()
            )
            .is_err()
        );
        assert!(verify(&k.public(), b"{\"seq\":1}", &sig.to_uppercase()).is_err());
        assert!(check_public("00").is_err());
        // A planted key file that is a link is not read.
        let e = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(e.path().join("cairn")).unwrap();
        std::os::unix::fs::symlink(key_path(d.path()), key_path(e.path())).unwrap();
        assert!(MachineKey::load(e.path()).is_err());
        assert!(MachineKey::load_or_make(e.path()).is_err());
    }
}
