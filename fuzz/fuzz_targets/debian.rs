//! What a mirror's upstream sends, as cairn parses it: Release files (dates
//! included), Packages indices, deb822 paragraphs, relations, apt sources,
//! versions. Nothing may panic; dates and versions keep their laws.
#![no_main]

use std::cmp::Ordering;

use cairn_debian::{date, deb822, packages, relation, release, sources, version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = release::Release::parse(&text);
    let _ = packages::parse_packages(&text);
    // The pool entries `mirror verify` reads are read_packages' own, entry
    // for entry and error for error (valid UTF-8: both read it so).
    let mut full = Vec::new();
    let a = packages::read_packages(std::io::Cursor::new(data), |p| {
        full.push((p.filename, p.size, p.sha256))
    });
    if let Ok(utf8) = std::str::from_utf8(data) {
        let mut lean = Vec::new();
        let b = packages::read_pool_entries(utf8, |f, n, h| lean.push((f.to_string(), n, h)));
        let a = a.map_err(|e| e.to_string());
        assert_eq!(a, b.map_err(|e| e.to_string()));
        assert_eq!(full, lean);
        // Cut in parts read side by side: the same, first error included.
        let parts = packages::pool_entries_in_parts(utf8, 3, |_| true).map_err(|e| e.to_string());
        match a {
            Ok(()) => assert_eq!(parts, Ok(full)),
            Err(e) => assert_eq!(parts.err(), Some(e)),
        }
    }
    for p in deb822::paragraphs(&text).flatten() {
        for f in ["Depends", "Pre-Depends", "Provides", "Date", "Valid-Until"] {
            if let Some(v) = p.get(f) {
                let _ = relation::parse_relations(v);
                if let Ok(t) = date::parse_release_date(v) {
                    // What parses formats back to the same instant.
                    assert_eq!(date::parse_release_date(&date::format_release_date(t)).ok(), Some(t));
                }
            }
        }
    }
    let _ = sources::parse_deb822_sources(&text);
    let _ = sources::parse_one_line_sources(&text);
    let _ = date::parse_release_date(&text);
    // Versions: a total order.
    let (a, b) = text.split_once('\n').unwrap_or((&text, ""));
    assert_eq!(version::compare_versions(a, a), Ordering::Equal);
    assert_eq!(
        version::compare_versions(a, b),
        version::compare_versions(b, a).reverse()
    );
});
