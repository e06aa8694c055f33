//! X.509 certificates for Secure Boot (your db or MOK key's): read as DER
//! whatever form the file is in.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::tool::OPENSSL;
use crate::cmd::{Cmd, require};

/// A certificate file (PEM or DER) as DER.
pub fn der(path: &Path) -> Result<Vec<u8>> {
    let raw = fs_err::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !raw.starts_with(b"-----BEGIN") {
        return Ok(raw);
    }
    require(&[&OPENSSL])?;
    let out = Cmd::new(OPENSSL.program)
        .args(["x509", "-outform", "DER", "-in"])
        .arg(path)
        .run()
        .with_context(|| format!("reading the certificate {}", path.display()))?;
    Ok(out.stdout)
}
