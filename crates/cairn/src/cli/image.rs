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
        /// User ID of the key.
        #[arg(long, default_value = "cairn image signing")]
        user_id: String,
        /// RSA key size.
        #[arg(long, default_value_t = 4096)]
        bits: u32,
        /// Replace the configured key.
        #[arg(long)]
        force: bool,
    },
    /// Sign with an existing key of a GnuPG home (the secret key stays there).
    Use {
        /// Key ID or fingerprint.
        key: String,
        /// GnuPG home holding the secret key.
        #[arg(long, env = "GNUPGHOME", default_value = "/root/.gnupg")]
        gnupg_home: PathBuf,
    },
    /// Show the configured signing key.
    Show {
        /// Print the result as JSON on stdout (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images per profile, newest first.
    List {
        /// Print the result as JSON on stdout (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Check an image's signatures and every hash; names any file that differs.
    Verify {
        /// An image directory, `PROFILE` (its newest image) or `PROFILE/VERSION`.
        image: String,
        /// Public key to check against [default: the store's signing key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print the result as JSON on stdout (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Packages added, removed and changed from image A to image B.
    Diff {
        /// `PROFILE`, `PROFILE/VERSION` or a directory.
        a: String,
        b: String,
        /// Print the result as JSON on stdout (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Remove all but the newest N images of each profile (never the image
    /// this system booted from). Each image directory holds all its layers
    /// (hard links), so removing an older image never breaks a kept one.
    Prune {
        #[arg(long)]
        keep: usize,
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON on stdout (for scripts).
        #[arg(long)]
        json: bool,
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
    let (key, json) = match c {
        KeyCommand::Generate {
            user_id,
            bits,
            force,
        } => (keys::generate(&cli.store, user_id, *bits, *force)?, false),
        KeyCommand::Use { key, gnupg_home } => {
            (keys::use_existing(&cli.store, gnupg_home, key)?, false)
        }
        KeyCommand::Show { json } => (keys::load(&cli.store)?, *json),
    };
    show(json, &key, |key| {
        println!(
            "{} {}{} {:?}",
            key.fingerprint, key.algorithm, key.bits, key.user_id
        );
        println!("  secret key in {}", key.gnupg_home.display());
        println!("  public key for GRUB: {}", key.public_key.display());
        println!("  {}", keys::PROTECTION);
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn run_image(cli: &Cli, c: &ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::List { json } => {
            let all = image::list(&cli.store)?;
            show(*json, &all, |all| {
                for e in all {
                    println!(
                        "{:<16} {:<20} {:>10} {:<5} {:>4} packages{}{}",
                        e.profile,
                        e.version,
                        human_bytes(e.size),
                        e.compression.as_deref().unwrap_or("?"),
                        e.packages,
                        if e.iso { "  iso" } else { "" },
                        e.parent
                            .as_deref()
                            .map(|p| format!("  parent {p}"))
                            .unwrap_or_default()
                    );
                }
                Ok(())
            })?;
            Ok(0)
        }
        ImageCommand::Verify {
            image: spec,
            key,
            json,
        } => {
            let dir = image::resolve(&cli.store, spec)?;
            let public = match key {
                Some(k) => k.clone(),
                None => keys::load(&cli.store)?.public_key,
            };
            let r = image::verify(&dir, &public)?;
            show(*json, &r, |r| {
                for p in &r.problems {
                    println!("  BAD {p}");
                }
                println!(
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
            Ok(if r.ok { 0 } else { 1 })
        }
        ImageCommand::Diff { a, b, json } => {
            let ma = image::read_manifest(&image::resolve(&cli.store, a)?)?;
            let mb = image::read_manifest(&image::resolve(&cli.store, b)?)?;
            let d = image::diff(&ma, &mb);
            show(*json, &d, |d| {
                println!("{} -> {}", d.from, d.to);
                for p in &d.added {
                    println!("  + {} {}", p.name, p.version);
                }
                for p in &d.removed {
                    println!("  - {} {}", p.name, p.version);
                }
                for (n, o, v) in &d.changed {
                    println!("  ~ {n} {o} -> {v}");
                }
                println!(
                    "{} added, {} removed, {} changed",
                    d.added.len(),
                    d.removed.len(),
                    d.changed.len()
                );
                Ok(())
            })?;
            Ok(0)
        }
        ImageCommand::Prune {
            keep,
            dry_run,
            json,
        } => {
            let booted = image::booted_image();
            let gone = image::prune(&cli.store, *keep, booted.as_deref(), *dry_run)?;
            show(*json, &gone, |gone| {
                for g in gone {
                    println!(
                        "{} {}",
                        if *dry_run { "would remove" } else { "removed" },
                        g.display()
                    );
                }
                println!(
                    "{} image(s) {}",
                    gone.len(),
                    if *dry_run { "to remove" } else { "removed" }
                );
                Ok(())
            })?;
            Ok(0)
        }
        ImageCommand::Sign { image: spec } => {
            let dir = image::resolve(&cli.store, spec)?;
            let key = keys::load(&cli.store)?;
            image::seal(&dir, &key)?;
            println!("{}: sealed, signed by {}", dir.display(), key.fingerprint);
            Ok(0)
        }
    }
}
