//! PRD Markdown → typed requirements.
//!
//! The Markdown is parsed with `pulldown-cmark`; we only interpret its structure (headings,
//! paragraphs, list items). Text is normalised first (line endings, control characters) so that
//! nothing downstream ever sees bytes a template could choke on.

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

/// Largest PRD accepted, in bytes (Kubernetes objects cannot be much larger anyway).
pub const MAX_PRD_BYTES: usize = 1024 * 1024;
/// Longest list item or paragraph kept, in characters; the rest is cut.
const MAX_TEXT_CHARS: usize = 2000;
/// Fewest words (besides the title) a PRD must have.
const MIN_BODY_WORDS: usize = 3;
/// Most list items kept per section.
const MAX_ITEMS: usize = 200;

/// A parsed PRD.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prd {
    /// The first level-1 heading, if any.
    pub title: Option<String>,
    /// Prose before the first section plus the overview section.
    pub overview: String,
    pub functional_requirements: Vec<String>,
    pub features: Vec<String>,
    pub success_criteria: Vec<String>,
    pub technical_details: Vec<String>,
    pub dependencies: Vec<String>,
    /// Components of a multi-node PRD (`## Nodes` / `## Components` with `### Name` entries).
    pub components: Vec<Component>,
    /// Types declared in a `## Data Model` (or `## Entities`, `## Shared Types`) section, one
    /// `### Name` entry each, whose list items are its fields (`name: type — description`).
    pub entities: Vec<Component>,
    /// Every section as found, for analysis of sections we do not name.
    pub sections: Vec<Section>,
}

/// A `##` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    pub heading: String,
    pub paragraphs: Vec<String>,
    pub items: Vec<String>,
}

/// One component of a multi-node PRD.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Component {
    pub name: String,
    pub paragraphs: Vec<String>,
    pub items: Vec<String>,
    /// The node names of its wiring lines (`Uses: A, B`, `Depends on: C`), as written; they
    /// are neither paragraphs nor requirements.
    pub uses: Vec<String>,
}

/// Labels of a component's wiring lines.
const WIRING_LABELS: [&str; 2] = ["uses", "depends on"];

/// The node names a wiring line (`Uses: A, B and C`) names, or None when `line` is not one.
pub fn wiring_names(line: &str) -> Option<Vec<String>> {
    let (label, rest) = line.trim().split_once(':')?;
    if !WIRING_LABELS.contains(&label.trim().to_ascii_lowercase().as_str()) {
        return None;
    }
    let names = rest
        .split([',', ';'])
        .map(|part| {
            let part = part.trim();
            part.strip_prefix("and ").unwrap_or(part)
        })
        .flat_map(|part| part.split(" and "))
        .map(|name| name.trim().trim_end_matches('.').trim())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    Some(names)
}

impl Component {
    pub fn text(&self) -> String {
        let mut parts = vec![self.name.clone()];
        parts.extend(self.paragraphs.iter().cloned());
        parts.extend(self.items.iter().cloned());
        parts.join("\n")
    }
}

/// Why a document is not a PRD.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrdError {
    #[error("the PRD is empty")]
    Empty,
    #[error("the PRD is {0} bytes; the limit is {MAX_PRD_BYTES}")]
    TooLarge(usize),
    #[error(
        "the PRD has no content besides its title (at least a sentence is needed): add an overview or requirements"
    )]
    NoContent,
}

impl PrdError {
    /// CamelCase reason for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            PrdError::Empty => "PrdEmpty",
            PrdError::TooLarge(_) => "PrdTooLarge",
            PrdError::NoContent => "PrdNoContent",
        }
    }
}

/// Which named section a heading maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Overview,
    Functional,
    Features,
    Success,
    Technical,
    Dependencies,
    Components,
    DataModel,
    Other,
}

fn section_kind(heading: &str) -> Kind {
    let h = heading.to_lowercase();
    let has = |w: &str| h.contains(w);
    if has("node") && !has("non") || has("component") {
        Kind::Components
    } else if has("data model")
        || h.split_whitespace().any(|w| w.starts_with("entit"))
        || has("shared type")
        || has("shared model")
        || has("domain model")
    {
        Kind::DataModel
    } else if has("overview")
        || has("summary")
        || has("background")
        || has("purpose")
        || has("goal") && !has("non")
        || has("problem")
        || has("context")
    {
        Kind::Overview
    } else if has("functional")
        || has("requirement")
        || has("user stor")
        || has("use case")
        || has("capabilit")
    {
        Kind::Functional
    } else if has("feature") {
        Kind::Features
    } else if has("success") || has("acceptance") || has("metric") || has("kpi") {
        Kind::Success
    } else if has("technical")
        || has("architecture")
        || has("implementation")
        || has("design")
        || has("integration")
    {
        Kind::Technical
    } else if has("dependenc") || has("prerequisite") {
        Kind::Dependencies
    } else {
        Kind::Other
    }
}

/// Normalise raw text: unify line endings, drop control and invisible format characters
/// (keeping tab and newline), so every later stage works on clean, printable text.
pub fn normalize(raw: &str) -> String {
    let unified = raw.replace("\r\n", "\n").replace('\r', "\n");
    unified
        .chars()
        .filter_map(|c| match c {
            '\n' | '\t' => Some(c),
            '\u{2028}' | '\u{2029}' => Some('\n'),
            c if c.is_control() => None,
            c if is_format_char(c) => None,
            c => Some(c),
        })
        .collect()
}

/// Unicode format characters (bidi overrides, zero-width characters, BOM) that could make text
/// read differently from what it is.
pub(crate) fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn clip(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() > MAX_TEXT_CHARS {
        collapsed.chars().take(MAX_TEXT_CHARS).collect()
    } else {
        collapsed
    }
}

/// Parse PRD Markdown.
pub fn parse(raw: &str) -> Result<Prd, PrdError> {
    if raw.len() > MAX_PRD_BYTES {
        return Err(PrdError::TooLarge(raw.len()));
    }
    let text = normalize(raw);
    if text.trim().is_empty() {
        return Err(PrdError::Empty);
    }

    let mut builder = Builder::default();
    for event in Parser::new(&text) {
        builder.event(event);
    }
    let prd = builder.finish();

    // A PRD says something in words: at least a short sentence besides the title.
    let mut body = prd.all_text();
    if let Some(title) = &prd.title {
        body = body.replacen(title.as_str(), "", 1);
    }
    let words = body
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 2)
        .count();
    if words < MIN_BODY_WORDS {
        return Err(PrdError::NoContent);
    }
    Ok(prd)
}

/// Folds the Markdown event stream into a [`Prd`].
#[derive(Default)]
struct Builder {
    prd: Prd,
    /// Text of the block being read (heading, paragraph or list item).
    buf: String,
    in_heading: Option<HeadingLevel>,
    /// Open list items, innermost last; `None` once the item's text was emitted (when a nested
    /// list started), so items come out in document order.
    item_stack: Vec<Option<String>>,
    current: Option<(Kind, Section)>,
    component: Option<Component>,
    in_code: bool,
}

impl Builder {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                self.flush_text();
                self.in_heading = Some(level);
                self.buf.clear();
            }
            Event::End(TagEnd::Heading(level)) => {
                let heading = clip(&std::mem::take(&mut self.buf));
                self.in_heading = None;
                self.heading(level, heading);
            }
            Event::Start(Tag::Item) => {
                self.flush_text();
                self.item_stack.push(Some(String::new()));
            }
            Event::End(TagEnd::Item) => {
                let rest = std::mem::take(&mut self.buf);
                match self.item_stack.pop() {
                    Some(Some(mut item)) => {
                        item.push_str(&rest);
                        self.push_item(clip(&item));
                    }
                    // Text after a nested list stands as an item of its own.
                    _ => self.push_item(clip(&rest)),
                }
            }
            Event::Start(Tag::List(_)) => {
                // Text of a parent item ends where its nested list starts.
                if let Some(top) = self.item_stack.last_mut()
                    && let Some(mut item) = top.take()
                {
                    item.push_str(&std::mem::take(&mut self.buf));
                    self.push_item(clip(&item));
                }
            }
            Event::End(TagEnd::Paragraph) if self.item_stack.is_empty() => self.flush_text(),
            Event::Start(Tag::CodeBlock(_)) => {
                self.flush_text();
                self.in_code = true;
            }
            Event::End(TagEnd::CodeBlock) => {
                // Code blocks are examples, not requirements: they are not analysed.
                self.in_code = false;
                self.buf.clear();
            }
            Event::Text(t) | Event::Code(t) if !self.in_code => {
                self.buf.push_str(&t);
            }
            // Kept as a line break until the text is flushed, so a wiring line stays a line.
            Event::SoftBreak | Event::HardBreak => self.buf.push('\n'),
            Event::End(TagEnd::TableCell) => self.buf.push(' '),
            Event::End(TagEnd::TableRow) | Event::End(TagEnd::TableHead) => self.flush_text(),
            _ => {}
        }
    }

    fn heading(&mut self, level: HeadingLevel, heading: String) {
        match level {
            HeadingLevel::H1 if self.prd.title.is_none() && !heading.is_empty() => {
                self.prd.title = Some(heading);
            }
            HeadingLevel::H1 | HeadingLevel::H2 => {
                self.close_component();
                self.close_section();
                self.current = Some((
                    section_kind(&heading),
                    Section {
                        heading,
                        ..Default::default()
                    },
                ));
            }
            _ => {
                let in_components =
                    matches!(self.current, Some((Kind::Components | Kind::DataModel, _)));
                if in_components && level == HeadingLevel::H3 {
                    self.close_component();
                    self.component = Some(Component {
                        name: heading,
                        ..Default::default()
                    });
                } else if !heading.is_empty() {
                    // A deeper heading inside a section reads like a paragraph of it.
                    self.push_paragraph(heading);
                }
            }
        }
    }

    fn flush_text(&mut self) {
        let mut raw = std::mem::take(&mut self.buf);
        let in_item = matches!(self.item_stack.last(), Some(Some(_)));
        if let (Some(component), false) = (self.component.as_mut(), in_item) {
            let mut prose = String::with_capacity(raw.len());
            for line in raw.lines() {
                match wiring_names(line) {
                    Some(names) => component.uses.extend(names),
                    None => {
                        prose.push_str(line);
                        prose.push('\n');
                    }
                }
            }
            raw = prose;
        }
        let text = clip(&raw);
        if text.is_empty() {
            return;
        }
        if let Some(Some(top)) = self.item_stack.last_mut() {
            top.push_str(&text);
            return;
        }
        self.push_paragraph(text);
    }

    fn push_paragraph(&mut self, text: String) {
        if let Some(component) = self.component.as_mut() {
            if component.paragraphs.len() < MAX_ITEMS {
                component.paragraphs.push(text);
            }
        } else if let Some((_, section)) = self.current.as_mut() {
            if section.paragraphs.len() < MAX_ITEMS {
                section.paragraphs.push(text);
            }
        } else if self.prd.overview.len() < MAX_TEXT_CHARS * 4 {
            if !self.prd.overview.is_empty() {
                self.prd.overview.push('\n');
            }
            self.prd.overview.push_str(&text);
        }
    }

    fn push_item(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        if let Some(component) = self.component.as_mut() {
            if let Some(names) = wiring_names(&text) {
                component.uses.extend(names);
            } else if component.items.len() < MAX_ITEMS {
                component.items.push(text);
            }
        } else if let Some((_, section)) = self.current.as_mut() {
            if section.items.len() < MAX_ITEMS {
                section.items.push(text);
            }
        } else {
            self.push_paragraph(text);
        }
    }

    fn close_component(&mut self) {
        if let Some(component) = self.component.take() {
            match self.current {
                Some((Kind::DataModel, _)) => self.prd.entities.push(component),
                _ => self.prd.components.push(component),
            }
        }
    }

    fn close_section(&mut self) {
        let Some((kind, section)) = self.current.take() else {
            return;
        };
        let prd = &mut self.prd;
        let target = match kind {
            Kind::Overview => {
                for p in section.paragraphs.iter().chain(section.items.iter()) {
                    if prd.overview.len() < MAX_TEXT_CHARS * 4 {
                        if !prd.overview.is_empty() {
                            prd.overview.push('\n');
                        }
                        prd.overview.push_str(p);
                    }
                }
                None
            }
            Kind::Functional => Some(&mut prd.functional_requirements),
            Kind::Features => Some(&mut prd.features),
            Kind::Success => Some(&mut prd.success_criteria),
            Kind::Technical => Some(&mut prd.technical_details),
            Kind::Dependencies => Some(&mut prd.dependencies),
            Kind::Components | Kind::DataModel | Kind::Other => None,
        };
        if let Some(target) = target {
            let mut values = section.items.clone();
            if kind == Kind::Technical || values.is_empty() && kind != Kind::Functional {
                values.extend(section.paragraphs.iter().cloned());
            }
            for v in values {
                if target.len() < MAX_ITEMS {
                    target.push(v);
                }
            }
            if kind == Kind::Functional && section.items.is_empty() {
                // Prose requirements: each sentence-ish paragraph stands for one requirement.
                for p in &section.paragraphs {
                    if target.len() < MAX_ITEMS {
                        target.push(p.clone());
                    }
                }
            }
        }
        prd.sections.push(section);
    }

    fn finish(mut self) -> Prd {
        self.flush_text();
        while let Some(item) = self.item_stack.pop() {
            if let Some(item) = item {
                self.push_item(clip(&item));
            }
        }
        self.close_component();
        self.close_section();
        self.prd
    }
}

impl Prd {
    /// The PRD as plain text with its section headings, for node-type classification.
    pub fn classification_text(&self) -> String {
        let mut out = String::new();
        if let Some(t) = &self.title {
            out.push_str(&format!("# {t}\n"));
        }
        out.push_str(&self.overview);
        out.push('\n');
        for s in &self.sections {
            out.push_str(&format!("## {}\n", s.heading));
            for line in s.paragraphs.iter().chain(s.items.iter()) {
                out.push_str(line);
                out.push('\n');
            }
        }
        for c in &self.components {
            out.push_str(&format!("### {}\n{}\n", c.name, c.text()));
        }
        out
    }

    /// All the prose of the PRD, for keyword analysis.
    pub fn all_text(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if let Some(t) = &self.title {
            parts.push(t);
        }
        parts.push(&self.overview);
        for s in &self.sections {
            parts.push(&s.heading);
            parts.extend(s.paragraphs.iter().map(String::as_str));
            parts.extend(s.items.iter().map(String::as_str));
        }
        for c in &self.components {
            parts.push(&c.name);
            parts.extend(c.paragraphs.iter().map(String::as_str));
            parts.extend(c.items.iter().map(String::as_str));
        }
        parts.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Order Writer\n\nIntro text.\n\n## Overview\nWrites orders.\n\n## Functional Requirements\n- Create order records\n- Update order status\n  - nested detail\n\n## Dependencies\n- PostgreSQL 15\n\n## Nodes\n### Ingest API\nReceives orders.\n- Store order\n### Scorer\nComputes scores.\n";

    #[test]
    fn parses_sections_items_and_components() {
        let prd = parse(SAMPLE).unwrap();
        assert_eq!(prd.title.as_deref(), Some("Order Writer"));
        assert!(prd.overview.contains("Intro text."));
        assert!(prd.overview.contains("Writes orders."));
        assert_eq!(
            prd.functional_requirements,
            vec![
                "Create order records",
                "Update order status",
                "nested detail"
            ]
        );
        assert_eq!(prd.dependencies, vec!["PostgreSQL 15"]);
        assert_eq!(prd.components.len(), 2);
        assert_eq!(prd.components[0].name, "Ingest API");
        assert_eq!(prd.components[0].items, vec!["Store order"]);
        assert_eq!(prd.components[1].paragraphs, vec!["Computes scores."]);
    }

    #[test]
    fn rejects_what_is_not_a_prd() {
        assert_eq!(parse(""), Err(PrdError::Empty));
        assert_eq!(parse(" \n\t\n"), Err(PrdError::Empty));
        assert_eq!(parse("# Only a title\n"), Err(PrdError::NoContent));
        assert_eq!(parse("1.5e+309"), Err(PrdError::NoContent));
        assert!(matches!(
            parse(&"x".repeat(MAX_PRD_BYTES + 1)),
            Err(PrdError::TooLarge(_))
        ));
    }

    #[test]
    fn prose_without_sections_is_a_prd() {
        let prd =
            parse("A service that sends webhook notifications when invoices are paid.").unwrap();
        assert!(prd.title.is_none());
        assert!(prd.overview.contains("webhook"));
    }

    #[test]
    fn normalize_strips_controls_and_bidi() {
        assert_eq!(
            normalize("a\u{0}b\r\nc\u{202E}d\u{7}\u{2028}e"),
            "ab\ncd\ne"
        );
    }

    #[test]
    fn code_blocks_are_not_requirements() {
        let prd =
            parse("# T\n## Requirements\n- Real item\n```python\n- fake item\n```\n").unwrap();
        assert_eq!(prd.functional_requirements, vec!["Real item"]);
    }
}
