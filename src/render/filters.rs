//! Escaping filters: the only way user text reaches generated code or YAML.
//!
//! `quote` makes a literal that means the same in Python and in YAML (double-quoted scalar);
//! `doc` and `comment` make single-line text that cannot end a docstring or a comment.

use crate::prd::is_format_char;

/// Longest text `doc` and `comment` keep, in characters.
const MAX_DOC_CHARS: usize = 200;

/// A double-quoted, ASCII-only literal valid both as a Python `str` and as a YAML scalar.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Single line, printable, at most [`MAX_DOC_CHARS`] characters: the same as
/// [`normalize`] then collapsing whitespace, in one pass (it runs for every docstring and
/// comment of every file).
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_DOC_CHARS + 3));
    let (mut chars, mut pending_space) = (0usize, false);
    for c in text.chars() {
        let space = match c {
            '\n' | '\t' | '\r' | '\u{2028}' | '\u{2029}' => true,
            c if c.is_control() || is_format_char(c) => continue,
            c => c.is_whitespace(),
        };
        if space {
            pending_space = !out.is_empty();
            continue;
        }
        for c in pending_space.then_some(' ').into_iter().chain([c]) {
            if chars == MAX_DOC_CHARS {
                out.push_str("...");
                return out;
            }
            out.push(c);
            chars += 1;
        }
        pending_space = false;
    }
    out
}

/// Text for inside a Python `"""docstring"""`.
pub fn doc(text: &str) -> String {
    let line = one_line(text);
    if line.is_empty() {
        return "No description provided.".to_string();
    }
    line.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Text for after `#` in Python or YAML.
pub fn comment(text: &str) -> String {
    one_line(text)
}

/// Greedy word wrap of a `quote`d literal without its outer quotes: lines of at most `width`
/// characters joined with `\n` (a longer word gets a line of its own). The literal is ASCII
/// and its escapes hold no spaces, so wrapping never splits an escape.
pub fn wrap_quoted(quoted: &str, width: usize) -> String {
    let inner = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or("");
    let mut out = String::with_capacity(inner.len() + 8);
    let mut line_len = 0usize;
    for word in inner.split(' ').filter(|w| !w.is_empty()) {
        if line_len == 0 {
            out.push_str(word);
            line_len = word.len();
        } else if line_len + 1 + word.len() <= width {
            out.push(' ');
            out.push_str(word);
            line_len += 1 + word.len();
        } else {
            out.push('\n');
            out.push_str(word);
            line_len = word.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_everything_that_matters() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny\u{0}"), "\"x\\ny\\u0000\"");
        assert_eq!(quote("é😀"), "\"\\u00e9\\U0001f600\"");
        assert_eq!(quote("{{ x }}"), "\"{{ x }}\"");
    }

    #[test]
    fn wrap_quoted_wraps_inside_the_quotes() {
        assert_eq!(wrap_quoted("\"aa bb  cc dddddd\"", 5), "aa bb\ncc\ndddddd");
        assert_eq!(wrap_quoted("\"\"", 5), "");
    }

    #[test]
    fn doc_cannot_close_a_docstring() {
        assert_eq!(doc("a \"\"\" b \\N{x"), "a \\\"\\\"\\\" b \\\\N{x");
        assert_eq!(doc("  \n "), "No description provided.");
        assert_eq!(comment("line1\nline2\u{202e}"), "line1 line2");
        assert_eq!(doc(&"x".repeat(500)).len(), 203);
    }

    /// The one-pass `one_line` gives what normalising, collapsing and clipping give.
    #[test]
    fn one_line_matches_normalize_then_collapse() {
        fn reference(text: &str) -> String {
            let clean = crate::prd::normalize(text);
            let collapsed = clean.split_whitespace().collect::<Vec<_>>().join(" ");
            if collapsed.chars().count() > MAX_DOC_CHARS {
                let mut cut: String = collapsed.chars().take(MAX_DOC_CHARS).collect();
                cut.push_str("...");
                cut
            } else {
                collapsed
            }
        }
        let long_words = "word ".repeat(60);
        let cases = [
            "",
            "   ",
            "a\x0bb\x0cc\u{85}d",
            "a \u{1} b\r\nc\u{2028}d\u{3000}e",
            "x\u{200b}y \u{feff} z",
            "\t lead and trail \n",
            &long_words,
            &"é".repeat(199),
            &"é".repeat(201),
            &format!("{} b", "a".repeat(199)),
            &format!("{}  b", "a".repeat(200)),
            &format!("{} b", "a".repeat(200)),
        ];
        for case in cases {
            assert_eq!(one_line(case), reference(case), "{case:?}");
        }
    }
}
