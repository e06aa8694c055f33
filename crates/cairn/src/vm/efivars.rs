//! UEFI variables written into a copy of OVMF's variable store, so a VM
//! starts with the user's own Secure Boot keys enrolled (PK, KEK, db) or with
//! a certificate in shim's MOK list — what a sysadmin does once on a real
//! machine in the firmware setup or with `mokutil`.
//!
//! The store (edk2's "authenticated variable" format) is a firmware volume
//! header, a variable store header, then variables one after another: a
//! 60-byte header (start id 0x55AA, state, attributes, monotonic count,
//! timestamp, public key index, name size, data size, vendor GUID), the name
//! in UTF-16 and the data, each aligned to 4 bytes; free space is 0xFF.
//! New variables are appended into the free space; a variable of the same
//! name and GUID already there is marked deleted, as the firmware does.

use anyhow::{Result, bail};

/// EFI_GLOBAL_VARIABLE: PK, KEK.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// EFI_IMAGE_SECURITY_DATABASE_GUID: db.
pub const IMAGE_SECURITY: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// SHIM_LOCK_GUID: MokList.
pub const SHIM_LOCK: &str = "605dab50-e046-4300-abb6-3dd810dd8b23";
/// EFI_CERT_X509_GUID: a signature list of X.509 certificates.
const CERT_X509: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
/// The owner cairn records for the certificates it enrols.
const OWNER: &str = "c4a1e0b6-2f3d-4c8e-9a61-6361726e0001";

const NON_VOLATILE: u32 = 0x1;
const BOOTSERVICE: u32 = 0x2;
const RUNTIME: u32 = 0x4;
const TIME_BASED_AUTH: u32 = 0x20;
/// PK, KEK, db.
pub const AUTH_ATTRS: u32 = NON_VOLATILE | BOOTSERVICE | RUNTIME | TIME_BASED_AUTH;
/// MokList: boot services only (shim refuses a MokList visible at runtime).
pub const MOK_ATTRS: u32 = NON_VOLATILE | BOOTSERVICE;

const START_ID: u16 = 0x55aa;
const VAR_ADDED: u8 = 0x3f;
/// VAR_ADDED & VAR_IN_DELETED_TRANSITION: still valid.
const VAR_IN_TRANSITION: u8 = 0x3e;
/// VAR_ADDED & VAR_IN_DELETED_TRANSITION & VAR_DELETED.
const VAR_GONE: u8 = 0x3c;
const HEADER: usize = 60;
const STORE_HEADER: usize = 28;
/// gEfiAuthenticatedVariableGuid: the store holds authenticated headers.
const AUTH_STORE: &str = "aaf32c78-947b-439a-a180-2e144ec37792";

/// A GUID in its text form, as the firmware lays it out in memory (the
/// first three fields little-endian).
pub fn guid(s: &str) -> Result<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        bail!("not a GUID: {s}");
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Ok(b)
}

/// An EFI_SIGNATURE_LIST holding one X.509 certificate (DER).
pub fn x509_list(der: &[u8]) -> Result<Vec<u8>> {
    let entry = 16 + der.len();
    let mut v = Vec::with_capacity(28 + entry);
    v.extend_from_slice(&guid(CERT_X509)?);
    v.extend_from_slice(&((28 + entry) as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&(entry as u32).to_le_bytes());
    v.extend_from_slice(&guid(OWNER)?);
    v.extend_from_slice(der);
    Ok(v)
}

/// A variable to write.
pub struct Var {
    pub name: String,
    pub guid: [u8; 16],
    pub attrs: u32,
    pub data: Vec<u8>,
}

/// One variable found in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub offset: usize,
    pub name: String,
    pub guid: [u8; 16],
    pub attrs: u32,
    pub valid: bool,
    pub data: Vec<u8>,
}

/// Where the variable area of a store starts and ends.
fn area(fd: &[u8]) -> Result<(usize, usize)> {
    if fd.len() < 0x48 || &fd[40..44] != b"_FVH" {
        bail!("not a UEFI firmware volume (no _FVH signature)");
    }
    let fv_header = u16::from_le_bytes([fd[48], fd[49]]) as usize;
    let s = fv_header;
    if fd.len() < s + STORE_HEADER || fd[s..s + 16] != guid(AUTH_STORE)? {
        bail!("not an authenticated variable store (an OVMF_VARS file is)");
    }
    let size = u32::from_le_bytes(fd[s + 16..s + 20].try_into()?) as usize;
    if s + size > fd.len() {
        bail!("variable store larger than the file");
    }
    Ok((s + STORE_HEADER, s + size))
}

/// Every variable in the store (deleted ones too), and where free space starts.
pub fn list(fd: &[u8]) -> Result<(Vec<Found>, usize)> {
    let (mut p, end) = area(fd)?;
    let mut out = Vec::new();
    while p + HEADER <= end && u16::from_le_bytes([fd[p], fd[p + 1]]) == START_ID {
        let state = fd[p + 2];
        let attrs = u32::from_le_bytes(fd[p + 4..p + 8].try_into()?);
        let name_size = u32::from_le_bytes(fd[p + 36..p + 40].try_into()?) as usize;
        let data_size = u32::from_le_bytes(fd[p + 40..p + 44].try_into()?) as usize;
        let g: [u8; 16] = fd[p + 44..p + 60].try_into()?;
        let n = p + HEADER;
        if n + name_size + data_size > end {
            bail!("variable at {p:#x} runs past the store");
        }
        let units: Vec<u16> = fd[n..n + name_size]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        out.push(Found {
            offset: p,
            name: String::from_utf16_lossy(&units),
            guid: g,
            attrs,
            valid: state == VAR_ADDED || state == VAR_IN_TRANSITION,
            data: fd[n + name_size..n + name_size + data_size].to_vec(),
        });
        p = (n + name_size + data_size + 3) & !3;
    }
    Ok((out, p))
}

/// `fd` with `vars` added (replacing valid variables of the same name and
/// GUID). Authenticated variables get a fixed timestamp, as an enrolment
/// tool's would.
pub fn add(fd: &[u8], vars: &[Var]) -> Result<Vec<u8>> {
    let mut out = fd.to_vec();
    let (_, end) = area(fd)?;
    let (found, mut p) = list(fd)?;
    for v in vars {
        for f in found
            .iter()
            .filter(|f| f.valid && f.name == v.name && f.guid == v.guid)
        {
            out[f.offset + 2] = VAR_GONE;
        }
        let name: Vec<u8> = v
            .name
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
        let len = HEADER + name.len() + v.data.len();
        if p + len > end {
            bail!("the variable store is full");
        }
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(&START_ID.to_le_bytes());
        h.push(VAR_ADDED);
        h.push(0);
        h.extend_from_slice(&v.attrs.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes()); // monotonic count
        let mut time = [0u8; 16];
        if v.attrs & TIME_BASED_AUTH != 0 {
            // 2026-01-01 00:00:00 (EFI_TIME: year, month, day, ...).
            time[0..2].copy_from_slice(&2026u16.to_le_bytes());
            time[2] = 1;
            time[3] = 1;
        }
        h.extend_from_slice(&time);
        h.extend_from_slice(&0u32.to_le_bytes()); // public key index
        h.extend_from_slice(&(name.len() as u32).to_le_bytes());
        h.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
        h.extend_from_slice(&v.guid);
        out[p..p + HEADER].copy_from_slice(&h);
        out[p + HEADER..p + HEADER + name.len()].copy_from_slice(&name);
        out[p + HEADER + name.len()..p + len].copy_from_slice(&v.data);
        p = (p + len + 3) & !3;
    }
    Ok(out)
}

/// PK, KEK and db set to one certificate: the machine then trusts what that
/// key signs (and nothing else), in user mode, Secure Boot on.
pub fn enrol_own_key(fd: &[u8], der: &[u8]) -> Result<Vec<u8>> {
    let list = x509_list(der)?;
    let var = |name: &str, g: &str| -> Result<Var> {
        Ok(Var {
            name: name.into(),
            guid: guid(g)?,
            attrs: AUTH_ATTRS,
            data: list.clone(),
        })
    };
    add(
        fd,
        &[
            var("db", IMAGE_SECURITY)?,
            var("KEK", GLOBAL)?,
            var("PK", GLOBAL)?,
        ],
    )
}

/// A certificate in shim's MOK list, as `mokutil --import` and MokManager
/// would leave it.
pub fn enrol_mok(fd: &[u8], der: &[u8]) -> Result<Vec<u8>> {
    add(
        fd,
        &[Var {
            name: "MokList".into(),
            guid: guid(SHIM_LOCK)?,
            attrs: MOK_ATTRS,
            data: x509_list(der)?,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty store laid out as OVMF's: volume header, store header, free.
    fn empty_store() -> Vec<u8> {
        let mut fd = vec![0u8; 0x48];
        fd[40..44].copy_from_slice(b"_FVH");
        fd[48..50].copy_from_slice(&0x48u16.to_le_bytes());
        fd.extend_from_slice(&guid(AUTH_STORE).unwrap());
        fd.extend_from_slice(&0x1000u32.to_le_bytes());
        fd.extend_from_slice(&[0x5a, 0xfe, 0, 0, 0, 0, 0, 0]);
        fd.resize(0x48 + 0x1000, 0xff);
        fd
    }

    #[test]
    fn guids_are_laid_out_as_the_firmware_does() {
        assert_eq!(
            guid(GLOBAL).unwrap(),
            [
                0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
                0x2b, 0x8c
            ]
        );
        assert!(guid("8be4df61").is_err());
    }

    #[test]
    fn keys_are_added_read_back_and_replaced() {
        let der = b"0\x82not really DER".to_vec();
        let fd = enrol_own_key(&empty_store(), &der).unwrap();
        let (vars, free) = list(&fd).unwrap();
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["db", "KEK", "PK"]);
        assert!(vars.iter().all(|v| v.valid && v.attrs == 0x27));
        assert_eq!(vars[2].guid, guid(GLOBAL).unwrap());
        // The signature list: X.509 type, sizes, owner, the certificate.
        let l = &vars[0].data;
        assert_eq!(&l[0..16], &guid(CERT_X509).unwrap());
        assert_eq!(
            u32::from_le_bytes(l[16..20].try_into().unwrap()) as usize,
            l.len()
        );
        assert_eq!(&l[44..], &der[..]);
        assert_eq!(free % 4, 0);
        assert_eq!(fd[free], 0xff);

        // A second MokList replaces the first: one valid, one deleted.
        let m = enrol_mok(&enrol_mok(&fd, b"first").unwrap(), b"second").unwrap();
        let (vars, _) = list(&m).unwrap();
        let moks: Vec<(bool, u32)> = vars
            .iter()
            .filter(|v| v.name == "MokList")
            .map(|v| (v.valid, v.attrs))
            .collect();
        assert_eq!(moks, [(false, 3), (true, 3)]);
        assert_eq!(m[vars.iter().find(|v| !v.valid).unwrap().offset + 2], 0x3c);
        assert!(vars.last().unwrap().data.ends_with(b"second"));
        assert!(add(&[0u8; 100], &[]).is_err());
    }
}
