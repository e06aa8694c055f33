//! Trust: hashes and OpenPGP signatures.

pub mod cert;
pub mod hash;
pub mod keys;
pub mod machine;
pub mod openpgp;

/// A check of signed or hashed data failed: tampering, corruption, or a
/// key that is not trusted — not an operational error. The command line
/// exits with its own code for it (see `cli::exit`), so that a script can
/// tell the two apart; callers match on the type, never on the message.
/// Every module raises it where it refuses data: said in words, or
/// `because` of a typed reason (a Release's dates, a hash that differs),
/// which it keeps for callers that match that type. This module lists
/// nobody's error types.
#[derive(Debug, thiserror::Error)]
pub enum VerificationFailed {
    #[error("{0}")]
    Said(String),
    #[error(transparent)]
    Because(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl VerificationFailed {
    /// A refusal in words.
    pub fn new(message: impl Into<String>) -> VerificationFailed {
        VerificationFailed::Said(message.into())
    }

    /// A refusal for a typed reason (its message is the reason's).
    pub fn because(reason: impl std::error::Error + Send + Sync + 'static) -> VerificationFailed {
        VerificationFailed::Because(Box::new(reason))
    }

    /// The typed reason, when it is a `T`.
    pub fn reason<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            VerificationFailed::Because(b) => b.downcast_ref::<T>(),
            VerificationFailed::Said(_) => None,
        }
    }
}

/// Whether an error (or any error it was caused by) is a failed verification.
pub fn is_verification_failure(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.is::<VerificationFailed>() || c.is::<openpgp::SignatureError>())
}
