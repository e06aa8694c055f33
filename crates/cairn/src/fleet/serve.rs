//! Serving the store to machines with a web server users already run:
//! nginx, read-only, the published parts only.

use std::path::Path;

use anyhow::{Result, bail};

/// An nginx `server` block that serves `store` on `listen` (`ADDRESS:PORT`):
/// `images/` (indices briefly cached, images a day), `mirror/` and
/// `netboot/` (what `cairn netboot` writes); never
/// the store's keys, never a dot path (a mirror's `.NAME.work` state, a
/// sync's `.dists` staging is reached only through `dists`).
pub fn nginx_server(store: &Path, listen: &str) -> Result<String> {
    let root = store
        .to_str()
        .filter(|s| {
            s.starts_with('/')
                && !s
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b";{}\"'\\$#".contains(&b))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: an absolute path without spaces or nginx syntax",
                store.display()
            )
        })?;
    if listen.is_empty()
        || !listen
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:[]-".contains(&b))
    {
        bail!("listen {listen:?}: ADDRESS:PORT");
    }
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
