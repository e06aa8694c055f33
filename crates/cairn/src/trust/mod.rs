//! Trust: hashes and OpenPGP signatures.

pub mod cert;
pub mod hash;
pub mod keys;
pub mod openpgp;
