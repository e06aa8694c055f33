//! The one way cairn runs another program: logged argv, null stdin unless
//! asked, captured output, and errors that hold the shell-pasteable command,
//! its exit status and the tail of its stderr. A command can also be given
//! a time limit, be tied to cairn's life (killed when cairn dies, however it
//! dies), and be started to run alongside cairn (`spawn`: qemu).

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A program cairn drives, and the Debian package that provides it.
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

/// Every program cairn drives, with its Debian package: one table, so a
/// missing tool is named with what to install, the same everywhere.
pub mod tool {
    use super::Tool;

    /// signing key, image signatures
    pub const GPG: Tool = Tool {
        program: "gpg",
        package: "gpg",
    };
    /// every signature check
    pub const GPGV: Tool = Tool {
        program: "gpgv",
        package: "gpgv",
    };
    /// root trees (default bootstrap)
    pub const MMDEBSTRAP: Tool = Tool {
        program: "mmdebstrap",
        package: "mmdebstrap",
    };
    /// root trees (bootstrap = "debootstrap")
    pub const DEBOOTSTRAP: Tool = Tool {
        program: "debootstrap",
        package: "debootstrap",
    };
    /// layers
    pub const MKSQUASHFS: Tool = Tool {
        program: "mksquashfs",
        package: "squashfs-tools",
    };
    /// reading layers
    pub const UNSQUASHFS: Tool = Tool {
        program: "unsquashfs",
        package: "squashfs-tools",
    };
    /// dm-verity trees
    pub const VERITYSETUP: Tool = Tool {
        program: "veritysetup",
        package: "cryptsetup-bin",
    };
    /// cairn's GRUB
    pub const GRUB_MKIMAGE: Tool = Tool {
        program: "grub-mkimage",
        package: "grub-common",
    };
    /// ISOs
    pub const GRUB_MKRESCUE: Tool = Tool {
        program: "grub-mkrescue",
        package: "grub-common",
    };
    /// ISOs
    pub const XORRISO: Tool = Tool {
        program: "xorriso",
        package: "xorriso",
    };
    /// ISOs (EFI image)
    pub const MFORMAT: Tool = Tool {
        program: "mformat",
        package: "mtools",
    };
    /// Secure Boot signing
    pub const SBSIGN: Tool = Tool {
        program: "sbsign",
        package: "sbsigntool",
    };
    /// disk partition tables
    pub const SFDISK: Tool = Tool {
        program: "sfdisk",
        package: "fdisk",
    };
    /// boot and data partitions
    pub const MKFS_EXT4: Tool = Tool {
        program: "mkfs.ext4",
        package: "e2fsprogs",
    };
    /// EFI system partitions
    pub const MKFS_FAT: Tool = Tool {
        program: "mkfs.fat",
        package: "dosfstools",
    };
    /// EFI system partitions
    pub const MCOPY: Tool = Tool {
        program: "mcopy",
        package: "mtools",
    };
    /// Secure Boot certificates (PEM to DER)
    pub const OPENSSL: Tool = Tool {
        program: "openssl",
        package: "openssl",
    };
    /// the cairn package images carry (its fields, read before a build)
    pub const DPKG_DEB: Tool = Tool {
        program: "dpkg-deb",
        package: "dpkg",
    };
    /// vm run
    pub const QEMU: Tool = Tool {
        program: "qemu-system-x86_64",
        package: "qemu-system-x86",
    };
}

/// Finds `program` on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            fs_err::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// Fails early, with the package to install, when a tool is missing.
pub fn require(tools: &[&Tool]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t.program).is_none())
        .map(|t| format!("{} not found: apt-get install {}", t.program, t.package))
        .collect();
    if !missing.is_empty() {
        bail!("{}", missing.join("\n"));
    }
    Ok(())
}

/// What a finished program left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A started program. Dropped before it has ended, it is killed and
/// reaped: no child outlives the code that started it.
pub struct Running {
    child: Child,
    display: String,
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    err_reader: Option<std::thread::JoinHandle<()>>,
    /// The last line either stream wrote (progress bars end lines with \r).
    last: Arc<Mutex<String>>,
}

/// Keeps the last non-empty line of what a program writes.
fn note_last(last: &Mutex<String>, pending: &mut Vec<u8>, chunk: &[u8]) {
    pending.extend_from_slice(chunk);
    if let Some(end) = pending.iter().rposition(|b| *b == b'\n' || *b == b'\r') {
        let text = String::from_utf8_lossy(&pending[..end]);
        if let Some(l) = text
            .split(['\n', '\r'])
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            && let Ok(mut g) = last.lock()
        {
            // Echoed to a terminal: what a program prints (a package's
            // maintainer script, a mirror's file names) must not reach it
            // as escape sequences.
            *g = l.chars().filter(|c| !c.is_control()).take(160).collect();
        }
        pending.drain(..=end);
    }
    if pending.len() > 4096 {
        pending.clear();
    }
}

impl Running {
    /// The exit status if it has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.display))
    }

    /// What it has written to stderr so far (all of it once it has ended).
    pub fn stderr(&mut self) -> String {
        if let Ok(Some(_)) = self.child.try_wait()
            && let Some(h) = self.err_reader.take()
        {
            let _ = h.join();
        }
        let v = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A command line to run.
pub struct Cmd {
    argv: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    envs: Vec<(OsString, OsString)>,
    dir: Option<std::path::PathBuf>,
    timeout: Option<Duration>,
    tied: bool,
    progress: Option<String>,
    local_time: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            argv: vec![program.as_ref().to_owned()],
            stdin: None,
            envs: Vec::new(),
            dir: None,
            timeout: None,
            tied: false,
            progress: None,
            local_time: false,
        }
    }

    /// Long work: while it runs, its last output line is shown on a
    /// terminal (updated every second) and written as a plain line every
    /// 10 s otherwise (the journal, cron, a pipe), prefixed with `label`
    /// and the time so far; nothing when cairn is quiet.
    pub fn progress(mut self, label: &str) -> Cmd {
        self.progress = Some(label.to_string());
        self
    }

    /// Kills the program (and fails) when it runs longer than `limit`.
    pub fn timeout(mut self, limit: Duration) -> Cmd {
        self.timeout = Some(limit);
        self
    }

    /// Ties the program's life to cairn's: the kernel kills it when the
    /// thread that started it ends (a killed cairn, a panic), so no child
    /// outlives cairn. Start tied programs from the thread that waits for
    /// them.
    pub fn tied(mut self) -> Cmd {
        self.tied = true;
        self
    }

    /// The program runs in the machine's own time zone (a maintenance
    /// window is local time); otherwise every program runs in UTC.
    pub fn local_time(mut self) -> Cmd {
        self.local_time = true;
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.argv.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cmd {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, d: &Path) -> Cmd {
        self.dir = Some(d.to_owned());
        self
    }

    pub fn stdin_bytes(mut self, data: Vec<u8>) -> Cmd {
        self.stdin = Some(data);
        self
    }

    /// The command as a line that can be pasted into a shell.
    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        // Tied: setpriv (util-linux, Essential) sets the parent-death
        // signal and execs the program, which keeps it across exec.
        let tie: &[&str] = if self.tied {
            &["setpriv", "--pdeathsig", "KILL", "--"]
        } else {
            &[]
        };
        let mut argv = tie
            .iter()
            .map(OsStr::new)
            .chain(self.argv.iter().map(|a| a.as_os_str()));
        let mut c = Command::new(argv.next().unwrap_or_default());
        c.args(argv).stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        // One language and one time zone whatever the caller's: cairn
        // reads some programs' output (veritysetup's root hash, sfdisk's
        // table), and what a build writes must not depend on either.
        c.env("LC_ALL", "C.UTF-8")
            .env_remove("LANGUAGE")
            .env_remove("LOCPATH");
        if !self.local_time {
            c.env("TZ", "UTC");
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c
    }

    fn start(&self, stdout: Stdio) -> Result<Running> {
        tracing::debug!("running {}", self.display());
        let mut child = self
            .command()
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.display()))?;
        if self.tied {
            // The tie holds once setpriv has set it and exec'd the program:
            // wait for that (the child is neither cairn nor setpriv any
            // more), so the starter may end right after this.
            let exe = format!("/proc/{}/exe", child.id());
            let me = std::fs::read_link("/proc/self/exe").ok();
            let t0 = Instant::now();
            while std::fs::read_link(&exe)
                .is_ok_and(|e| Some(&e) == me.as_ref() || e.ends_with("setpriv"))
                && matches!(child.try_wait(), Ok(None))
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let writer = match (self.stdin.clone(), child.stdin.take()) {
            (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || pipe.write_all(&data))),
            _ => None,
        };
        let last = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().map(|mut o| {
            let last = last.clone();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let mut pending = Vec::new();
                let mut b = [0u8; 8192];
                while let Ok(n) = o.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    v.extend_from_slice(&b[..n]);
                    note_last(&last, &mut pending, &b[..n]);
                }
                v
            })
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_reader = child.stderr.take().map(|mut e| {
            let buf = stderr.clone();
            let last = last.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 8192];
                let mut pending = Vec::new();
                while let Ok(n) = e.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut v) = buf.lock() {
                        v.extend_from_slice(&b[..n]);
                    }
                    note_last(&last, &mut pending, &b[..n]);
                }
            })
        });
        Ok(Running {
            child,
            display: self.display(),
            writer,
            stdout,
            stderr,
            err_reader,
            last,
        })
    }

    /// Starts the program to run alongside cairn: stdin and stdout are
    /// null, stderr is kept for `Running::stderr`. Dropping the handle
    /// kills and reaps it.
    pub fn spawn(&self) -> Result<Running> {
        self.start(Stdio::null())
    }

    /// Runs to completion and returns whatever the exit status was; past
    /// the time limit the program is killed and that is an error.
    pub fn output_any_status(&self) -> Result<Output> {
        let mut r = self.start(Stdio::piped())?;
        let t0 = Instant::now();
        let shown = self
            .progress
            .as_deref()
            .filter(|_| !crate::progress::quiet())
            .map(crate::progress::Heartbeat::new);
        let status = match (self.timeout, &shown) {
            (None, None) => r
                .child
                .wait()
                .with_context(|| format!("waiting for {}", self.display()))?,
            (limit, _) => loop {
                if let Some(st) = r.try_wait()? {
                    break st;
                }
                if let Some(h) = &shown {
                    let l = r.last.lock().map(|g| g.clone()).unwrap_or_default();
                    h.tick(&l);
                }
                if let Some(limit) = limit
                    && t0.elapsed() > limit
                {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    bail!(
                        "{} did not finish in {:.1}s and was stopped",
                        self.display(),
                        limit.as_secs_f64()
                    );
                }
                std::thread::sleep(poll_pause(t0.elapsed()));
            },
        };
        if let Some(h) = shown {
            h.done();
        }
        if let Some(w) = r.writer.take() {
            let _ = w.join();
        }
        let stdout = r
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(h) = r.err_reader.take() {
            let _ = h.join();
        }
        let stderr = std::mem::take(&mut *r.stderr.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs to completion; a non-zero exit is an error naming the command,
    /// its status and the end of its stderr.
    pub fn run(&self) -> Result<Output> {
        let out = self.output_any_status()?;
        if !out.status.success() {
            bail!("{}", self.failure(&out));
        }
        Ok(out)
    }

    /// The message for a failed run.
    pub fn failure(&self, out: &Output) -> String {
        // Some programs (debootstrap) say why on stdout.
        let stderr = if out.stderr.iter().all(u8::is_ascii_whitespace) {
            String::from_utf8_lossy(&out.stdout)
        } else {
            String::from_utf8_lossy(&out.stderr)
        };
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!(
            "command failed ({}): {}\n{}",
            out.status,
            self.display(),
            tail
        )
    }
}

/// How long to wait before looking at a running program again, `ran`
/// after it started: a sixteenth of that, between 1 and 50 ms. A short
/// program (gpgv on an InRelease: tens of ms) is seen to end within a
/// few ms of it, not up to 50 ms later; a long one is looked at 20 times
/// a second.
fn poll_pause(ran: Duration) -> Duration {
    (ran / 16).clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program watched for a time limit is looked at often while it is
    /// young (its end seen within a few ms) and 20 times a second after.
    #[test]
    fn a_watched_program_is_looked_at_often_at_first() {
        let ms = Duration::from_millis;
        assert_eq!(poll_pause(ms(0)), ms(1));
        assert_eq!(poll_pause(ms(40)), Duration::from_micros(2500));
        assert_eq!(poll_pause(ms(800)), ms(50));
        assert_eq!(poll_pause(Duration::from_secs(3600)), ms(50));
    }

    #[test]
    fn the_last_line_is_what_a_progress_bar_or_a_log_wrote_last() {
        let last = std::sync::Mutex::new(String::new());
        let mut pending = Vec::new();
        super::note_last(&last, &mut pending, b"I: downloading\nI: extr");
        assert_eq!(*last.lock().unwrap(), "I: downloading");
        super::note_last(&last, &mut pending, b"acting\n");
        assert_eq!(*last.lock().unwrap(), "I: extracting");
        super::note_last(&last, &mut pending, b"\r[=>   ] 1/9 11%\r[==>  ] 2/9 22%\r");
        assert_eq!(*last.lock().unwrap(), "[==>  ] 2/9 22%");
        super::note_last(&last, &mut pending, b"\x1b]0;owned\x07\x1b[2Jpwn\n");
        assert_eq!(*last.lock().unwrap(), "]0;owned[2Jpwn");
        // A long program with output: the lines come while it runs.
        let out = Cmd::new("sh")
            .args(["-c", "echo one; echo two >&2"])
            .progress("sh")
            .run()
            .unwrap();
        assert_eq!(out.stdout, b"one\n");
        assert_eq!(out.stderr, b"two\n");
    }

    #[test]
    fn failure_names_command_status_and_stderr() {
        let cmd = Cmd::new("sh").arg("-c").arg("echo oops >&2; exit 3");
        let err = cmd.run().unwrap_err().to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("sh -c 'echo oops >&2; exit 3'"), "{err}");
        assert!(err.ends_with("oops"), "{err}");
    }

    #[test]
    fn stdin_and_missing_tools() {
        let out = Cmd::new("cat")
            .stdin_bytes(b"hello".to_vec())
            .run()
            .unwrap();
        assert_eq!(out.stdout, b"hello");
        let missing = Tool {
            program: "cairn-no-such-tool",
            package: "cairn-pkg",
        };
        let err = require(&[&missing]).unwrap_err().to_string();
        assert_eq!(
            err,
            "cairn-no-such-tool not found: apt-get install cairn-pkg"
        );
    }

    #[test]
    fn a_program_past_its_time_limit_is_stopped_and_named() {
        let t0 = Instant::now();
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(300))
            .run()
            .unwrap_err()
            .to_string();
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(
            err.contains("sleep 30 did not finish in 0.3s and was stopped"),
            "{err}"
        );
        // Within the limit: the output, whole.
        let out = Cmd::new("sh")
            .args(["-c", "head -c 300000 /dev/zero; echo done >&2"])
            .timeout(Duration::from_secs(20))
            .run()
            .unwrap();
        assert_eq!(out.stdout.len(), 300000);
        assert_eq!(out.stderr, b"done\n");
    }

    /// A spawned program dies with the handle; a tied one dies with the
    /// thread that started it, even when that thread never drops it.
    #[test]
    fn started_programs_do_not_outlive_their_starter() {
        let alive = |pid: u32| {
            Path::new(&format!("/proc/{pid}")).exists() && {
                // A zombie is gone for our purpose.
                fs_err::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "))
            }
        };
        let mut r = Cmd::new("sleep").arg("30").spawn().unwrap();
        let pid = r.child.id();
        assert!(r.try_wait().unwrap().is_none());
        drop(r);
        assert!(!alive(pid));

        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = Cmd::new("sleep").arg("30").tied().spawn().unwrap();
            tx.send(r.child.id()).unwrap();
            std::mem::forget(r);
        })
        .join()
        .unwrap();
        let pid = rx.recv().unwrap();
        let t0 = Instant::now();
        while alive(pid) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !alive(pid),
            "a tied child outlived the thread that started it: {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );

        let mut e = Cmd::new("sh")
            .args(["-c", "echo why >&2; exit 4"])
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while e.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(e.stderr(), "why\n");
    }
}
