//! Facts about one Python file, read with a real Python parser (Ruff's, `ruff_python_parser`).
//!
//! One parse gives both the tokens, which answer the lexical questions (uses of `Any`,
//! `print` calls), and the AST, which answers the structural ones.

use ruff_python_ast::token::TokenKind;
use ruff_python_ast::{self as ast, ExceptHandler, Expr, Stmt};
use ruff_python_parser::parse_module;
use ruff_text_size::{Ranged, TextRange};

/// A syntax error with its line.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxIssue {
    pub line: usize,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct FunctionFact {
    pub name: String,
    pub line: usize,
    pub is_async: bool,
    /// Every parameter (but `self`/`cls`) and the return value are annotated.
    pub fully_annotated: bool,
    pub has_docstring: bool,
    pub lines: usize,
    pub has_try: bool,
    pub has_raise: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ClassFact {
    pub name: String,
    pub line: usize,
    pub bases: Vec<String>,
    pub has_docstring: bool,
    pub methods: Vec<FunctionFact>,
    /// `NAME = value` assignments of the class body whose value is a string constant or a
    /// name (enum members, `input_model = Model…`): name → the string or the name assigned.
    pub assignments: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct ImportFact {
    pub line: usize,
    /// Dots of a relative import (0 for absolute).
    pub level: u32,
    pub module: String,
    pub wildcard: bool,
}

#[derive(Clone, Debug, Default)]
pub struct PythonFacts {
    pub has_module_docstring: bool,
    pub functions: Vec<FunctionFact>,
    pub classes: Vec<ClassFact>,
    pub imports: Vec<ImportFact>,
    /// Lines where the name `Any` is used.
    pub any_lines: Vec<usize>,
    /// Lines with a `print(` call.
    pub print_lines: Vec<usize>,
    /// Lines with a bare `except:`.
    pub bare_except_lines: Vec<usize>,
}

/// Byte offset → 1-based line.
struct Lines(Vec<usize>);

impl Lines {
    fn new(src: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }
    fn line(&self, offset: usize) -> usize {
        match self.0.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// Parse `src` and collect its facts.
pub fn analyse(src: &str, _path: &str) -> Result<PythonFacts, SyntaxIssue> {
    let lines = Lines::new(src);
    let parsed = parse_module(src).map_err(|e| SyntaxIssue {
        line: lines.line(e.location.start().to_usize()),
        message: e.error.to_string(),
    })?;
    let mut facts = PythonFacts::default();
    let mut prev_was_print: Option<usize> = None;
    let line = |token: &ruff_python_ast::token::Token| lines.line(token.start().to_usize());
    for token in parsed.tokens().iter() {
        if let Some(l) = prev_was_print.take()
            && token.kind() == TokenKind::Lpar
        {
            facts.print_lines.push(l);
        }
        if token.kind() == TokenKind::Name {
            match &src[token.range()] {
                "Any" => facts.any_lines.push(line(token)),
                "print" => prev_was_print = Some(line(token)),
                _ => {}
            }
        }
    }
    let module = parsed.syntax();
    facts.has_module_docstring = starts_with_docstring(&module.body);
    let mut walker = Walker {
        lines: &lines,
        facts: &mut facts,
    };
    walker.module(&module.body);
    Ok(facts)
}

fn starts_with_docstring(body: &[Stmt]) -> bool {
    matches!(body.first(), Some(Stmt::Expr(e)) if e.value.is_string_literal_expr())
}

struct Walker<'a> {
    lines: &'a Lines,
    facts: &'a mut PythonFacts,
}

impl Walker<'_> {
    fn line_of(&self, range: TextRange) -> usize {
        self.lines.line(range.start().to_usize())
    }

    fn module(&mut self, body: &[Stmt]) {
        for stmt in body {
            match stmt {
                Stmt::FunctionDef(f) => {
                    let f = self.function(f);
                    self.facts.functions.push(f);
                }
                Stmt::ClassDef(c) => {
                    let class = self.class(c);
                    self.facts.classes.push(class);
                }
                _ => self.statement(stmt),
            }
        }
    }

    fn class(&mut self, c: &ast::StmtClassDef) -> ClassFact {
        let mut fact = ClassFact {
            name: c.name.to_string(),
            line: self.line_of(c.range),
            bases: c.bases().iter().filter_map(expr_name).collect(),
            has_docstring: starts_with_docstring(&c.body),
            ..Default::default()
        };
        for stmt in &c.body {
            match stmt {
                Stmt::FunctionDef(f) => {
                    let f = self.function(f);
                    fact.methods.push(f);
                }
                Stmt::Assign(a) => {
                    if let ([Expr::Name(n)], Some(value)) =
                        (&a.targets[..], assigned_value(&a.value))
                    {
                        fact.assignments.push((n.id.to_string(), value));
                    }
                    self.statement(stmt);
                }
                _ => self.statement(stmt),
            }
        }
        fact
    }

    fn function(&mut self, f: &ast::StmtFunctionDef) -> FunctionFact {
        let args = &f.parameters;
        let params = args
            .posonlyargs
            .iter()
            .chain(args.args.iter())
            .chain(args.kwonlyargs.iter())
            .map(|a| &a.parameter)
            .chain(args.vararg.as_deref())
            .chain(args.kwarg.as_deref());
        let mut annotated = f.returns.is_some();
        for (i, p) in params.enumerate() {
            let receiver = i == 0 && (p.name.as_str() == "self" || p.name.as_str() == "cls");
            if !receiver && p.annotation.is_none() {
                annotated = false;
            }
        }
        let (name, body, range, is_async) = (&f.name, &f.body, f.range, f.is_async);
        let start = self.line_of(range);
        let end = self.lines.line(range.end().to_usize());
        let mut fact = FunctionFact {
            name: name.to_string(),
            line: start,
            is_async,
            fully_annotated: annotated,
            has_docstring: starts_with_docstring(body),
            lines: end.saturating_sub(start) + 1,
            ..Default::default()
        };
        self.body(body, &mut fact);
        fact
    }

    /// Walk statements inside a function, noting try/raise and nested defs.
    fn body(&mut self, body: &[Stmt], fact: &mut FunctionFact) {
        for stmt in body {
            match stmt {
                Stmt::Try(t) => {
                    fact.has_try = true;
                    self.handlers(&t.handlers);
                    self.body(&t.body, fact);
                    self.body(&t.orelse, fact);
                    self.body(&t.finalbody, fact);
                    for h in &t.handlers {
                        let ExceptHandler::ExceptHandler(h) = h;
                        self.body(&h.body, fact);
                    }
                }
                Stmt::Raise(_) => fact.has_raise = true,
                Stmt::If(s) => {
                    self.body(&s.body, fact);
                    for clause in &s.elif_else_clauses {
                        self.body(&clause.body, fact);
                    }
                }
                Stmt::For(s) => {
                    self.body(&s.body, fact);
                    self.body(&s.orelse, fact);
                }
                Stmt::While(s) => {
                    self.body(&s.body, fact);
                    self.body(&s.orelse, fact);
                }
                Stmt::With(s) => self.body(&s.body, fact),
                Stmt::Match(m) => {
                    for case in &m.cases {
                        self.body(&case.body, fact);
                    }
                }
                Stmt::FunctionDef(f) => {
                    let inner = self.function(f);
                    self.facts.functions.push(inner);
                }
                Stmt::ClassDef(c) => {
                    let class = self.class(c);
                    self.facts.classes.push(class);
                }
                _ => {}
            }
        }
    }

    fn handlers(&mut self, handlers: &[ExceptHandler]) {
        for h in handlers {
            let ExceptHandler::ExceptHandler(h) = h;
            if h.type_.is_none() {
                let line = self.line_of(h.range);
                self.facts.bare_except_lines.push(line);
            }
        }
    }

    /// Module-level statements other than defs: imports, and blocks that may hold them.
    fn statement(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::Import(i) => {
                for alias in &i.names {
                    let line = self.line_of(i.range);
                    self.facts.imports.push(ImportFact {
                        line,
                        level: 0,
                        module: alias.name.to_string(),
                        wildcard: false,
                    });
                }
            }
            Stmt::ImportFrom(i) => {
                let line = self.line_of(i.range);
                self.facts.imports.push(ImportFact {
                    line,
                    level: i.level,
                    module: i.module.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                    wildcard: i.names.iter().any(|a| a.name.as_str() == "*"),
                });
            }
            Stmt::Try(t) => {
                self.handlers(&t.handlers);
                for s in t.body.iter().chain(&t.orelse).chain(&t.finalbody) {
                    self.statement(s);
                }
            }
            Stmt::If(s) => {
                for s in s
                    .body
                    .iter()
                    .chain(s.elif_else_clauses.iter().flat_map(|c| c.body.iter()))
                {
                    self.statement(s);
                }
            }
            _ => {}
        }
    }
}

fn expr_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Name(n) => Some(n.id.as_str().to_string()),
        Expr::Attribute(a) => Some(a.attr.to_string()),
        Expr::Subscript(s) => expr_name(&s.value),
        _ => None,
    }
}

/// A string constant's value, or the name an expression refers to.
fn assigned_value(e: &Expr) -> Option<String> {
    match e {
        Expr::StringLiteral(s) => Some(s.value.to_str().to_string()),
        Expr::Name(n) => Some(n.id.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#""""Module doc."""
from typing import Any
from .models import *


class NodeXEffect(MixinA, base.MixinB):
    """Doc."""

    CAPABILITIES = ("a", "b")
    MEMBER = "m"
    model = ModelX

    async def process_effect(self, x: int) -> int:
        """Doc."""
        try:
            return x
        except:
            raise ValueError("no")

    def helper(self, y):
        print(y)
        v: Any = y
        return v
"#;

    #[test]
    fn collects_structure() {
        let f = analyse(SRC, "node.py").unwrap();
        assert!(f.has_module_docstring);
        let c = &f.classes[0];
        assert_eq!(c.name, "NodeXEffect");
        assert_eq!(c.bases, ["MixinA", "MixinB"]);
        assert_eq!(
            c.assignments,
            [
                ("MEMBER".to_string(), "m".to_string()),
                ("model".to_string(), "ModelX".to_string())
            ]
        );
        let m = &c.methods[0];
        assert!(m.is_async && m.fully_annotated && m.has_try && m.has_raise && m.has_docstring);
        assert!(!c.methods[1].fully_annotated);
        assert_eq!(f.any_lines, [2, 22]);
        assert_eq!(f.print_lines, [21]);
        assert_eq!(f.bare_except_lines, [17]);
        assert!(
            f.imports
                .iter()
                .any(|i| i.wildcard && i.level == 1 && i.module == "models")
        );
    }

    #[test]
    fn reports_syntax_errors_with_lines() {
        let err = analyse("x = 1\ndef f(:\n", "bad.py").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
