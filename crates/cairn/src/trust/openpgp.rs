//! OpenPGP verification of archive signatures, by apt's rules.
//!
//! The cryptography is gpgv's, the program apt itself drives on Debian 12;
//! cairn reads gpgv's machine status lines and applies apt's policy: at least
//! one good signature by a key in the keyring, made with a strong digest, and
//! no bad signature. The signed text handed back is gpgv's output, never the
//! raw file re-parsed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd::tool::{GPG, GPGV};
use crate::cmd::{Cmd, require};

/// Why a signature was refused. Callers match on the kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("bad signature by key {0}")]
    Bad(String),
    #[error("no good signature: signed by key(s) not in the keyring ({0})")]
    UnknownKey(String),
    #[error("no good signature: key {0} has expired or been revoked")]
    KeyNotValid(String),
    #[error("signature by {0} uses the weak digest algorithm {1}")]
    WeakDigest(String, String),
    #[error("not a valid clear-signed file: {0}")]
    Malformed(String),
    #[error("no signature found")]
    NoSignature,
}

/// A set of keyring files, as `Signed-By` or apt's trusted.gpg.d name them.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub files: Vec<PathBuf>,
}

impl Keyring {
    pub fn new(files: Vec<PathBuf>) -> Keyring {
        Keyring { files }
    }

    /// Converts armored (`.asc`) keyrings to binary ones gpgv can read, in `work`.
    fn prepared(&self, work: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            let data =
                fs_err::read(f).with_context(|| format!("reading keyring {}", f.display()))?;
            if data.starts_with(b"-----BEGIN PGP") {
                require(&[&GPG])?;
                let bin = Cmd::new(GPG.program)
                    .args(["--batch", "--dearmor"])
                    .stdin_bytes(data)
                    .run()
                    .with_context(|| format!("dearmoring keyring {}", f.display()))?;
                out.push(write_new(work, &format!("keyring-{i}.gpg"), &bin.stdout)?);
            } else {
                out.push(f.clone());
            }
        }
        Ok(out)
    }
}

/// The outcome of a good verification.
#[derive(Debug)]
pub struct Verified {
    /// The signed text as the verifier output it.
    pub text: Vec<u8>,
    /// Fingerprints of the keys whose signatures were good.
    pub signers: Vec<String>,
}

/// Verifies a clear-signed file (InRelease).
pub fn verify_cleartext(data: &[u8], keyring: &Keyring, work: &Path) -> Result<Verified> {
    check_cleartext_framing(data)?;
    let dir = private_dir(work)?;
    let input = write_new(dir.path(), "signed.in", data)?;
    let output = dir.path().join("signed.out");
    let status = run_gpgv(
        keyring,
        dir.path(),
        &[&PathBuf::from("--output"), &output, &input],
    )?;
    let signers = apply_policy(&status)?;
    let text = fs_err::read(&output)
        .with_context(|| format!("reading gpgv output {}", output.display()))?;
    Ok(Verified { text, signers })
}

/// Verifies a detached signature (Release.gpg over Release).
pub fn verify_detached(
    data: &[u8],
    signature: &[u8],
    keyring: &Keyring,
    work: &Path,
) -> Result<Verified> {
    let dir = private_dir(work)?;
    let input = write_new(dir.path(), "detached.data", data)?;
    let sig = write_new(dir.path(), "detached.sig", signature)?;
    let signers = verify_detached_file(&input, &sig, keyring, dir.path())?;
    Ok(Verified {
        text: data.to_vec(),
        signers,
    })
}

/// Verifies a detached signature over a file left where it is: the
/// caller's own copy, in a directory nobody else can write, so what gpgv
/// reads is what the caller goes on to use (no copy in memory, none
/// written again: a kernel and an initrd are tens of MB).
pub fn verify_detached_file(
    data: &Path,
    signature: &Path,
    keyring: &Keyring,
    work: &Path,
) -> Result<Vec<String>> {
    let dir = private_dir(work)?;
    let status = run_gpgv(
        keyring,
        dir.path(),
        &[&signature.to_path_buf(), &data.to_path_buf()],
    )?;
    Ok(apply_policy(&status)?)
}

/// A directory of this call's own below `work` (random name, mode 0700,
/// made exclusively, removed on drop): no other user's file or symlink can
/// be in the way of what gpgv reads and writes.
/// A detached signature checked over bytes `feed` writes to gpgv's
/// standard input as it reads them: for a file read once for more than one
/// purpose (hashed, its head kept) and never copied. Returns what `feed`
/// returned and the verdict apart: a failed `feed` (the file refused) is
/// the outer error, and gpgv is stopped. A write gpgv refused (it ended
/// first) is a bad signature, never a good one. The whole run, feeding
/// included, is under gpgv's time limit (a watchdog kills it through a
/// pidfd, which never reaches another process); what gpgv writes is read
/// as it comes, stdout and stderr apart, and kept within bounds (a hostile
/// signature can make it write without end before it reads a byte).
pub fn verify_detached_streamed<T>(
    signature: &Path,
    keyring: &Keyring,
    work: &Path,
    feed: impl FnOnce(&mut dyn std::io::Write) -> Result<T>,
) -> Result<(T, Result<Vec<String>>)> {
    use std::process::{Command, Stdio};
    require(&[&GPGV])?;
    let dir = private_dir(work)?;
    let mut cmd = Command::new(GPGV.program);
    cmd.args(["--status-fd", "1"]);
    for k in keyring.prepared(dir.path())? {
        cmd.arg("--keyring").arg(k);
    }
    cmd.arg(signature)
        .arg("-")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!("running {cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", GPGV.program))?;
    let stop = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let pidfd = match rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            stop(&mut child);
            anyhow::bail!("cannot watch gpgv (pidfd_open: {e}): nothing checked");
        }
    };
    let (done, watched) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late = matches!(
            watched.recv_timeout(GPGV_LIMIT),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if late {
            let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
        }
        late
    });
    let stdout = child.stdout.take().map(|o| bounded_reader(o, STATUS_LIMIT));
    let stderr = child.stderr.take().map(|e| bounded_reader(e, 64 << 10));
    let mut stdin = child.stdin.take().context("gpgv's standard input")?;
    let mut sink = FirstError {
        inner: &mut stdin,
        failed: None,
    };
    let fed = feed(&mut sink);
    let short = sink.failed.take();
    drop(stdin);
    let fed = match fed {
        Ok(t) => t,
        Err(e) => {
            stop(&mut child);
            let _ = done.send(());
            return Err(e);
        }
    };
    let waited = child.wait();
    let _ = done.send(());
    let late = watchdog.join().unwrap_or(true);
    waited.with_context(|| format!("waiting for {}", GPGV.program))?;
    let read = |h: Option<std::thread::JoinHandle<(Vec<u8>, bool)>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let ((stdout, cut), (stderr, _)) = (read(stdout), read(stderr));
    let status = String::from_utf8_lossy(&stdout);
    let verdict = if late {
        Err(anyhow::anyhow!(
            "gpgv took more than {} s: stopped",
            GPGV_LIMIT.as_secs()
        ))
    } else if let Some(e) = short {
        Err(anyhow::anyhow!("gpgv did not take every byte: {e}"))
    } else if cut {
        Err(anyhow::anyhow!(
            "gpgv said more than {STATUS_LIMIT} bytes of status: not judged"
        ))
    } else if !status.contains("[GNUPG:]") {
        Err(anyhow::anyhow!(
            "gpgv gave no status: {}",
            String::from_utf8_lossy(&stderr).trim()
        ))
    } else {
        apply_policy(&status).map_err(anyhow::Error::from)
    };
    Ok((fed, verdict))
}

/// How long a gpgv may run (a signature check is quick).
const GPGV_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);
/// The most status a streamed check keeps (a line per signature).
const STATUS_LIMIT: usize = 1 << 20;

/// Reads `r` to its end in a thread of its own, keeping at most `limit`
/// bytes (the rest is read and dropped, so the writer never blocks), and
/// whether some were dropped.
fn bounded_reader(
    mut r: impl std::io::Read + Send + 'static,
    limit: usize,
) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let (mut kept, mut cut) = (Vec::new(), false);
        let mut b = [0u8; 8192];
        while let Ok(n) = r.read(&mut b) {
            if n == 0 {
                break;
            }
            let room = limit - kept.len();
            kept.extend_from_slice(&b[..n.min(room)]);
            cut |= n > room;
        }
        (kept, cut)
    })
}

/// A writer that keeps its first error and takes nothing after it (the
/// reader went away: what it got is not all).
struct FirstError<'a, W: std::io::Write> {
    inner: &'a mut W,
    failed: Option<std::io::Error>,
}

impl<W: std::io::Write> std::io::Write for FirstError<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.failed.is_none()
            && let Err(e) = self.inner.write_all(b)
        {
            self.failed = Some(e);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn private_dir(work: &Path) -> Result<tempfile::TempDir> {
    fs_err::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    tempfile::Builder::new()
        .prefix(".gpgv-")
        .tempdir_in(work)
        .with_context(|| format!("creating a private directory in {}", work.display()))
}

/// Writes a new file (never through an existing file or symlink).
fn write_new(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    let p = dir.join(name);
    fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .and_then(|mut f| f.write_all(data))
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// apt refuses an InRelease with anything outside the signed block.
fn check_cleartext_framing(data: &[u8]) -> Result<(), SignatureError> {
    let text = std::str::from_utf8(data)
        .map_err(|_| SignatureError::Malformed("not UTF-8 text".into()))?;
    let body = text.trim_start_matches(['\n', '\r']);
    if !body.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        return Err(SignatureError::Malformed(
            "does not start with a PGP SIGNED MESSAGE header".into(),
        ));
    }
    if body.matches("-----BEGIN PGP SIGNED MESSAGE-----").count() != 1 {
        return Err(SignatureError::Malformed(
            "more than one signed message".into(),
        ));
    }
    let end = "-----END PGP SIGNATURE-----";
    let pos = body
        .rfind(end)
        .ok_or_else(|| SignatureError::Malformed("no signature block".into()))?;
    if !body[pos + end.len()..].trim().is_empty() {
        return Err(SignatureError::Malformed(
            "data after the signature block".into(),
        ));
    }
    Ok(())
}

fn run_gpgv(keyring: &Keyring, work: &Path, args: &[&PathBuf]) -> Result<String> {
    require(&[&GPGV])?;
    let mut cmd = Cmd::new(GPGV.program).args(["--status-fd", "1"]);
    for k in keyring.prepared(work)? {
        cmd = cmd.arg("--keyring").arg(k);
    }
    // gpgv's exit code mixes policies (an unknown second key makes it fail);
    // apt ignores it and judges the status lines, and so do we.
    let cmd = cmd
        .args(args)
        .env("LC_ALL", "C")
        .timeout(std::time::Duration::from_secs(300));
    // A signature check is quick; one that hangs is stopped, and that is
    // a refusal like any other failure.
    let out = cmd.output_any_status()?;
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    if !status.contains("[GNUPG:]") {
        anyhow::bail!("{}", cmd.failure(&out));
    }
    Ok(status)
}

/// apt's judgement of gpgv status lines (apt's methods/gpgv.cc, in spirit).
pub fn apply_policy(status: &str) -> Result<Vec<String>, SignatureError> {
    let mut good = Vec::new();
    let mut valid: Vec<(String, String)> = Vec::new();
    let mut unknown = Vec::new();
    let mut expired = Vec::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let kw = w.next().unwrap_or("");
        let arg1 = w.next().unwrap_or("").to_string();
        match kw {
            "GOODSIG" => good.push(arg1),
            "VALIDSIG" => {
                // VALIDSIG fpr date ts expire ver reserved pk-algo hash-algo class [primary-fpr]
                let f: Vec<&str> = rest.split_whitespace().collect();
                let hash_algo = f.get(8).copied().unwrap_or("").to_string();
                valid.push((arg1, hash_algo));
            }
            "BADSIG" => return Err(SignatureError::Bad(arg1)),
            "ERRSIG" | "NO_PUBKEY" if !unknown.contains(&arg1) => unknown.push(arg1),
            "EXPKEYSIG" | "REVKEYSIG" | "EXPSIG" => expired.push(arg1),
            _ => {}
        }
    }
    let mut signers = Vec::new();
    let mut weak = None;
    for (fpr, algo) in &valid {
        // RFC 4880 hash ids: 1 MD5, 2 SHA1, 3 RIPEMD160 are weak for apt.
        match algo.as_str() {
            "1" => weak = Some((fpr.clone(), "MD5")),
            "2" => weak = Some((fpr.clone(), "SHA1")),
            "3" => weak = Some((fpr.clone(), "RIPEMD160")),
            _ => signers.push(fpr.clone()),
        }
    }
    // A GOODSIG must pair with a VALIDSIG (key usable, signature valid).
    if !good.is_empty() && !signers.is_empty() {
        return Ok(signers);
    }
    if let Some((fpr, algo)) = weak {
        return Err(SignatureError::WeakDigest(fpr, algo.into()));
    }
    if !expired.is_empty() {
        return Err(SignatureError::KeyNotValid(expired.join(", ")));
    }
    if !unknown.is_empty() {
        return Err(SignatureError::UnknownKey(unknown.join(", ")));
    }
    Err(SignatureError::NoSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 6ED0E7B82643E131 Debian\n[GNUPG:] VALIDSIG 4CB50190207B4758A3F73A796ED0E7B82643E131 2026-07-11 1783764997 0 4 0 1 8 01 4CB50190207B4758A3F73A796ED0E7B82643E131\n";

    #[test]
    fn policy_accepts_one_good_among_unknown() {
        let s = format!(
            "{GOOD}[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 1111 1 8 01 1783764997 9 -\n[GNUPG:] NO_PUBKEY 1111\n"
        );
        assert_eq!(
            apply_policy(&s).unwrap(),
            ["4CB50190207B4758A3F73A796ED0E7B82643E131"]
        );
    }

    #[test]
    fn policy_refuses_bad_unknown_expired_weak() {
        let bad = format!("{GOOD}[GNUPG:] BADSIG 2222 Mallory\n");
        assert_eq!(apply_policy(&bad), Err(SignatureError::Bad("2222".into())));
        let unknown = "[GNUPG:] ERRSIG 1111 1 8 01 1 9 -\n[GNUPG:] NO_PUBKEY 1111\n";
        assert_eq!(
            apply_policy(unknown),
            Err(SignatureError::UnknownKey("1111".into()))
        );
        let exp = "[GNUPG:] EXPKEYSIG 3333 Old\n[GNUPG:] VALIDSIG X 2020-01-01 1 0 4 0 1 8 01 X\n";
        assert_eq!(
            apply_policy(exp),
            Err(SignatureError::KeyNotValid("3333".into()))
        );
        let weak = "[GNUPG:] GOODSIG 4444 W\n[GNUPG:] VALIDSIG F 2020-01-01 1 0 4 0 1 2 01 F\n";
        assert_eq!(
            apply_policy(weak),
            Err(SignatureError::WeakDigest("F".into(), "SHA1".into()))
        );
        assert_eq!(apply_policy(""), Err(SignatureError::NoSignature));
    }

    #[test]
    fn framing() {
        let ok = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nx\n-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n";
        assert!(check_cleartext_framing(ok).is_ok());
        let mut junk = ok.to_vec();
        junk.extend_from_slice(b"Suite: evil\n");
        assert!(check_cleartext_framing(&junk).is_err());
        assert!(check_cleartext_framing(b"Suite: x\n").is_err());
    }
}
