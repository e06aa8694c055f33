//! Debian's nginx, started by a test on 127.0.0.1 as an admin runs it:
//! the master as root, the workers as `www-data` (Debian's `user`), the
//! server block `cairn publish --nginx-config` prints; its access log read
//! back. A file the workers may not read is a 403 here as in the field.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The reports inbox, made as the server block `cairn publish
/// --nginx-config` prints says (owned by nginx's workers).
pub fn make_inbox(store: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--store")
        .arg(store)
        .args(["publish", "--nginx-config", "127.0.0.1:80"])
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let install = printed
        .lines()
        .find_map(|l| {
            l.split_once("# inbox must be the workers': ")
                .map(|(_, c)| c.trim().to_string())
        })
        .expect("the printed configuration says how to make the inbox");
    let st = Command::new("sh").arg("-c").arg(&install).status().unwrap();
    assert!(st.success(), "{install}");
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub prefix: PathBuf,
}

/// One request as the access log has it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub range: String,
}

impl Nginx {
    /// nginx serving `store` on 127.0.0.1:`port` (0: a free one), with
    /// `extra` lines inside the server block (a rate limit, say).
    pub fn start(store: &Path, port: u16, extra: &str) -> Nginx {
        let port = if port == 0 { free_port() } else { port };
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--store")
            .arg(store)
            .args(["publish", "--nginx-config", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = String::from_utf8(out.stdout).unwrap().replacen(
            "autoindex off;",
            &format!("autoindex off;\n    {extra}"),
            1,
        );
        if crate::support::is_root() {
            assert!(
                crate::support::enterable_by_all(store),
                "{} is not reachable by nginx's www-data workers: make served stores below support::served_root()",
                store.display()
            );
        }
        Nginx::run(port, |_| server)
    }

    /// An edge cache (`cairn publish --nginx-edge-config`) in front of
    /// `origin`, its cache in its own directory.
    pub fn start_edge(origin: &Nginx) -> Nginx {
        let port = free_port();
        Nginx::run(port, |prefix| {
            let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args([
                    "publish",
                    "--nginx-edge-config",
                    &format!("127.0.0.1:{port}"),
                ])
                .args(["--origin", &origin.url()])
                .arg("--cache-dir")
                .arg(prefix.join("cache"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
    }

    /// nginx with `server` (made knowing nginx's prefix directory) in its
    /// http block, on 127.0.0.1:`port`.
    fn run(port: u16, server: impl FnOnce(&Path) -> String) -> Nginx {
        let prefix = tempfile::Builder::new()
            .prefix("cairn-nginx-")
            .tempdir()
            .unwrap()
            .keep();
        for d in ["tmp", "logs"] {
            fs::create_dir_all(prefix.join(d)).unwrap();
        }
        // The workers write a PUT's body to tmp/ before it moves into the
        // inbox (reports), and an edge's cache: they must reach them, as
        // under /var/lib/nginx.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&prefix, fs::Permissions::from_mode(0o755)).unwrap();
        let server = server(&prefix);
        let p = prefix.display();
        // Debian's nginx.conf: `user www-data;`. (Not root: nginx runs its
        // workers as the user that started it.)
        let user = if crate::support::is_root() {
            "user www-data;"
        } else {
            ""
        };
        let conf = format!(
            "{user}\ndaemon off;\nworker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  default_type application/octet-stream;\n  sendfile on;\n\
               log_format cairn '$request_method $uri $status $body_bytes_sent \"$http_range\"';\n\
               access_log {p}/logs/access.log cairn;\n\
               client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n\
               fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n\
             {server}}}\n"
        );
        let cf = prefix.join("nginx.conf");
        fs::write(&cf, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&cf)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let n = Nginx {
            child,
            port,
            prefix,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "nginx did not listen on 127.0.0.1:{port}: {}",
                fs::read_to_string(n.prefix.join("logs/error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    /// What nginx logged as errors so far.
    pub fn errors(&self) -> String {
        fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        // nginx writes its log line when a response ends.
        std::thread::sleep(Duration::from_millis(200));
        fs::read_to_string(self.prefix.join("logs/access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (head, range) = l.split_once(" \"")?;
                let f: Vec<&str> = head.split(' ').collect();
                Some(Hit {
                    method: f.first()?.to_string(),
                    path: f.get(1)?.to_string(),
                    status: f.get(2)?.parse().ok()?,
                    bytes: f.get(3)?.parse().ok()?,
                    range: range.trim_end_matches('"').to_string(),
                })
            })
            .collect()
    }

    /// Forgets the requests so far.
    pub fn clear(&self) {
        let _ = fs::write(self.prefix.join("logs/access.log"), "");
        // nginx keeps appending to the same (now empty) file.
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its workers, then itself (a killed master
        // would leave its workers serving).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.prefix);
    }
}
