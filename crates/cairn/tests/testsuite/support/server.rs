//! A small HTTP/1.1 server on 127.0.0.1 serving a directory, with keep-alive,
//! Range, a request log, and faults injected per path.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer 404.
    NotFound,
    /// Answer 404 this many times, then serve (a file missing for a while
    /// during an archive's push).
    NotFoundFor { times: usize },
    /// Serve the right size with wrong bytes.
    Corrupt,
    /// Close the connection after this many body bytes, this many times.
    DropAfter { bytes: u64, times: usize },
    /// Send at most this many bytes per second.
    Slow { bytes_per_sec: u64 },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub range_from: Option<u64>,
}

#[derive(Default)]
struct Shared {
    log: Vec<Request>,
    faults: HashMap<String, Fault>,
    ignore_range: bool,
}

pub struct Server {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(root: PathBuf) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (sh, root, st) = (sh.clone(), root.clone(), st.clone());
                        std::thread::spawn(move || serve(s, &root, &sh, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { url, shared, stop }
    }

    /// Injects a fault for every path that ends with `suffix`.
    pub fn fault(&self, suffix: &str, f: Fault) {
        self.shared
            .lock()
            .unwrap()
            .faults
            .insert(suffix.to_string(), f);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().unwrap().faults.clear();
    }

    pub fn ignore_range(&self, v: bool) {
        self.shared.lock().unwrap().ignore_range = v;
    }

    pub fn log(&self) -> Vec<Request> {
        self.shared.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.shared.lock().unwrap().log.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, root: &std::path::Path, shared: &Mutex<Shared>, stop: &AtomicBool) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut range_from = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h
                .strip_prefix("Range: bytes=")
                .or_else(|| h.strip_prefix("range: bytes="))
            {
                range_from = v.trim_end_matches('-').parse().ok();
            }
        }
        let (fault, ignore_range) = {
            let mut s = shared.lock().unwrap();
            s.log.push(Request {
                path: path.clone(),
                range_from,
            });
            let f = s
                .faults
                .iter()
                .find(|(k, _)| path.ends_with(k.as_str()))
                .map(|(k, f)| (k.clone(), f.clone()));
            if let Some((k, Fault::NotFoundFor { times })) = &f {
                if *times <= 1 {
                    s.faults.remove(k);
                } else {
                    s.faults
                        .insert(k.clone(), Fault::NotFoundFor { times: times - 1 });
                }
            }
            if let Some((k, Fault::DropAfter { bytes, times })) = &f {
                if *times <= 1 {
                    s.faults.remove(k);
                } else {
                    s.faults.insert(
                        k.clone(),
                        Fault::DropAfter {
                            bytes: *bytes,
                            times: times - 1,
                        },
                    );
                }
            }
            (f.map(|x| x.1), s.ignore_range)
        };
        let rel = path.trim_start_matches('/');
        let file = root.join(rel);
        let data = if rel.split('/').any(|c| c == "..")
            || matches!(fault, Some(Fault::NotFound | Fault::NotFoundFor { .. }))
        {
            None
        } else {
            std::fs::read(&file).ok().filter(|_| file.is_file())
        };
        let Some(mut data) = data else {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        if matches!(fault, Some(Fault::Corrupt)) {
            for b in data.iter_mut() {
                *b ^= 0x5a;
            }
        }
        let total = data.len() as u64;
        let from = range_from
            .filter(|f| !ignore_range && *f < total)
            .unwrap_or(0);
        let body = &data[from as usize..];
        let head = if from > 0 {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{total}\r\n\r\n",
                body.len(),
                total - 1
            )
        } else {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
        };
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        match fault {
            Some(Fault::DropAfter { bytes, .. }) => {
                let n = (bytes as usize).min(body.len());
                let _ = out.write_all(&body[..n]);
                let _ = out.flush();
                return;
            }
            Some(Fault::Slow { bytes_per_sec }) => {
                for chunk in body.chunks((bytes_per_sec / 10).max(1) as usize) {
                    if out.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            _ => {
                if out.write_all(body).is_err() {
                    return;
                }
            }
        }
        let _ = out.flush();
        let _ = reader.get_mut().read(&mut []);
    }
}
