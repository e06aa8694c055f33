//! cairn's Debian package for the tests: made once per test process by
//! `scripts/package --dev` (the debug profile: this test build's own
//! binaries, reused), one test process at a time (a lock file in the source
//! tree's target/tmp, as the package lands in its target/debian), and
//! copied where no other process's build replaces it. Once it is made,
//! every cairn the tests run has CAIRN_PACKAGE naming it: images with
//! `cairn = true` install it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The package, made on first use (a failure to make it fails the caller).
pub fn deb() -> &'static Path {
    match DEB.get_or_init(make) {
        Ok(p) => p,
        Err(e) => panic!("cairn's package could not be made: {e}"),
    }
}

/// The package, if this process has made it.
pub fn made() -> Option<&'static Path> {
    DEB.get().and_then(|r| r.as_deref().ok())
}

fn make() -> Result<PathBuf, String> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // The target directory this test binary was built in: the script's
    // cargo build finds everything there, up to date.
    let target = tmp.parent().ok_or("no target directory")?.to_path_buf();
    let locks = top.join("target/tmp");
    std::fs::create_dir_all(&locks).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(locks.join("package.lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let mut script = Command::new(top.join("scripts/package"));
    // Without what cargo set for this test (CARGO_PKG_NAME, OUT_DIR…):
    // build scripts that watch such variables (ring's) would run again,
    // and the next test build would redo it all once more.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k == "OUT_DIR" {
            script.env_remove(&*k);
        }
    }
    let o = script
        .arg("--dev")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&top)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running scripts/package: {e}"))?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        return Err(format!("scripts/package --dev: {}\n{stderr}", o.status));
    }
    let built = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if !built.is_file() {
        return Err(format!(
            "scripts/package printed no package path:\n{stdout}\n{stderr}"
        ));
    }
    let dir = tmp.join(format!("package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let copy = dir.join(built.file_name().ok_or("no file name")?);
    std::fs::copy(&built, &copy).map_err(|e| format!("copying {}: {e}", built.display()))?;
    eprintln!(
        "cairn's package made in {:.0}s: {}",
        t.elapsed().as_secs_f64(),
        copy.display()
    );
    Ok(copy)
}
