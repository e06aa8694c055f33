//! deb822 control paragraphs (`Packages`, `Release`, `*.sources`), borrowed from the input.

use crate::ParseError;

/// One paragraph: fields in file order, values borrowed from the input.
/// A value is the text after `Field:` with continuation lines kept verbatim
/// (newlines included) and surrounding whitespace trimmed.
#[derive(Debug, Clone, Default)]
pub struct Paragraph<'a> {
    pub fields: Vec<(&'a str, &'a str)>,
    /// 1-based line number where the paragraph starts.
    pub line: usize,
}

impl<'a> Paragraph<'a> {
    /// Field value by case-insensitive name, as deb822 defines field names.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Iterates over the paragraphs of a deb822 text. Comment lines (`#`) are
/// skipped; a line that is neither a field, a continuation nor blank is an error.
pub fn paragraphs(text: &str) -> Paragraphs<'_> {
    Paragraphs {
        text,
        pos: 0,
        line: 0,
    }
}

pub struct Paragraphs<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Iterator for Paragraphs<'a> {
    type Item = Result<Paragraph<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut para = Paragraph::default();
        Some(self.next_into(&mut para)?.map(|()| para))
    }
}

impl<'a> Paragraphs<'a> {
    /// `next`, into a paragraph the caller reuses from one to the next
    /// (its fields are cleared first): no allocation per paragraph.
    pub fn next_into(&mut self, para: &mut Paragraph<'a>) -> Option<Result<(), ParseError>> {
        let text = self.text;
        let bytes = text.as_bytes();
        para.fields.clear();
        para.line = 0;
        // (name, value start, value end) of the field being read.
        let mut open: Option<(&'a str, usize, usize)> = None;
        while self.pos < bytes.len() {
            let start = self.pos;
            let end = memchr_nl(bytes, start);
            self.pos = if end < bytes.len() { end + 1 } else { end };
            self.line += 1;
            let line = &text[start..end];
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                if open.is_some() || !para.fields.is_empty() {
                    break;
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                match open.as_mut() {
                    Some((_, _, vend)) => *vend = start + line.len(),
                    None => {
                        return Some(Err(ParseError::Line {
                            line: self.line,
                            msg: "continuation line outside a field".into(),
                        }));
                    }
                }
                continue;
            }
            let Some(colon) = line.find(':') else {
                return Some(Err(ParseError::Line {
                    line: self.line,
                    msg: format!("expected `Field: value`, found {line:?}"),
                }));
            };
            if let Some((name, vs, ve)) = open.take() {
                para.fields.push((name, text[vs..ve].trim()));
            }
            if para.fields.is_empty() {
                para.line = self.line;
            }
            open = Some((&line[..colon], start + colon + 1, start + line.len()));
        }
        if let Some((name, vs, ve)) = open.take() {
            para.fields.push((name, text[vs..ve].trim()));
        }
        if para.fields.is_empty() {
            None
        } else {
            Some(Ok(()))
        }
    }
}

fn memchr_nl(bytes: &[u8], from: usize) -> usize {
    // Eight bytes at a time: a word with a newline in it has a zero byte
    // once XORed with newlines, and `(x - 0x01..) & !x & 0x80..` finds it.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= bytes.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i..i + 8]);
        let x = u64::from_le_bytes(w) ^ (ONES * u64::from(b'\n'));
        let z = x.wrapping_sub(ONES) & !x & HIGHS;
        if z != 0 {
            return i + (z.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newline found eight bytes at a time is the first one, wherever
    /// it sits in a word, whatever bytes are around it (0x0a's neighbours,
    /// high bytes, zeros), and none is found where there is none.
    #[test]
    fn the_first_newline_is_found_at_any_offset() {
        let alphabet = [b'\n', b'\n' + 1, b'\n' - 1, 0, 0x80, 0xff, 0x8a, b'a', b' '];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|k| alphabet[((seed >> (k % 60)) as usize + k * 7) % alphabet.len()])
                .collect();
            for from in 0..=len {
                let naive = bytes[from..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(len, |p| from + p);
                assert_eq!(memchr_nl(&bytes, from), naive, "{bytes:?} from {from}");
            }
        }
    }

    #[test]
    fn fields_continuations_and_comments() {
        let text = "# c\nPackage: a\nDescription: one\n two\n .\n\n\n\nPackage: b\r\nVersion: 1\n";
        let ps: Vec<_> = paragraphs(text).collect::<Result<_, _>>().unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("package"), Some("a"));
        assert_eq!(ps[0].get("Description"), Some("one\n two\n ."));
        assert_eq!(ps[0].line, 2);
        assert_eq!(ps[1].get("Version"), Some("1"));
        assert_eq!(ps[1].line, 9);
    }

    #[test]
    fn errors_name_the_line() {
        let err = paragraphs("A: 1\nnonsense\n").next().unwrap().unwrap_err();
        assert_eq!(
            err,
            ParseError::Line {
                line: 2,
                msg: "expected `Field: value`, found \"nonsense\"".into()
            }
        );
        let err = paragraphs(" x\n").next().unwrap().unwrap_err();
        assert!(matches!(err, ParseError::Line { line: 1, .. }));
    }
}
