//! The one way cairn runs another program: logged argv, null stdin unless
//! asked, captured output, and errors that hold the shell-pasteable command,
//! its exit status and the tail of its stderr.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// A program cairn drives, and the Debian package that provides it.
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const GPGV: Tool = Tool {
    program: "gpgv",
    package: "gpgv",
};
pub const GPG: Tool = Tool {
    program: "gpg",
    package: "gpg",
};

/// Finds `program` on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
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

/// A command line to run.
pub struct Cmd {
    argv: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    envs: Vec<(OsString, OsString)>,
    dir: Option<std::path::PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            argv: vec![program.as_ref().to_owned()],
            stdin: None,
            envs: Vec::new(),
            dir: None,
        }
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

    /// Runs to completion and returns whatever the exit status was.
    pub fn output_any_status(&self) -> Result<Output> {
        tracing::debug!("running {}", self.display());
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..])
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {}", self.display()))?;
        let writer = match (self.stdin.clone(), child.stdin.take()) {
            (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || pipe.write_all(&data))),
            _ => None,
        };
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", self.display()))?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok(Output {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
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
}
