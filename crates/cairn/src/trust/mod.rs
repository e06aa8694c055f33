//! Trust: hashes and OpenPGP signatures.

pub mod cert;
pub mod hash;
pub mod keys;
pub mod openpgp;

/// A check of signed or hashed data failed: tampering, corruption, or a
/// key that is not trusted — not an operational error. The command line
/// exits with its own code for it (see `cli::exit`), so that a script can
/// tell the two apart; callers match on the type, never on the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VerificationFailed(pub String);

/// Whether an error (or any error it was caused by) is a failed verification.
pub fn is_verification_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<VerificationFailed>()
            || c.is::<openpgp::SignatureError>()
            || c.is::<crate::mirror::release::ReleaseError>()
            || matches!(
                c.downcast_ref::<crate::mirror::fetch::FetchError>(),
                Some(
                    crate::mirror::fetch::FetchError::HashMismatch { .. }
                        | crate::mirror::fetch::FetchError::SizeMismatch { .. }
                )
            )
    })
}
