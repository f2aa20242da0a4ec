//! Turning free text into safe identifiers.
//!
//! Every name that reaches generated code (service, domain, operation, class) comes from here and
//! matches `^[a-z][a-z0-9_]*$` (or its PascalCase form), so templates never place user text in an
//! identifier position.

/// Longest identifier derived from text.
pub const MAX_IDENT_LEN: usize = 40;

const PYTHON_KEYWORDS: &[&str] = &[
    "false", "none", "true", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "match", "case", "type", "print", "self",
];

/// Whether `name` is a valid service/domain/operation identifier.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= MAX_IDENT_LEN
        && !name.ends_with('_')
        && !name.contains("__")
        && !PYTHON_KEYWORDS.contains(&name)
}

/// Lowercase ASCII words of `text`, transliterated first (`ünïcödé` → `unicode`); anything that
/// is not a letter or digit separates words.
pub fn words(text: &str) -> Vec<String> {
    deunicode::deunicode(text)
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// A snake_case identifier from the first `max_words` meaningful words of `text`.
pub fn identifier_from(text: &str, stopwords: &[String], max_words: usize) -> Option<String> {
    let picked: Vec<String> = words(text)
        .into_iter()
        .filter(|w| !stopwords.iter().any(|s| s == w))
        .take(max_words)
        .collect();
    let mut ident = String::new();
    for w in picked {
        let candidate = if ident.is_empty() {
            w.clone()
        } else {
            format!("{ident}_{w}")
        };
        if candidate.len() > MAX_IDENT_LEN {
            break;
        }
        ident = candidate;
    }
    if ident.is_empty() {
        return None;
    }
    if !ident.starts_with(|c: char| c.is_ascii_lowercase()) {
        ident = format!("n{ident}");
    }
    if PYTHON_KEYWORDS.contains(&ident.as_str()) {
        ident.push_str("_op");
    }
    is_identifier(&ident).then_some(ident)
}

/// `postgres_writer` → `PostgresWriter`.
pub fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// A DNS-1123 label from an identifier (`postgres_writer` → `postgres-writer`).
pub fn dns_label(ident: &str) -> String {
    ident.replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_safe() {
        let stop = vec!["the".to_string(), "must".to_string()];
        assert_eq!(
            identifier_from("The node MUST write orders!", &stop, 3).as_deref(),
            Some("node_write_orders")
        );
        assert_eq!(
            identifier_from("class", &stop, 3).as_deref(),
            Some("class_op")
        );
        assert_eq!(
            identifier_from("9lives", &stop, 3).as_deref(),
            Some("n9lives")
        );
        assert_eq!(
            identifier_from("ünïcödé", &stop, 3).as_deref(),
            Some("unicode")
        );
        assert_eq!(
            identifier_from("__init__", &stop, 3).as_deref(),
            Some("init")
        );
        assert_eq!(
            identifier_from("🙂", &stop, 3).as_deref(),
            Some("slight_smile")
        );
        assert_eq!(identifier_from("!!! --- ???", &stop, 3), None);
        assert!(!is_identifier("Robert'); DROP TABLE--"));
        assert!(!is_identifier("none"));
        assert_eq!(pascal("postgres_writer"), "PostgresWriter");
    }
}
