//! Fetching: a small transport trait (HTTP over many keep-alive connections,
//! or local `file://` trees) and a download that verifies size and SHA-256
//! while it streams, resumes partial files and retries with backoff.

use super::url::RepoUrl;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::trust::VerificationFailed;
use crate::trust::hash::hex;

/// The verdict a file with other bytes than the signed ones gets.
fn not_signed() -> VerificationFailed {
    VerificationFailed::new("not the signed bytes")
}

/// Why a fetch failed. `retryable` tells the download loop what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not found (404)")]
    NotFound { url: String },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {msg}")]
    Transport { url: String, msg: String },
    /// Bytes that are not the ones the signed index names: refused data
    /// (its source is the shared verdict).
    #[error("{url}: SHA256 mismatch: expected {expected}, got {got}")]
    HashMismatch {
        url: String,
        expected: String,
        got: String,
        #[source]
        refused: VerificationFailed,
    },
    #[error("{url}: size mismatch: expected {expected} bytes, got {got}")]
    SizeMismatch {
        url: String,
        expected: u64,
        got: u64,
        #[source]
        refused: VerificationFailed,
    },
    #[error("writing {path}: {msg}")]
    Local { path: String, msg: String },
}

impl FetchError {
    fn retryable(&self) -> bool {
        match self {
            FetchError::NotFound { .. } | FetchError::Local { .. } => false,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => true,
        }
    }
}

/// A response body and whether it starts at the requested offset.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    /// True when the server honoured the range (206), false when it sent the whole file.
    pub partial: bool,
}

/// Where bytes come from.
pub trait Transport: Send + Sync {
    /// GET `url`, from byte `offset` when the transport can.
    fn get(&self, url: &str, offset: u64) -> Result<Body, FetchError>;
}

/// HTTP(S) with a pool of keep-alive connections shared by all workers.
pub struct HttpTransport {
    agent: ureq::Agent,
}

/// Caches name resolution for a minute. ureq resolves the host before every
/// request, even on a pooled keep-alive connection; with 20 workers that is
/// hundreds of DNS queries per sync, and a lost UDP query costs the
/// resolver's 5 s timeout (measured: 2x slower syncs).
#[derive(Debug, Default)]
struct CachingResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ureq::unversioned::resolver::ResolvedSocketAddrs)>>,
}

impl ureq::unversioned::resolver::Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        if let Some((at, addrs)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(addrs.clone());
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

impl HttpTransport {
    pub fn new(connections: usize) -> HttpTransport {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(connections.max(4) * 2)
            .max_idle_connections_per_host(connections.max(4))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(format!("cairn/{}", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            CachingResolver::default(),
        );
        HttpTransport { agent }
    }
}

impl Transport for HttpTransport {
    fn get(&self, url: &str, offset: u64) -> Result<Body, FetchError> {
        let mut req = self.agent.get(url);
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        let resp = req.call().map_err(|e| FetchError::Transport {
            url: url.into(),
            msg: e.to_string(),
        })?;
        match resp.status().as_u16() {
            200 => Ok(Body {
                reader: Box::new(resp.into_body().into_reader()),
                partial: false,
            }),
            206 if offset > 0 => Ok(Body {
                reader: Box::new(resp.into_body().into_reader()),
                partial: true,
            }),
            404 | 410 => Err(FetchError::NotFound { url: url.into() }),
            s => Err(FetchError::Status {
                url: url.into(),
                status: s,
            }),
        }
    }
}

/// `file://` sources: a local tree (a CD, a mounted mirror).
pub struct FileTransport;

impl Transport for FileTransport {
    fn get(&self, url: &str, offset: u64) -> Result<Body, FetchError> {
        let path = url.strip_prefix("file://").unwrap_or(url);
        let mut f = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FetchError::NotFound { url: url.into() },
            _ => FetchError::Transport {
                url: url.into(),
                msg: e.to_string(),
            },
        })?;
        if offset > 0 {
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(|e| {
                FetchError::Transport {
                    url: url.into(),
                    msg: e.to_string(),
                }
            })?;
        }
        Ok(Body {
            reader: Box::new(f),
            partial: offset > 0,
        })
    }
}

/// The transport for a repository URL.
pub fn transport_for(url: &RepoUrl, connections: usize) -> anyhow::Result<Arc<dyn Transport>> {
    Ok(match url {
        RepoUrl::Http(_) => Arc::new(HttpTransport::new(connections)),
        RepoUrl::File(_) => Arc::new(FileTransport),
    })
}

/// What a file must be.
#[derive(Debug, Clone)]
pub struct Expect {
    pub size: u64,
    pub sha256: String,
}

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl RetryPolicy {
    /// Runs `once` until it succeeds, fails for good (not retryable, or
    /// `again` says no: it sees every failure first), or the attempts run
    /// out, waiting between attempts with a doubling backoff of at most
    /// 5 s. Returns the value and the attempts it took.
    pub fn run<T>(
        &self,
        url: &str,
        mut once: impl FnMut() -> Result<T, FetchError>,
        mut again: impl FnMut(&FetchError) -> bool,
    ) -> Result<(T, u32), FetchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match once() {
                Ok(v) => return Ok((v, attempt)),
                Err(e) => {
                    if !again(&e) || !e.retryable() || attempt >= self.attempts {
                        return Err(e);
                    }
                    let backoff = (self.first_backoff * 2u32.pow(attempt.min(5) - 1))
                        .min(Duration::from_secs(5));
                    tracing::debug!("retrying {url} in {backoff:?}: {e}");
                    std::thread::sleep(backoff);
                }
            }
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
        }
    }
}

/// Bytes received, for progress; shared by all workers.
#[derive(Default)]
pub struct Counter(pub AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Downloads `url` into `partial` (resuming what is there), checks size and
/// SHA-256 while streaming, fsyncs, then renames to `dest`. Returns the
/// number of bytes that went over the wire.
pub fn fetch_verified(
    t: &dyn Transport,
    url: &str,
    partial: &Path,
    dest: &Path,
    expect: &Expect,
    retry: &RetryPolicy,
    counter: &Counter,
) -> Result<u64, FetchError> {
    let started = std::time::Instant::now();
    let mut received = 0u64;
    let mut mismatches = 0;
    let ((), attempts) = retry.run(
        url,
        || fetch_once(t, url, partial, expect, counter, &mut received),
        |e| {
            if matches!(
                e,
                FetchError::HashMismatch { .. } | FetchError::SizeMismatch { .. }
            ) {
                let _ = fs::remove_file(partial);
                mismatches += 1;
                // Wrong bytes twice from scratch: the source is wrong, not the line.
                return mismatches < 2;
            }
            true
        },
    )?;
    let local = |e: std::io::Error, p: &Path| FetchError::Local {
        path: p.display().to_string(),
        msg: e.to_string(),
    };
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(|e| local(e, dir))?;
    }
    fs::rename(partial, dest).map_err(|e| local(e, dest))?;
    tracing::debug!(
        "fetched {url}: {received} bytes in {:.2}s, {attempts} attempt(s)",
        started.elapsed().as_secs_f64()
    );
    Ok(received)
}

fn fetch_once(
    t: &dyn Transport,
    url: &str,
    partial: &Path,
    expect: &Expect,
    counter: &Counter,
    received: &mut u64,
) -> Result<(), FetchError> {
    let local = |e: std::io::Error| FetchError::Local {
        path: partial.display().to_string(),
        msg: e.to_string(),
    };
    if let Some(dir) = partial.parent() {
        fs::create_dir_all(dir).map_err(local)?;
    }
    let mut hasher = Sha256::new();
    // A partial file is cairn's own regular file, or it is started again
    // (a symbolic link is removed, never followed).
    let mut have = match fs::symlink_metadata(partial) {
        Ok(m) if m.is_file() && m.len() < expect.size => m.len(),
        Ok(m) if m.is_dir() => {
            return Err(local(std::io::Error::other("a directory in the way")));
        }
        Ok(_) => {
            fs::remove_file(partial).map_err(local)?;
            0
        }
        Err(_) => 0,
    };
    if have > 0 {
        // Re-hash what is already there so the final hash covers every byte.
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(partial)
            .map_err(local)?;
        let mut buf = vec![0u8; 1 << 18];
        let mut left = have;
        while left > 0 {
            let n = f
                .read(&mut buf[..left.min(1 << 18) as usize])
                .map_err(local)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
    }
    let body = t.get(url, have)?;
    let mut file = if body.partial {
        OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(partial)
            .map_err(local)?
    } else {
        // The server ignored the range (or there was none): start over.
        hasher = Sha256::new();
        have = 0;
        let _ = fs::remove_file(partial);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(partial)
            .map_err(local)?
    };
    let mut reader = Deadline {
        inner: body.reader,
        until: deadline_for(expect.size.saturating_sub(have)),
    };
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.flush();
                return Err(FetchError::Transport {
                    url: url.into(),
                    msg: format!("connection broke after {have} bytes: {e}"),
                });
            }
        };
        have += n as u64;
        *received += n as u64;
        counter.add(n as u64);
        if have > expect.size {
            return Err(FetchError::SizeMismatch {
                url: url.into(),
                expected: expect.size,
                got: have,
                refused: not_signed(),
            });
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(local)?;
    }
    if have < expect.size {
        return Err(FetchError::Transport {
            url: url.into(),
            msg: format!("connection closed after {have} of {} bytes", expect.size),
        });
    }
    let got = hex(&hasher.finalize());
    if got != expect.sha256 {
        return Err(FetchError::HashMismatch {
            url: url.into(),
            expected: expect.sha256.clone(),
            got,
            refused: not_signed(),
        });
    }
    file.sync_all().map_err(local)?;
    Ok(())
}

/// The slowest transfer a download accepts: a server that trickles bytes
/// (one every minute keeps a connection alive) fails, then is retried,
/// instead of holding a fetch — or a machine's pull — forever.
pub const MIN_RATE: u64 = 16 * 1024;
/// Time every request gets besides its bytes at `MIN_RATE`.
pub const GRACE: Duration = Duration::from_secs(120);

/// A reader that fails once its deadline has passed.
struct Deadline<R> {
    inner: R,
    until: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() > self.until {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("slower than {} KiB/s: given up", MIN_RATE / 1024),
            ));
        }
        self.inner.read(buf)
    }
}

/// The deadline for `bytes` more bytes from now.
fn deadline_for(bytes: u64) -> Instant {
    Instant::now() + GRACE + Duration::from_secs(bytes / MIN_RATE)
}

/// Fetches a small file of unknown size (InRelease) into memory, with retries.
pub fn fetch_small(
    t: &dyn Transport,
    url: &str,
    limit: u64,
    retry: &RetryPolicy,
) -> Result<Vec<u8>, FetchError> {
    let once = || {
        t.get(url, 0).and_then(|body| {
            let mut data = Vec::new();
            Deadline {
                inner: body.reader,
                until: deadline_for(limit),
            }
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| FetchError::Transport {
                url: url.into(),
                msg: e.to_string(),
            })?;
            if data.len() as u64 > limit {
                return Err(FetchError::SizeMismatch {
                    url: url.into(),
                    expected: limit,
                    got: data.len() as u64,
                    refused: not_signed(),
                });
            }
            Ok(data)
        })
    };
    // Larger than the limit is what the server serves, not a bad line.
    retry
        .run(url, once, |e| !matches!(e, FetchError::SizeMismatch { .. }))
        .map(|(d, _)| d)
}

/// Joins a repository URL and a relative path.
pub fn join_url(base: &RepoUrl, rel: &str) -> String {
    base.join(rel)
}

/// Path of the partial download for a file with this hash.
pub fn partial_path(work: &Path, sha256: &str) -> PathBuf {
    work.join("partial").join(sha256)
}

/// The partial file of one destination: two files with the same bytes
/// fetched at once (an archive's empty indices share one SHA-256) must
/// never share one, or the first rename takes the other's away.
pub fn partial_for(work: &Path, sha256: &str, dest: &str) -> PathBuf {
    let tag = crate::trust::hash::sha256_hex(dest.as_bytes());
    work.join("partial")
        .join(format!("{sha256}-{}", &tag[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive's empty indices share one SHA-256 and are fetched at
    /// once (bookworm-updates, 2026-12-07: a sync failed with ENOENT when
    /// one fetch renamed the other's partial file away).
    #[test]
    fn files_with_the_same_bytes_fetched_at_once_have_their_own_partials() {
        let w = Path::new("/w");
        let a = partial_for(
            w,
            "e3b0",
            "bookworm-updates/contrib/binary-amd64/Packages.xz",
        );
        let b = partial_for(
            w,
            "e3b0",
            "bookworm-updates/non-free-firmware/binary-amd64/Packages.xz",
        );
        assert_ne!(a, b);
        assert!(
            a.starts_with("/w/partial")
                && a.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("e3b0-")
        );
    }

    /// A server that trickles bytes: the read fails once the deadline is
    /// passed, however alive the connection is.
    #[test]
    fn a_trickle_meets_its_deadline() {
        struct Trickle;
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(20));
                buf[0] = b'x';
                Ok(1)
            }
        }
        let mut r = Deadline {
            inner: Trickle,
            until: Instant::now() + Duration::from_millis(100),
        };
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(out.len() < 10, "{}", out.len());
        assert!(deadline_for(MIN_RATE * 10) > Instant::now() + GRACE);
    }
}
