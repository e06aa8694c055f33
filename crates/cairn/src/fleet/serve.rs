//! Serving the store to machines with a web server users already run:
//! nginx, read-only, the published parts only.

use std::path::Path;

use anyhow::{Result, bail};

/// A path nginx's configuration can hold as it is.
fn plain_path(p: &Path) -> Result<&str> {
    p.to_str()
        .filter(|s| {
            s.starts_with('/')
                && !s
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b";{}\"'\\$#".contains(&b))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: an absolute path without spaces or nginx syntax",
                p.display()
            )
        })
}

fn check_listen(listen: &str) -> Result<()> {
    if listen.is_empty()
        || !listen
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:[]-".contains(&b))
    {
        bail!("listen {listen:?}: ADDRESS:PORT");
    }
    Ok(())
}

/// An nginx `server` block that serves `store` on `listen` (`ADDRESS:PORT`):
/// `images/` (indices briefly cached, images a day), `mirror/` and
/// `netboot/` (what `cairn netboot` writes); never
/// the store's keys, never a dot path (a mirror's `.NAME.work` state, a
/// sync's `.dists` staging is reached only through `dists`).
pub fn nginx_server(store: &Path, listen: &str) -> Result<String> {
    let root = plain_path(store)?;
    check_listen(listen)?;
    Ok(format!(
        r#"server {{
    listen {listen};
    root {root};
    autoindex off;
    # Only what machines read; never keys/, never a dot path.
    location ~ /\. {{ return 404; }}
    location ~ ^/images/[^/]+/index\.json(\.sig)?$ {{
        add_header Cache-Control "max-age=60";
    }}
    location /images/ {{
        add_header Cache-Control "max-age=86400";
    }}
    location /mirror/ {{ }}
    # What network-booted machines load (cairn netboot): GRUB, the menu.
    location /netboot/ {{
        add_header Cache-Control "max-age=60";
    }}
    # Machines' signed reports (cairn report), taken in by cairn fleet
    # ingest: a PUT only, into the directory `cairn fleet enroll` made for
    # an enrolled machine (none is ever made here), 64 KiB at most. The
    # inbox must be the workers': install -d -o www-data -g www-data -m 0750 {root}/fleet/inbox
    location ~ "^/reports/([A-Za-z0-9][A-Za-z0-9._+-]{{0,127}})/report\.json$" {{
        limit_except PUT {{ deny all; }}
        # Not enrolled: no directory, nothing written.
        if (!-d {root}/fleet/inbox/$1) {{ return 404; }}
        alias {root}/fleet/inbox/$1/report.json;
        dav_methods PUT;
        create_full_put_path off;
        dav_access user:rw;
        client_max_body_size 64k;
    }}
    # The fleet's page (cairn fleet status --html {root}/fleet/html):
    # the admins' only; widen `allow` to their addresses.
    location /fleet/ {{
        alias {root}/fleet/html/;
        allow 127.0.0.1;
        allow ::1;
        deny all;
        add_header Cache-Control "no-cache";
    }}
    location / {{ return 404; }}
}}
"#
    ))
}

/// An nginx edge cache in front of the store's server (`origin`, a base
/// URL): what machines may list in fleet.urls before the origin. Every
/// file of a version and every pool file never changes (kept 30 days, a
/// miss fetched once however many machines ask at once); indices, netboot
/// menus and the mirror's indices keep the origin's short lifetime, so a
/// machine sees a new index within a minute and the expiry and replay
/// checks are the machine's, unchanged. Reports pass through, uncached.
/// `cache_dir` holds the cache (the `proxy_cache_path` line belongs in
/// nginx's `http` block).
pub fn nginx_edge(origin: &str, listen: &str, cache_dir: &Path) -> Result<String> {
    let url = crate::mirror::url::RepoUrl::parse(origin)?;
    if !url.is_http()
        || !origin
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b";{}\"'\\$#".contains(&b))
    {
        bail!("--origin {origin:?}: the http(s) base URL of the store's server");
    }
    let origin = origin.trim_end_matches('/');
    // proxy_pass with a path would replace each location's prefix (and
    // nginx refuses it in a regex location): the server's root only.
    if origin
        .split_once("://")
        .is_none_or(|(_, rest)| rest.contains('/'))
    {
        bail!("--origin {origin:?}: the server's base URL without a path (the store at its root)");
    }
    let cache = plain_path(cache_dir)?;
    check_listen(listen)?;
    Ok(format!(
        r#"# In nginx's http block:
proxy_cache_path {cache} levels=1:2 keys_zone=cairn_edge:10m max_size=50g inactive=30d use_temp_path=off;
server {{
    listen {listen};
    proxy_cache cairn_edge;
    # One request to the origin per missing file, however many machines ask.
    proxy_cache_lock on;
    proxy_cache_lock_timeout 10m;
    # Never an answer past its lifetime: a stale index would only be
    # refused by the machines (expiry), a stale menu by GRUB (replay).
    proxy_cache_use_stale off;
    proxy_http_version 1.1;
    location ~ /\. {{ return 404; }}
    # Indices and netboot menus: the origin's max-age (60 s).
    location ~ ^/images/[^/]+/index\.json(\.sig)?$ {{
        proxy_pass {origin};
    }}
    location /netboot/ {{
        proxy_pass {origin};
    }}
    # A version's files never change.
    location /images/ {{
        proxy_pass {origin};
        proxy_cache_valid 200 30d;
    }}
    location ~ ^/mirror/.*/pool/ {{
        proxy_pass {origin};
        proxy_cache_valid 200 30d;
    }}
    # The mirror's indices change with each sync: a minute.
    location /mirror/ {{
        proxy_pass {origin};
        proxy_cache_valid 200 60s;
    }}
    # Machines' reports go through to the build host.
    location /reports/ {{
        proxy_pass {origin};
        proxy_cache off;
        client_max_body_size 64k;
    }}
    location / {{ return 404; }}
}}
"#
    ))
}

/// The directories on the way to what machines fetch from `store` that
/// a web server's workers (not root: `www-data` on Debian) cannot enter,
/// with their modes: each one is a 403 for every machine.
pub fn closed_to_workers(store: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let Ok(canon) = store.canonicalize() else {
        return out;
    };
    let mut dirs: Vec<std::path::PathBuf> = canon.ancestors().map(Path::to_path_buf).collect();
    dirs.reverse();
    for d in ["images", "mirror", "netboot"] {
        let p = canon.join(d);
        if p.is_dir() {
            dirs.push(p);
        }
    }
    for d in dirs {
        if let Ok(m) = std::fs::metadata(&d)
            && m.permissions().mode() & 0o001 == 0
        {
            out.push(format!(
                "{} (mode {:o})",
                d.display(),
                m.permissions().mode() & 0o7777
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_and_addresses_reach_the_config() {
        let c = nginx_server(Path::new("/srv/cairn"), "127.0.0.1:8080").unwrap();
        assert!(c.contains("root /srv/cairn;") && c.contains("listen 127.0.0.1:8080;"));
        for bad in [
            "srv/cairn",
            "/srv/a b",
            "/srv/x;include /etc/shadow",
            "/srv/{",
        ] {
            assert!(
                nginx_server(Path::new(bad), "127.0.0.1:8080").is_err(),
                "{bad}"
            );
        }
        for bad in ["", "127.0.0.1:80; include x", "a b"] {
            assert!(nginx_server(Path::new("/srv"), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_edge_takes_a_plain_origin_and_cache() {
        let c = nginx_edge(
            "http://build:8080/",
            "0.0.0.0:80",
            Path::new("/var/cache/x"),
        )
        .unwrap();
        assert!(
            c.contains("proxy_pass http://build:8080;")
                && c.contains("proxy_cache_path /var/cache/x ")
        );
        for bad in [
            "ftp://x/",
            "http://x/cairn/",
            "http://x/;evil",
            "file:///srv",
        ] {
            assert!(
                nginx_edge(bad, "0.0.0.0:80", Path::new("/c")).is_err(),
                "{bad}"
            );
        }
        assert!(nginx_edge("http://x/", "0.0.0.0:80", Path::new("c d")).is_err());
    }

    /// A store below a private directory is named, with the mode that
    /// closes it, before an admin meets a 403.
    #[test]
    fn a_store_workers_cannot_reach_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        std::fs::create_dir_all(open.join("store/images")).unwrap();
        for p in [
            d.path(),
            &open,
            &open.join("store"),
            &open.join("store/images"),
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        if !closed_to_workers(d.path()).is_empty() {
            // The temporary directory's own parents are closed here.
            return;
        }
        assert!(closed_to_workers(&open.join("store")).is_empty());
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(
            open.join("store/images"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        assert_eq!(
            closed_to_workers(&open.join("store")),
            [
                format!("{} (mode 700)", open.display()),
                format!("{} (mode 750)", open.join("store/images").display())
            ]
        );
    }
}
