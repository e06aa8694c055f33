//! `cairn-gen-docs`: cairn's man pages and shell completions, generated from
//! the clap definition of the command line (`cairn::cli::Cli`), so that
//! they never drift from `--help`. Run by the Debian package's build
//! (debian/rules); not installed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;

const USAGE: &str = "usage: cairn-gen-docs man DIR | cairn-gen-docs completions DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["man", dir] => man(Path::new(dir)),
        ["completions", dir] => completions(Path::new(dir)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cairn.1` and one page per subcommand, nested ones too
/// (`cairn-mirror-sync.1`).
fn man(dir: &Path) -> Result<Vec<PathBuf>> {
    fs_err::create_dir_all(dir)?;
    clap_mangen::generate_to(cairn::cli::Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let mut pages: Vec<PathBuf> = fs_err::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    if !pages.iter().any(|p| p.ends_with("cairn-mirror-sync.1")) {
        bail!(
            "no cairn-mirror-sync.1 among the pages written into {}",
            dir.display()
        );
    }
    Ok(pages)
}

/// The completions of bash, zsh and fish, named as Debian's packages
/// install them: `cairn` (bash), `_cairn` (zsh), `cairn.fish`.
fn completions(dir: &Path) -> Result<Vec<PathBuf>> {
    fs_err::create_dir_all(dir)?;
    let mut out = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cairn::cli::Cli::command();
        let f = clap_complete::generate_to(shell, &mut cmd, "cairn", dir)
            .with_context(|| format!("writing the {shell} completion into {}", dir.display()))?;
        let name = match shell {
            Shell::Bash => "cairn",
            _ => f.file_name().and_then(|n| n.to_str()).unwrap_or("cairn"),
        };
        let to = dir.join(name);
        if to != f {
            fs_err::rename(&f, &to)?;
        }
        out.push(to);
    }
    Ok(out)
}
