//! The shared types of a system: what several of its nodes talk about (an order, a
//! transaction, an application), generated once in the system's shared models package.
//!
//! Two sources:
//! - **Declared** in a `## Data Model` section: `### Order` with fields as list items
//!   (`order_id: string — the shop's number`, `total (decimal)`, `note: text, optional`). The
//!   user's word wins: when the section exists, only its types are generated.
//! - **Inferred** otherwise: a noun that follows a determiner ("the order", "each transaction")
//!   and that at least two nodes mention. It gets an `id` and accepts any further fields, since
//!   the PRD does not say them.
//!
//! A node uses an entity when its description or requirements mention it.

use std::collections::{BTreeMap, BTreeSet};

use rust_stemmers::{Algorithm, Stemmer};

use crate::naming;
use crate::prd::Component;

/// Most entities inferred for one system: the rest are too rare to be worth a type.
const MAX_INFERRED: usize = 4;
/// Most fields of one declared entity.
const MAX_FIELDS: usize = 60;

/// Words that introduce a noun.
const DETERMINERS: &[&str] = &[
    "the", "a", "an", "each", "every", "its", "their", "per", "this", "that", "all", "any", "one",
];

/// Nouns that name the machinery rather than the business: never an entity of their own.
const GENERIC: &[&str] = &[
    "system",
    "service",
    "api",
    "database",
    "db",
    "event",
    "message",
    "topic",
    "kafka",
    "node",
    "step",
    "request",
    "response",
    "result",
    "record",
    "data",
    "time",
    "day",
    "week",
    "month",
    "minute",
    "second",
    "hour",
    "number",
    "error",
    "failure",
    "status",
    "state",
    "list",
    "batch",
    "queue",
    "table",
    "store",
    "provider",
    "webhook",
    "http",
    "https",
    "json",
    "postgresql",
    "postgres",
    "redis",
    "cache",
    "workflow",
    "pipeline",
    "orchestrator",
    "reducer",
    "compute",
    "effect",
    "command",
    "reply",
    "output",
    "input",
    "payload",
    "id",
    "value",
    "total",
    "count",
    "rate",
    "same",
    "other",
    "next",
    "first",
    "last",
    "new",
    "old",
    "latest",
    "current",
    "rest",
    "way",
    "case",
    "end",
    "start",
    "change",
    "update",
    "result",
    "window",
    "retry",
    "timeout",
    "version",
    "field",
    "key",
    "format",
    "file",
    "line",
    "run",
    "job",
    "task",
    "call",
    "check",
    "score",
    "rule",
    "team",
    "user",
    "client",
    "process",
    "flow",
    "way",
    "most",
    "least",
    "more",
    "less",
    "few",
    "many",
    "part",
    "whole",
    "given",
    "following",
    "previous",
    "original",
];

/// Adjectives that often follow a determiner ("the single", "an eligible").
const ADJECTIVES: &[&str] = &[
    "single",
    "internal",
    "external",
    "eligible",
    "complete",
    "chosen",
    "open",
    "live",
    "critical",
    "maximum",
    "minimum",
    "daily",
    "real",
    "full",
    "final",
    "valid",
    "invalid",
    "active",
    "pending",
    "available",
    "nightly",
    "hourly",
    "monthly",
    "weekly",
    "yearly",
    "such",
    "same",
    "own",
    "entire",
    "relevant",
    "appropriate",
    "correct",
    "right",
    "wrong",
    "late",
    "early",
    "high",
    "low",
    "large",
    "small",
    "big",
    "total",
    "partial",
    "manual",
    "automatic",
];

/// One type shared by nodes of a system.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// As the PRD writes it: `Order`, `Loan Application`.
    pub title: String,
    /// snake_case: `order`, `loan_application`.
    pub ident: String,
    pub description: String,
    pub fields: Vec<Field>,
    /// Declared in a `## Data Model` section (else inferred).
    pub declared: bool,
    /// Indices of the nodes that use it.
    pub users: Vec<usize>,
}

/// One field of an entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    /// A Python annotation built from a fixed vocabulary (never PRD text).
    pub annotation: String,
    pub required: bool,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataModelError {
    #[error("data model: type {0:?} has no usable name (letters first, at most 40 characters)")]
    BadTypeName(String),
    #[error("data model: type {0:?} is declared twice")]
    DuplicateType(String),
    #[error(
        "data model: field {field:?} of {entity:?} is not a valid field name (^[a-z][a-z0-9_]*$, not a Python keyword, not starting with model_)"
    )]
    BadFieldName { entity: String, field: String },
    #[error("data model: field {field:?} of {entity:?} is declared twice")]
    DuplicateField { entity: String, field: String },
}

/// The shared entities of a system of `components`, with `declared` the `## Data Model`
/// entries (if any).
pub fn shared_entities(
    declared: &[Component],
    components: &[Component],
) -> Result<Vec<Entity>, DataModelError> {
    let stemmer = Stemmer::create(Algorithm::English);
    let mentions: Vec<BTreeSet<String>> = components
        .iter()
        .map(|c| stems(&stemmer, &naming::words(&c.text())))
        .collect();
    // A node mentions `loan_application` when it mentions an application: the head noun.
    let users = |ident: &str| -> Vec<usize> {
        let head = ident.rsplit('_').next().unwrap_or(ident);
        let wanted = stemmer.stem(head).into_owned();
        (0..components.len())
            .filter(|i| mentions[*i].contains(&wanted))
            .collect()
    };
    if !declared.is_empty() {
        let mut out: Vec<Entity> = Vec::new();
        for d in declared {
            let entity = declared_entity(d)?;
            if out.iter().any(|e| e.ident == entity.ident) {
                return Err(DataModelError::DuplicateType(d.name.clone()));
            }
            out.push(Entity {
                users: users(&entity.ident),
                ..entity
            });
        }
        return Ok(out);
    }
    Ok(inferred(&stemmer, components)
        .into_iter()
        .map(|(title, ident)| Entity {
            description: format!(
                "The {}, as the nodes of this system exchange it.",
                title.to_lowercase()
            ),
            fields: vec![Field {
                name: "id".into(),
                annotation: "str".into(),
                required: true,
                description: format!("Identifies the {}.", title.to_lowercase()),
            }],
            declared: false,
            users: users(&ident),
            title,
            ident,
        })
        .collect())
}

fn stems(stemmer: &Stemmer, words: &[String]) -> BTreeSet<String> {
    words.iter().map(|w| stemmer.stem(w).into_owned()).collect()
}

/// Nouns after a determiner that two or more components mention: (title, ident), most widely
/// mentioned first, then in order of first appearance.
fn inferred(stemmer: &Stemmer, components: &[Component]) -> Vec<(String, String)> {
    // stem → (first position, surface forms seen after a determiner and how often)
    let mut seen: BTreeMap<String, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    let mut position = 0usize;
    let mut all_mentions: Vec<BTreeSet<String>> = Vec::new();
    for c in components {
        let words = naming::words(&c.text());
        all_mentions.push(stems(stemmer, &words));
        for pair in words.windows(2) {
            position += 1;
            let (det, noun) = (&pair[0], &pair[1]);
            if !DETERMINERS.contains(&det.as_str()) || !is_noun_like(noun) {
                continue;
            }
            let stem = stemmer.stem(noun).into_owned();
            let entry = seen
                .entry(stem)
                .or_insert_with(|| (position, BTreeMap::new()));
            *entry.1.entry(noun.clone()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(usize, usize, String, String)> = seen
        .into_iter()
        .filter_map(|(stem, (first, forms))| {
            let users = all_mentions.iter().filter(|m| m.contains(&stem)).count();
            // The singular form when it was seen, else the most frequent one made singular.
            let surface = forms
                .keys()
                .find(|f| !f.ends_with('s'))
                .cloned()
                .or_else(|| {
                    forms
                        .iter()
                        .max_by_key(|(_, n)| **n)
                        .map(|(f, _)| singular(stemmer, f))
                })?;
            (users >= 2 && naming::is_identifier(&surface)).then_some((users, first, stem, surface))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .take(MAX_INFERRED)
        .map(|(_, _, _, surface)| (naming::pascal(&surface), surface))
        .collect()
}

/// `orders` → `order`, when dropping the `s` keeps the stem (`address` stays).
fn singular(stemmer: &Stemmer, plural: &str) -> String {
    match plural.strip_suffix('s') {
        Some(one) if !one.ends_with('s') && stemmer.stem(one) == stemmer.stem(plural) => {
            one.to_string()
        }
        _ => plural.to_string(),
    }
}

/// Plain lowercase words that can be a business noun: not a participle or gerund, not a
/// number, not one of the machinery words.
fn is_noun_like(word: &str) -> bool {
    word.len() >= 3
        && word.chars().all(|c| c.is_ascii_lowercase())
        && !word.ends_with("ed")
        && !word.ends_with("ing")
        && !word.ends_with("ly")
        && !GENERIC.contains(&word)
        && !GENERIC.contains(&word.trim_end_matches('s'))
        && !ADJECTIVES.contains(&word)
        && !DETERMINERS.contains(&word)
}

/// A `### Name` entry of the data model as an entity.
fn declared_entity(d: &Component) -> Result<Entity, DataModelError> {
    let ident = naming::identifier_from(&d.name, &[], 4)
        .filter(|i| !i.ends_with("_op"))
        .ok_or_else(|| DataModelError::BadTypeName(d.name.clone()))?;
    let mut fields: Vec<Field> = Vec::new();
    for item in d.items.iter().take(MAX_FIELDS) {
        let field = parse_field(item).map_err(|field| DataModelError::BadFieldName {
            entity: d.name.clone(),
            field,
        })?;
        if fields.iter().any(|f| f.name == field.name) {
            return Err(DataModelError::DuplicateField {
                entity: d.name.clone(),
                field: field.name,
            });
        }
        fields.push(field);
    }
    let title = d.name.trim().to_string();
    let description = d
        .paragraphs
        .first()
        .cloned()
        .unwrap_or_else(|| format!("A {} of this system.", title.to_lowercase()));
    Ok(Entity {
        title,
        ident,
        description,
        fields,
        declared: true,
        users: Vec::new(),
    })
}

/// `name: type — description`, `name (type): description`, `name: type, optional` or `name`.
/// Err carries the name when it is not a usable field name.
fn parse_field(item: &str) -> Result<Field, String> {
    let item = item.trim();
    let (head, rest) = match item.find([':', '(', '—', '–']) {
        Some(at) => item.split_at(at),
        None => (item, ""),
    };
    let raw_name = head.trim().trim_matches('`').trim();
    // `Order ID` reads as `order_id`; a name that is no identifier either way is an error.
    let name = if naming::is_identifier(raw_name) {
        raw_name.to_string()
    } else {
        naming::words(raw_name).join("_")
    };
    if !naming::is_identifier(&name) || name.starts_with("model_") {
        return Err(raw_name.to_string());
    }
    let rest = rest.trim_start_matches([':', '(', '—', '–', ' ']);
    // The type is the first words up to a separator; the description the remainder.
    let (type_text, description) = match rest.find([')', '—', '–', ',', ';']) {
        Some(at) => (
            &rest[..at],
            rest[at..].trim_start_matches([')', '—', '–', ',', ';', ':', ' ']),
        ),
        None => (rest, ""),
    };
    let lower = item.to_lowercase();
    let optional = lower.contains("optional") || type_text.trim_end().ends_with('?');
    // `object, optional — attached later`: the description is what follows the marker.
    let description = match description.strip_prefix("optional") {
        Some(rest) => rest.trim_start_matches([')', '—', '–', ',', ';', ':', ' ']),
        None => description,
    };
    Ok(Field {
        name,
        annotation: annotation(type_text.trim().trim_end_matches('?')),
        required: !optional,
        description: description.trim().to_string(),
    })
}

/// The Python annotation for a type written in words.
fn annotation(type_text: &str) -> String {
    let words = naming::words(type_text);
    let first = words.first().map(String::as_str).unwrap_or("");
    let is = |names: &[&str]| names.contains(&first);
    if is(&["list", "array", "set", "sequence"]) {
        "list[JsonValue]".into()
    } else if is(&["object", "map", "dict", "dictionary", "json", "mapping"]) {
        "dict[str, JsonValue]".into()
    } else if is(&["int", "integer", "count", "long", "quantity"]) {
        "int".into()
    } else if is(&["float", "double", "number", "real", "ratio", "percentage"]) {
        "float".into()
    } else if is(&["decimal", "money", "amount", "currency", "price"]) {
        "Decimal".into()
    } else if is(&["bool", "boolean", "flag"]) {
        "bool".into()
    } else if is(&["datetime", "timestamp", "instant", "time"]) {
        "datetime".into()
    } else if is(&["date", "day"]) {
        "date".into()
    } else if first.is_empty() {
        "JsonValue".into()
    } else if is(&[
        "string",
        "str",
        "text",
        "uuid",
        "id",
        "identifier",
        "email",
        "url",
        "uri",
        "name",
        "enum",
        "code",
        "char",
        "varchar",
    ]) {
        "str".into()
    } else {
        "JsonValue".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(name: &str, text: &str) -> Component {
        Component {
            name: name.into(),
            paragraphs: vec![text.into()],
            ..Default::default()
        }
    }

    #[test]
    fn nouns_two_nodes_mention_become_entities() {
        let cs = [
            component("Stock Reservation", "Reserves the stock for each order."),
            component(
                "Payment Capture",
                "Captures the payment for the order total.",
            ),
            component("Courier Booking", "Books a courier for the parcel."),
        ];
        let es = shared_entities(&[], &cs).unwrap();
        let names: Vec<&str> = es.iter().map(|e| e.ident.as_str()).collect();
        assert_eq!(names, ["order"]);
        assert_eq!(es[0].users, [0, 1]);
        assert_eq!(es[0].title, "Order");
        assert_eq!(es[0].fields[0].name, "id");
    }

    #[test]
    fn a_declared_data_model_wins_and_types_its_fields() {
        let order = Component {
            name: "Order".into(),
            paragraphs: vec!["One order of the shop.".into()],
            items: vec![
                "order_id: string — the shop's number".into(),
                "total (decimal): what the customer pays".into(),
                "lines: list of order lines".into(),
                "placed_at: timestamp".into(),
                "note: text, optional — for the courier".into(),
                "Customer ID".into(),
            ],
            uses: vec![],
        };
        let cs = [
            component("Stock Reservation", "Reserves stock for each order."),
            component("Courier Booking", "Books a courier for the parcel."),
        ];
        let es = shared_entities(&[order], &cs).unwrap();
        assert_eq!(es.len(), 1);
        let e = &es[0];
        assert!(e.declared);
        assert_eq!(e.users, [0]);
        let got: Vec<(&str, &str, bool)> = e
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.annotation.as_str(), f.required))
            .collect();
        assert_eq!(
            got,
            [
                ("order_id", "str", true),
                ("total", "Decimal", true),
                ("lines", "list[JsonValue]", true),
                ("placed_at", "datetime", true),
                ("note", "str", false),
                ("customer_id", "JsonValue", true),
            ]
        );
        assert_eq!(e.fields[0].description, "the shop's number");
        assert_eq!(e.fields[4].description, "for the courier");
    }

    #[test]
    fn bad_field_names_are_named() {
        let bad = Component {
            name: "Order".into(),
            items: vec!["class: string".into()],
            ..Default::default()
        };
        let err = shared_entities(&[bad], &[]).unwrap_err();
        assert_eq!(
            err,
            DataModelError::BadFieldName {
                entity: "Order".into(),
                field: "class".into()
            }
        );
        let twice = Component {
            name: "Order".into(),
            items: vec!["id: string".into(), "id: int".into()],
            ..Default::default()
        };
        assert!(matches!(
            shared_entities(&[twice], &[]),
            Err(DataModelError::DuplicateField { .. })
        ));
    }
}
