//! Mirroring Debian repositories: verified, parallel, resumable, published
//! atomically. `sync` fetches and publishes, `verify` re-checks and repairs.

pub mod closure;
pub mod config;
pub mod fetch;
pub mod release;
pub mod snapshot;
pub mod state;
pub mod sync;
pub mod url;
pub mod verify;
