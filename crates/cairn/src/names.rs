//! The one rule for names that reach a path, a kernel command line or a GRUB
//! variable: profile, version, layer, mirror, suite and data-label names.
//! A letter or digit, then letters, digits, `.`, `_`, `+`, `-`: nothing a
//! shell, GRUB or the kernel splits on, no `/`, no leading `.` or `-`. The
//! same rule is written in GRUB script (`GRUB_ERE`, the menu's "found now"
//! loop) and in the initramfs (`cairn_name_ok` in live-verify.sh); a test
//! holds the three to the same answers.

use anyhow::{Result, bail};

/// Whether `s` is a name cairn lets reach a path or a command line.
pub fn is_safe(s: &str) -> bool {
    let mut b = s.bytes();
    match b.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    b.all(|c| c.is_ascii_alphanumeric() || b"._+-".contains(&c))
}

/// The rule as a POSIX extended regular expression (one name).
pub const GRUB_ERE: &str = "[A-Za-z0-9][A-Za-z0-9._+-]*";

/// `Err` naming `what` when `s` breaks the rule.
pub fn check(what: &str, s: &str) -> Result<()> {
    if !is_safe(s) {
        bail!(
            "{what} {s:?}: use a letter or digit, then letters, digits, `.`, `_`, `+`, `-` \
             (names reach paths and kernel command lines)"
        );
    }
    Ok(())
}

/// Names every implementation of the rule is held to (here, in the
/// initramfs script, and GRUB's in grub-emu): name, allowed.
pub const EXAMPLES: &[(&str, bool)] = &[
    ("web", true),
    ("20261130T060127Z", true),
    ("20261130T060127Z-2", true),
    ("web_1.2+b3", true),
    ("", false),
    (".hidden", false),
    ("-x", false),
    ("..", false),
    ("a/b", false),
    ("a b", false),
    ("x cairn.verity= live-media-path=evil", false),
    ("a\tb", false),
    ("a\"b", false),
    ("a;b", false),
    ("a$b", false),
    ("a>b", false),
    ("é", false),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for (s, ok) in EXAMPLES {
            assert_eq!(is_safe(s), *ok, "{s:?}");
        }
        assert!(
            check("profile", "a b")
                .unwrap_err()
                .to_string()
                .contains("profile \"a b\"")
        );
    }

    /// The image's boot unit (`image-env.sh`, whose output cairn-booted
    /// reads with the shell) takes a name from the command line exactly
    /// when the rule does, and nothing else: hostile command lines give
    /// `unknown`, and reading its file runs nothing.
    #[test]
    fn the_image_name_unit_agrees() {
        let script = include_str!("rootfs/assets/image-env.sh");
        let d = tempfile::tempdir().unwrap();
        let run = |cmdline: &str| -> (String, String) {
            let c = d.path().join("cmdline");
            std::fs::write(&c, cmdline).unwrap();
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .env("CAIRN_TEST_CMDLINE", &c)
                .env("CAIRN_TEST_RUN", d.path().join("run"))
                .status()
                .unwrap();
            assert!(st.success(), "{cmdline:?}");
            // Read back as booted.sh does, in a shell, with a canary.
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(". \"$1\"; printf '%s\\n%s' \"$CAIRN_PROFILE\" \"$CAIRN_VERSION\"")
                .arg("sh")
                .arg(d.path().join("run/image.env"))
                .current_dir(d.path())
                .output()
                .unwrap();
            let o = String::from_utf8_lossy(&out.stdout).into_owned();
            let (p, v) = o.split_once('\n').unwrap();
            (p.to_string(), v.to_string())
        };
        let unknown = ("unknown".to_string(), "unknown".to_string());
        assert_eq!(
            run("boot=live cairn.image=web/20261130T060127Z quiet"),
            ("web".to_string(), "20261130T060127Z".to_string())
        );
        for (s, ok) in EXAMPLES {
            if s.contains(char::is_whitespace) || s.is_empty() {
                continue; // not one word of a command line
            }
            let got = run(&format!("boot=live cairn.image=web/{s}"));
            if *ok {
                assert_eq!(got, ("web".to_string(), s.to_string()), "{s:?}");
            } else {
                assert_eq!(got, unknown, "{s:?}");
            }
        }
        for bad in [
            "cairn.image=web/1 cairn.image=evil/2",
            "cairn.image=web",
            "cairn.image=web/1/2",
            "cairn.image=$(touch${IFS}pwned)/1",
            "cairn.image=`touch${IFS}pwned`/1",
            "cairn.image=web/1;touch${IFS}pwned",
            "cairn.image=*/*",
            "",
        ] {
            assert_eq!(run(bad), unknown, "{bad:?}");
        }
        assert!(!d.path().join("pwned").exists());
    }

    /// After a soft reboot the unit names the image switched to, from the
    /// command line cairn left in the new root (/etc/cairn/cmdline) — only
    /// when that file is a regular file of the unit's user that nobody
    /// else may write; any other there names no image.
    #[test]
    fn the_image_name_unit_follows_a_soft_reboot() {
        use std::os::unix::fs::PermissionsExt;
        let script = include_str!("rootfs/assets/image-env.sh");
        let d = tempfile::tempdir().unwrap();
        let kernel = d.path().join("cmdline");
        std::fs::write(&kernel, "cairn.image=web/1\n").unwrap();
        let run = d.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let soft = d.path().join("etc-cairn-cmdline");
        let unit = |args: &[&str]| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("image-env")
                .args(args)
                .env("CAIRN_TEST_CMDLINE", &kernel)
                .env("CAIRN_TEST_SOFT_CMDLINE", &soft)
                .env("CAIRN_TEST_RUN", &run)
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let name = || {
            unit(&[]);
            std::fs::read_to_string(run.join("image.env")).unwrap()
        };
        assert!(name().contains("CAIRN_VERSION=1\n"));
        std::fs::write(&soft, "cairn.image=web/2 cairn.entry=web-2\n").unwrap();
        std::fs::set_permissions(&soft, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(name().contains("CAIRN_VERSION=2\n"));
        assert_eq!(unit(&["--cmdline"]), soft.to_str().unwrap());
        // Writable by others, or a link: no name at all (never the
        // kernel's, which is another image's).
        std::fs::set_permissions(&soft, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(name().contains("CAIRN_VERSION=unknown\n"));
        std::fs::remove_file(&soft).unwrap();
        let elsewhere = d.path().join("elsewhere");
        std::fs::write(&elsewhere, "cairn.image=web/3\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &soft).unwrap();
        assert!(name().contains("CAIRN_VERSION=unknown\n"));
    }

    /// The initramfs's copy of the rule (`cairn_name_ok`) gives the same
    /// answers, run by the shell the initramfs uses where it is installed.
    #[test]
    fn the_initramfs_rule_agrees() {
        let script = include_str!("rootfs/assets/live-verify.sh");
        for shell in ["sh", "busybox"] {
            if crate::cmd::which(shell).is_none() {
                continue;
            }
            for (s, ok) in EXAMPLES {
                let mut c = std::process::Command::new(shell);
                if shell == "busybox" {
                    c.arg("sh");
                }
                let st = c
                    .arg("-c")
                    .arg(format!("{script}\ncairn_name_ok \"$1\""))
                    .arg("sh")
                    .arg(s)
                    .status()
                    .unwrap();
                assert_eq!(st.success(), *ok, "{shell}: {s:?}");
            }
        }
    }
}
