//! apt-get in a sandbox of its own (lists, cache, config), reading only the
//! sources a test gives it, as root or not.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Apt {
    pub dir: PathBuf,
}

impl Apt {
    pub fn new(dir: &Path, sources: &[String]) -> Apt {
        for d in ["lists/partial", "cache/archives/partial", "parts", "dl"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("sources.list"), sources.join("\n") + "\n").unwrap();
        fs::write(
            dir.join("apt.conf"),
            format!(
                "Dir::Etc::Parts \"{0}/parts\";\nDir::Etc::SourceList \"{0}/sources.list\";\nDir::Etc::SourceParts \"/dev/null\";\n\
Dir::State::Lists \"{0}/lists\";\nDir::Cache \"{0}/cache\";\nAPT::Sandbox::User \"root\";\n",
                dir.display()
            ),
        )
        .unwrap();
        Apt {
            dir: dir.to_path_buf(),
        }
    }

    /// Runs apt-get in `dl/`; any warning or error fails the test.
    #[track_caller]
    pub fn run(&self, args: &[&str]) {
        let o = Command::new("apt-get")
            .args(args)
            .env("APT_CONFIG", self.dir.join("apt.conf"))
            .current_dir(self.dir.join("dl"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success() && !all.contains("W: ") && !all.contains("E: "),
            "apt-get {args:?}:\n{all}"
        );
    }
}
