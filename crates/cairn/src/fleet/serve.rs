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
}
