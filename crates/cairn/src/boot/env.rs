//! GRUB's environment block (`grubenv`): exactly 1024 bytes, a header line,
//! `name=value` lines, `#` padding. GRUB's `save_env` rewrites it in place,
//! so it must keep its size (and its blocks).

use anyhow::{Result, bail};

pub const SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

/// Variables in file order.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>> {
    if data.len() != SIZE || !data.starts_with(HEADER.as_bytes()) {
        bail!("not a GRUB environment block (1024 bytes starting with {HEADER:?})");
    }
    let text = String::from_utf8_lossy(&data[HEADER.len()..]);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:>/+-".contains(c))
}

/// The block for `vars` (values limited to characters GRUB needs no escape for).
pub fn render(vars: &[(String, String)]) -> Result<Vec<u8>> {
    let mut out = String::from(HEADER);
    for (k, v) in vars {
        if !plain(k) || !(v.is_empty() || plain(v)) {
            bail!("environment variable {k}={v:?}: only letters, digits and ._:>/+- are stored");
        }
        out.push_str(&format!("{k}={v}\n"));
    }
    if out.len() > SIZE {
        bail!("the GRUB environment block is full ({} bytes)", out.len());
    }
    let mut data = out.into_bytes();
    data.resize(SIZE, b'#');
    Ok(data)
}

/// Sets (or, with an empty value, removes) variables, keeping the others.
pub fn update(vars: &mut Vec<(String, String)>, set: &[(&str, &str)]) {
    for (k, v) in set {
        vars.retain(|(n, _)| n != k);
        if !v.is_empty() {
            vars.push((k.to_string(), v.to_string()));
        }
    }
}

/// Writes `vars` to the block at `path`: in place when it exists (GRUB's
/// save_env writes the blocks the file has), else a new file.
pub fn save(path: &std::path::Path, vars: &[(String, String)]) -> Result<()> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let data = render(vars)?;
    // The block lives on a partition others can write: never through a
    // symlink, only a regular file of the block's size.
    let open = |create: bool| {
        fs_err::OpenOptions::new()
            .write(true)
            .create_new(create)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let mut f = match open(false) {
        Ok(f) => {
            let m = f.metadata()?;
            if !m.is_file() || m.len() != SIZE as u64 {
                bail!(
                    "{}: not a {SIZE}-byte GRUB environment block: not written",
                    path.display()
                );
            }
            f
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => open(true)?,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "opening {} (a symlink is not followed)",
                path.display()
            )));
        }
    };
    f.write_all(&data)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink or a file of another size where the block should be is
    /// never written through.
    #[test]
    fn save_writes_only_a_real_block() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs_err::write(&victim, vec![b'k'; SIZE]).unwrap();
        let env = d.path().join("grubenv");
        std::os::unix::fs::symlink(&victim, &env).unwrap();
        let vars = vec![("cairn_good".to_string(), "x".to_string())];
        assert!(save(&env, &vars).is_err());
        assert_eq!(fs_err::read(&victim).unwrap(), vec![b'k'; SIZE]);
        fs_err::remove_file(&env).unwrap();
        fs_err::write(&env, b"short").unwrap();
        assert!(
            save(&env, &vars)
                .unwrap_err()
                .to_string()
                .contains("not a 1024-byte")
        );
        fs_err::remove_file(&env).unwrap();
        save(&env, &vars).unwrap();
        save(&env, &vars).unwrap();
        assert_eq!(parse(&fs_err::read(&env).unwrap()).unwrap(), vars);
    }

    #[test]
    fn round_trip_keeps_size_and_order() {
        let mut v = parse(&render(&[]).unwrap()).unwrap();
        assert!(v.is_empty());
        update(
            &mut v,
            &[
                ("cairn_trial", "default-20261126T015228Z"),
                ("cairn_left", "3"),
            ],
        );
        update(&mut v, &[("cairn_good", "rollback>web-20261125T000000Z")]);
        let data = render(&v).unwrap();
        assert_eq!(data.len(), SIZE);
        assert!(data.starts_with(b"# GRUB Environment Block\ncairn_trial=default-"));
        assert_eq!(parse(&data).unwrap(), v);
        update(&mut v, &[("cairn_trial", "")]);
        assert_eq!(parse(&render(&v).unwrap()).unwrap().len(), 2);
    }

    #[test]
    fn refuses_what_grub_would_misread() {
        assert!(render(&[("a".into(), "x y".into())]).is_err());
        assert!(render(&[("a".into(), "x\ny".into())]).is_err());
        assert!(render(&[("a".into(), "x".repeat(1100))]).is_err());
        assert!(parse(b"short").is_err());
    }
}
