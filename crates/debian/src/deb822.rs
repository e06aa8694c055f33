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
        let text = self.text;
        let bytes = text.as_bytes();
        let mut para = Paragraph::default();
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
            Some(Ok(para))
        }
    }
}

fn memchr_nl(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

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
