//! `cairn key` and `cairn image`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::{Cli, show};
use crate::image;
use crate::progress::human_bytes;
use crate::trust::keys;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Generate an RSA signing key into <store>/keys (0700) and export its
    /// public part in the binary form GRUB embeds (<store>/keys/signing.pub).
    Generate {
        /// User ID of the key (a name, shown by gpg).
        #[arg(long, default_value = "cairn image signing", value_name = "TEXT")]
        user_id: String,
        /// RSA key size in bits (GRUB checks RSA; 2048 to 4096).
        #[arg(long, default_value_t = 4096, value_name = "BITS")]
        bits: u32,
        /// Replace the configured key.
        #[arg(long)]
        force: bool,
    },
    /// Sign with an existing key of a GnuPG home (the secret key stays there).
    Use {
        /// Key ID or fingerprint.
        key: String,
        /// GnuPG home holding the secret key (a directory).
        #[arg(
            long,
            env = "GNUPGHOME",
            default_value = "/root/.gnupg",
            value_name = "DIR"
        )]
        gnupg_home: PathBuf,
    },
    /// Show the configured signing key.
    Show,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images per profile, newest first.
    List,
    /// Check an image's signatures and every hash; names any file that differs.
    Verify {
        /// An image directory, `PROFILE` (its newest image) or `PROFILE/VERSION`.
        image: String,
        /// Public key to check against (a file) [default: the store's signing key].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Packages added, removed and changed from image A to image B.
    Diff {
        /// The older image: `PROFILE` (its newest), `PROFILE/VERSION` or a directory.
        a: String,
        /// The newer image, in the same forms.
        b: String,
    },
    /// Remove all but the newest N images of each profile (never the image
    /// this system booted from). Each image directory holds all its layers
    /// (hard links), so removing an older image never breaks a kept one.
    Prune {
        /// How many images of each profile to keep (a count, at least 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        keep: u64,
        /// Only say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build an image again from what its manifest records and compare the
    /// bytes: the squashfs, kernel and initrd must be identical.
    ///
    /// The inputs are the profile (checked against the recorded hash), the
    /// mirror snapshot the image was built from (or the live mirrors, if it
    /// was built from them and they have not moved on), the epoch, the
    /// compressor and the host type. On a difference it names the first
    /// differing file inside the squashfs, with diffoscope's report when
    /// diffoscope is installed, and exits 3. Nothing is published.
    Rebuild {
        /// An image directory, `PROFILE` (its newest image) or `PROFILE/VERSION`.
        image: String,
        /// Compare the rebuild with the image (required: a rebuild is only a check).
        #[arg(long, required = true)]
        check: bool,
        /// The profile the image was built from: a file or a name in
        /// build.profile-dir [default: the image's profile name].
        #[arg(long, value_name = "PROFILE")]
        profile: Option<String>,
        /// Keep the rebuilt files (and the unpacked trees on a difference) in
        /// this empty directory.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// mksquashfs threads [default: every core]; the bytes must not
        /// depend on it.
        #[arg(long, value_name = "THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
        processors: Option<u32>,
        /// Public key the image must be signed with (a file) [default: the
        /// store's signing key].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Seal an image again with the store's key: boot.cfg and BOOTSUMS from
    /// its manifest (e.g. after editing `kernel-cmdline` in manifest.json),
    /// SHA256SUMS, SHA512SUMS and every signature GRUB needs.
    Sign {
        /// An image directory, `PROFILE` (its newest image) or `PROFILE/VERSION`.
        image: String,
    },
}

pub(super) fn run_key(cli: &Cli, c: &KeyCommand) -> Result<i32> {
    let key = match c {
        KeyCommand::Generate {
            user_id,
            bits,
            force,
        } => keys::generate(&cli.store, user_id, *bits, *force)?,
        KeyCommand::Use { key, gnupg_home } => keys::use_existing(&cli.store, gnupg_home, key)?,
        KeyCommand::Show => keys::load(&cli.store)?,
    };
    show(cli, "key", &key, |key| {
        outln!(
            "{} {}{} {:?}",
            key.fingerprint,
            key.algorithm,
            key.bits,
            key.user_id
        );
        outln!("  secret key in {}", key.gnupg_home.display());
        outln!("  public key for GRUB: {}", key.public_key.display());
        outln!("  {}", keys::PROTECTION);
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn run_image(cli: &Cli, c: &ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::List => image_list(cli),
        ImageCommand::Verify { image: spec, key } => image_verify(cli, spec, key.as_deref()),
        ImageCommand::Diff { a, b } => image_diff(cli, a, b),
        ImageCommand::Prune { keep, dry_run } => image_prune(cli, *keep, *dry_run),
        ImageCommand::Rebuild {
            image: spec,
            check: _,
            profile,
            keep,
            processors,
            key,
        } => image_rebuild(
            cli,
            spec,
            profile.as_deref(),
            keep,
            *processors,
            key.as_deref(),
        ),
        ImageCommand::Sign { image: spec } => image_sign(cli, spec),
    }
}

fn image_list(cli: &Cli) -> Result<i32> {
    let all = image::list(&cli.store)?;
    show(cli, "images", &all, |all| {
        for e in all {
            outln!(
                "{:<16} {:<20} {:>10} {:<5} {:>4} packages{}{}",
                e.profile,
                e.version,
                human_bytes(e.size),
                e.compression.map_or("?", |c| c.name()),
                e.packages,
                if e.iso { "  iso" } else { "" },
                e.parent
                    .as_ref()
                    .map(|p| format!("  parent {p}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    })?;
    Ok(0)
}

fn image_verify(cli: &Cli, spec: &str, key: Option<&std::path::Path>) -> Result<i32> {
    let dir = image::resolve(&cli.store, spec)?;
    let public = match key {
        Some(k) => k.to_path_buf(),
        None => keys::load(&cli.store)?.public_key,
    };
    let r = image::verify(&dir, &public)?;
    show(cli, "verify", &r, |r| {
        for p in &r.problems {
            outln!("  BAD {p}");
        }
        outln!(
            "{}: {} — {} files checked{}",
            r.path.display(),
            if r.ok { "OK" } else { "FAILED" },
            r.checked.len(),
            r.signed_by
                .as_deref()
                .map(|s| format!(", signed by {s}"))
                .unwrap_or_default()
        );
        Ok(())
    })?;
    Ok(if r.ok {
        super::exit::SUCCESS
    } else {
        super::exit::VERIFICATION
    })
}

fn image_diff(cli: &Cli, a: &str, b: &str) -> Result<i32> {
    let ma = image::read_manifest(&image::resolve(&cli.store, a)?)?;
    let mb = image::read_manifest(&image::resolve(&cli.store, b)?)?;
    let d = image::diff(&ma, &mb);
    show(cli, "diff", &d, |d| {
        outln!("{} -> {}", d.from, d.to);
        for p in &d.added {
            outln!("  + {} {}", p.name, p.version);
        }
        for p in &d.removed {
            outln!("  - {} {}", p.name, p.version);
        }
        for (n, o, v) in &d.changed {
            outln!("  ~ {n} {o} -> {v}");
        }
        outln!(
            "{} added, {} removed, {} changed",
            d.added.len(),
            d.removed.len(),
            d.changed.len()
        );
        Ok(())
    })?;
    Ok(0)
}

fn image_prune(cli: &Cli, keep: u64, dry_run: bool) -> Result<i32> {
    let booted = image::booted_image();
    let keep = usize::try_from(keep)?;
    let gone = image::prune(&cli.store, keep, booted.as_deref(), dry_run)?;
    #[derive(serde::Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct Pruned<'a> {
        dry_run: bool,
        removed: &'a [PathBuf],
    }
    let out = Pruned {
        dry_run,
        removed: &gone,
    };
    show(cli, "removed", &out, |out| {
        let gone = out.removed;
        for g in gone {
            outln!(
                "{} {}",
                if dry_run { "would remove" } else { "removed" },
                g.display()
            );
        }
        outln!(
            "{} image(s) {}",
            gone.len(),
            if dry_run { "to remove" } else { "removed" }
        );
        Ok(())
    })?;
    Ok(0)
}

fn image_rebuild(
    cli: &Cli,
    spec: &str,
    profile: Option<&str>,
    keep: &Option<PathBuf>,
    processors: Option<u32>,
    key: Option<&std::path::Path>,
) -> Result<i32> {
    if !crate::fsutil::is_root() {
        anyhow::bail!("cairn image rebuild needs root (it builds, as cairn build does)");
    }
    let dir = image::resolve(&cli.store, spec)?;
    let m = image::read_manifest(&dir)?;
    let arg = cli.config.profile_arg(profile.unwrap_or(&m.profile))?;
    let prof = crate::profile::load_arg(&arg)?;
    let r = image::rebuild::rebuild(
        &dir,
        &prof,
        &arg,
        &image::rebuild::RebuildOptions {
            store: cli.store.clone(),
            keep: keep.clone(),
            public_key: match key {
                Some(k) => k.to_path_buf(),
                None => keys::load(&cli.store)?.public_key,
            },
            processors: processors.map(|p| p as usize),
            quiet: cli.quiet(),
        },
    )?;
    show(cli, "rebuild", &r, |r| {
        for c in &r.inputs_changed {
            outln!("  input changed since the build: {c}");
        }
        for f in &r.files {
            outln!(
                "  {:<22} {}",
                f.name,
                if f.identical {
                    "identical".to_string()
                } else {
                    format!(
                        "DIFFERS (image {}…, rebuild {}…)",
                        &f.image_sha256[..16],
                        &f.rebuilt_sha256[..16]
                    )
                }
            );
        }
        if let Some(d) = &r.first_difference {
            outln!("  first difference: {d}");
        }
        if let Some(d) = &r.diffoscope {
            outln!("diffoscope:\n{d}");
        }
        outln!(
            "{}: {} (epoch {}, {}) in {:.0}s",
            r.image,
            if r.reproducible {
                "reproducible: the rebuild is identical"
            } else {
                "NOT REPRODUCED"
            },
            r.epoch,
            r.snapshot
                .as_deref()
                .map(|s| format!("snapshot {s}"))
                .unwrap_or_else(|| "live mirrors".into()),
            r.seconds
        );
        Ok(())
    })?;
    Ok(if r.reproducible {
        super::exit::SUCCESS
    } else {
        super::exit::VERIFICATION
    })
}

fn image_sign(cli: &Cli, spec: &str) -> Result<i32> {
    let dir = image::resolve(&cli.store, spec)?;
    let key = keys::load(&cli.store)?;
    image::seal(&dir, &key)?;
    #[derive(serde::Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct Sealed<'a> {
        path: &'a std::path::Path,
        signed_by: &'a str,
    }
    let out = Sealed {
        path: &dir,
        signed_by: &key.fingerprint,
    };
    show(cli, "sign", &out, |out| {
        outln!(
            "{}: sealed, signed by {}",
            out.path.display(),
            out.signed_by
        );
        Ok(())
    })?;
    Ok(0)
}
