//! The Debian archive format as cairn reads it: deb822 paragraphs, version
//! ordering, dependency relations, `Release` and `Packages` indices, and apt's
//! source lists. Pure parsing: no I/O beyond what a caller hands in.

pub mod date;
pub mod deb822;
pub mod packages;
pub mod relation;
pub mod release;
pub mod sources;
pub mod version;

pub use deb822::{Paragraph, paragraphs};
pub use packages::{
    Package, PoolEntry, parse_packages, pool_entries_in_parts, read_packages, read_pool_entries,
};
pub use relation::{Constraint, Relation, parse_relations};
pub use release::{Release, ReleaseFile};
pub use sources::{SourceEntry, parse_deb822_sources, parse_one_line_sources};
pub use version::compare_versions;

/// A parse failure, with the line it happened on where there is one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {msg}")]
    Line { line: usize, msg: String },
    #[error("{0}")]
    Other(String),
}
