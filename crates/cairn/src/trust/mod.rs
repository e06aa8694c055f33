//! Trust: hashes and OpenPGP signatures.

pub mod hash;
pub mod keys;
pub mod openpgp;
