//! The mmdebstrap route: the base and the packages from the local mirrors
//! in one go, cairn's initramfs parts in before the kernel (so the
//! initramfs is made once, with them), the microcode settings, the
//! profile's files and hooks as customize hooks, in order.

use fs_err as fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::{customize, write_hooks};
use crate::cmd::tool::MMDEBSTRAP;
use crate::cmd::{Cmd, shell_quote};
use crate::image::paths::BUILD_DPKG_CFG;
use crate::profile::Profile;

const AUTOMOUNT_HOOK: &str = "/usr/share/mmdebstrap/hooks/file-mirror-automount";

/// Bootstraps `profile` with `packages` into `rootfs` from `sources` (apt
/// lines of the local mirrors), `work` holding its scripts.
pub(super) fn bootstrap(
    profile: &Profile,
    packages: &[String],
    sources: &[String],
    apt_options: &[(&str, &str)],
    rootfs: &Path,
    work: &Path,
    epoch: i64,
) -> Result<()> {
    // Profile files and hooks run inside mmdebstrap's customize phase, in
    // order, with its environment and /proc, /sys, /dev mounted for them.
    // Files are written from inside the tree (chroot): a symlink in it, such
    // as Debian's /var/run -> /run, resolves in the tree, never on the host.
    let mut hooks: Vec<String> = Vec::new();
    // Microcode for every CPU (a physical image's), before the profile's
    // own files and hooks.
    let microcode = work.join("microcode.sh");
    fs::write(&microcode, customize::MICROCODE_EVERYWHERE)?;
    hooks.push(format!(
        "chroot \"$1\" sh -s -- '' regenerate < {}",
        shell_quote(&microcode.display().to_string())
    ));
    for f in &profile.files {
        let parent = Path::new(&f.dest)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let dest = shell_quote(&f.dest);
        hooks.push(format!("chroot \"$1\" mkdir -p {}", shell_quote(&parent)));
        hooks.push(format!(
            "chroot \"$1\" sh -c 'cat > \"$0\"' {dest} < {}",
            shell_quote(&f.source.display().to_string()),
        ));
        hooks.push(format!("chroot \"$1\" chmod {:o} {dest}", f.mode));
    }
    for p in write_hooks(profile, work)? {
        hooks.push(format!(
            "sh {} \"$1\"",
            shell_quote(&p.display().to_string())
        ));
    }
    // cairn's initramfs parts go in before the kernel and live-boot are
    // installed, so the initramfs is generated once, with them.
    let early = work.join("early");
    customize::live_verify(&early)?;
    let mut cmd = Cmd::new(MMDEBSTRAP.program)
        .args(["--mode=root", "--format=directory"])
        .arg(format!(
            "--essential-hook=cp -a {}/. \"$1\"/",
            shell_quote(&early.display().to_string())
        ))
        .arg(format!("--variant={}", profile.variant))
        .arg(format!("--architectures={}", profile.architecture))
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!("--hook-dir={AUTOMOUNT_HOOK}"))
        .arg("--aptopt=Acquire::Languages \"none\"")
        .args(
            apt_options
                .iter()
                .map(|(k, v)| format!("--aptopt={k} \"{v}\"")),
        )
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    for h in &hooks {
        cmd = cmd.arg(format!("--customize-hook={h}"));
    }
    // dpkg without fsync while the tree is made: written into the fresh
    // tree before any package (nothing in it yet can redirect the write),
    // removed from inside the tree by the last hook. The extract variant
    // installs nothing and runs no customize hook: nothing to set.
    if profile.variant != "extract" {
        cmd = cmd
            .arg(format!(
                "--setup-hook=mkdir -p \"$1\"/etc/dpkg/dpkg.cfg.d && echo force-unsafe-io > \"$1\"{BUILD_DPKG_CFG}"
            ))
            .arg(format!(
                "--customize-hook=chroot \"$1\" rm -f {BUILD_DPKG_CFG}"
            ));
    }
    cmd.arg(&profile.suite)
        .arg(rootfs)
        .args(sources)
        .progress("mmdebstrap")
        .run()
        .context("bootstrapping with mmdebstrap")?;
    Ok(())
}
