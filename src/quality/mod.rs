//! The quality gate of CONTRACTS.md §4, computed in Rust over a rendered node.
//!
//! Overall = 0.30 syntax + 0.40 ONEX compliance + 0.20 contract conformance + 0.10 code quality.
//! Every deduction names the file, the line and the rule, so a score can be explained.

mod file_cache;
mod python;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use python::{PythonFacts, SyntaxIssue, analyse};

use crate::render::{RenderedNode, RenderedShared};
use file_cache::FileCache;

/// One reason a node lost points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deduction {
    pub file: String,
    pub line: usize,
    pub rule: String,
    pub message: String,
}

/// ONEX compliance sub-scores (each 0–1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct OnexBreakdown {
    pub naming: f64,
    pub type_hints: f64,
    pub no_any: f64,
    pub error_handling: f64,
    pub async_entry_points: f64,
    pub imports: f64,
}

/// A score from the intelligence service, reported beside the local one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceScore {
    pub quality_score: f64,
    pub onex_compliance: f64,
    pub correlation_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QualityReport {
    pub overall: f64,
    pub syntax: f64,
    pub onex_compliance: f64,
    pub contract_conformance: f64,
    pub code_quality: f64,
    pub onex: OnexBreakdown,
    pub parses: bool,
    pub passed: bool,
    pub deductions: Vec<Deduction>,
    /// The intelligence service's score of the node's main module, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceScore>,
    /// Mean of the local overall score and the service's, when both exist. The gate stays on
    /// the local score: it is deterministic and every point of it is explained by deductions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<f64>,
}

impl QualityReport {
    pub fn merge_service(&mut self, score: ServiceScore) {
        self.merged = Some(round3((self.overall + score.quality_score) / 2.0));
        self.service = Some(score);
    }
}

/// The thresholds a node must meet.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub overall: f64,
    pub onex: f64,
}

fn ratio(good: usize, total: usize) -> f64 {
    if total == 0 {
        1.0
    } else {
        good as f64 / total as f64
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Scorer<'a> {
    node: &'a RenderedNode,
    deductions: Vec<Deduction>,
}

impl Scorer<'_> {
    fn deduct(&mut self, file: &str, line: usize, rule: &str, message: impl Into<String>) {
        self.deductions.push(Deduction {
            file: file.to_string(),
            line,
            rule: rule.to_string(),
            message: message.into(),
        });
    }

    fn path(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.node.context.package)
    }
}

/// Score a rendered node.
pub fn score(node: &RenderedNode, thresholds: Thresholds) -> QualityReport {
    let mut s = Scorer {
        node,
        deductions: Vec::new(),
    };

    // The contract is read once: if it loads as a contract it is valid YAML, so its own
    // syntax check is needed only when it does not.
    let contract_path = s.path("contract.yaml");
    let contract_parse = node
        .files
        .get(&contract_path)
        .map(|b| serde_norway::from_slice::<ContractView>(b));
    let loaded = matches!(contract_parse, Some(Ok(_))).then_some(contract_path.as_str());

    // Syntax: every Python file parses, every YAML file loads.
    let mut facts: BTreeMap<String, PythonFacts> = BTreeMap::new();
    let (mut ok, mut total) = (0usize, 0usize);
    for (path, result) in check_syntax(node, loaded) {
        total += 1;
        match result {
            Ok(Some(f)) => {
                ok += 1;
                facts.insert(path.to_string(), f);
            }
            Ok(None) => ok += 1,
            Err(e) => s.deduct(path, e.line, e.rule, e.message),
        }
    }
    let parses = ok == total;
    let syntax = ratio(ok, total);

    let node_py = s.path("node.py");
    let ctx = &node.context;
    let node_class = facts
        .get(&node_py)
        .and_then(|f| f.classes.iter().find(|c| c.name == ctx.class_name))
        .cloned();
    if node_class.is_none() {
        s.deduct(
            &node_py,
            0,
            "onex/node-class",
            format!("class {} not found", ctx.class_name),
        );
    }
    let source_files: Vec<(&String, &PythonFacts)> = facts
        .iter()
        .filter(|(p, _)| !p.contains("/tests/"))
        .collect();

    // --- ONEX compliance ---
    let mut naming_checks = (0usize, 0usize);
    let mut check =
        |s: &mut Scorer<'_>, okay: bool, file: &str, line: usize, rule: &str, msg: String| {
            naming_checks.1 += 1;
            if okay {
                naming_checks.0 += 1;
            } else {
                s.deduct(file, line, rule, msg);
            }
        };
    check(
        &mut s,
        node_class.is_some(),
        &node_py,
        0,
        "onex/naming-node-class",
        format!("node class must be named {}", ctx.class_name),
    );
    for (path, f) in &source_files {
        let prefix = if path.contains("/models/model_") {
            Some("Model")
        } else if path.contains("/enums/enum_") {
            Some("Enum")
        } else {
            None
        };
        if let Some(prefix) = prefix {
            for c in &f.classes {
                check(
                    &mut s,
                    c.name.starts_with(prefix),
                    path,
                    c.line,
                    "onex/naming-class-prefix",
                    format!("class {} should start with {prefix}", c.name),
                );
            }
        }
        for func in f
            .functions
            .iter()
            .chain(f.classes.iter().flat_map(|c| c.methods.iter()))
        {
            // `do_GET` and friends are the names http.server dispatches to.
            let snake = func
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || func
                    .name
                    .strip_prefix("do_")
                    .is_some_and(|m| m.chars().all(|c| c.is_ascii_uppercase()));
            check(
                &mut s,
                snake,
                path,
                func.line,
                "onex/naming-snake-case",
                format!("function {} is not snake_case", func.name),
            );
        }
    }
    let naming = ratio(naming_checks.0, naming_checks.1);

    let all_functions: Vec<(&str, &python::FunctionFact)> = source_files
        .iter()
        .flat_map(|(p, f)| {
            f.functions
                .iter()
                .chain(f.classes.iter().flat_map(|c| c.methods.iter()))
                .map(move |func| (p.as_str(), func))
        })
        .collect();
    let mut annotated = 0;
    for (path, func) in &all_functions {
        if func.fully_annotated {
            annotated += 1;
        } else {
            s.deduct(
                path,
                func.line,
                "onex/type-hints",
                format!("{} lacks parameter or return annotations", func.name),
            );
        }
    }
    let type_hints = ratio(annotated, all_functions.len());

    let mut any_uses = 0usize;
    for (path, f) in &source_files {
        for line in &f.any_lines {
            any_uses += 1;
            s.deduct(
                path,
                *line,
                "onex/no-bare-any",
                "typing.Any used; use a precise type or JsonValue",
            );
        }
    }
    let no_any = (1.0 - 0.25 * any_uses as f64).max(0.0);

    let contract = read_contract(&mut s, &contract_path, contract_parse);

    // Error handling lives in the runtime base class, which turns a handler's exception into a
    // failed output; a bare `except` in generated code would swallow SystemExit.
    let mut eh = (0usize, 1usize);
    let base = &ctx.runtime_base;
    match &node_class {
        Some(c) if c.bases.iter().any(|b| b == base) => eh.0 += 1,
        Some(c) => s.deduct(
            &node_py,
            c.line,
            "onex/error-handling",
            format!(
                "{} does not subclass omninode_runtime.{base}, which turns handler errors into failed outputs",
                c.name
            ),
        ),
        None => {}
    }
    for (path, f) in &source_files {
        for line in &f.bare_except_lines {
            eh.1 += 1;
            s.deduct(
                path,
                *line,
                "onex/bare-except",
                "bare except: catches SystemExit and KeyboardInterrupt",
            );
        }
    }
    let error_handling = ratio(eh.0, eh.1);

    // Every operation's handler, as routed by the contract, is an async function.
    let mut ep = (0usize, 0usize);
    let routes = contract
        .as_ref()
        .map(|c| c.handler_routing.handlers.as_slice());
    for route in routes.unwrap_or_default() {
        ep.1 += 1;
        let file = module_file(&route.handler.module);
        let function = facts.get(&file).and_then(|f| {
            f.functions
                .iter()
                .find(|x| x.name == route.handler.function)
        });
        match function {
            Some(f) if f.is_async => ep.0 += 1,
            Some(f) => s.deduct(
                &file,
                f.line,
                "onex/async-entry-point",
                format!("handler {} must be async", f.name),
            ),
            None => s.deduct(
                &contract_path,
                0,
                "onex/async-entry-point",
                format!(
                    "handler {}.{} of operation {} does not exist",
                    route.handler.module, route.handler.function, route.operation
                ),
            ),
        }
    }
    if ep.1 == 0 {
        s.deduct(
            &contract_path,
            0,
            "onex/async-entry-point",
            "handler_routing routes no operation",
        );
    }
    let async_entry_points = ratio(ep.0, ep.1.max(1));

    let mut imp = (0usize, 0usize);
    for (path, f) in &source_files {
        let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for i in &f.imports {
            imp.1 += 1;
            if i.wildcard {
                s.deduct(
                    path,
                    i.line,
                    "onex/imports-wildcard",
                    format!("wildcard import from {}", i.module),
                );
            } else if (i.level > 0 && !relative_import_resolves(node, dir, i.level, &i.module))
                || (i.level == 0 && !absolute_import_resolves(node, &i.module))
            {
                s.deduct(
                    path,
                    i.line,
                    "onex/imports-unresolved",
                    format!(
                        "relative import {}{} does not resolve inside the node",
                        ".".repeat(i.level as usize),
                        i.module
                    ),
                );
            } else {
                imp.0 += 1;
            }
        }
    }
    let imports = ratio(imp.0, imp.1);

    let onex = OnexBreakdown {
        naming,
        type_hints,
        no_any,
        error_handling,
        async_entry_points,
        imports,
    };
    let mut onex_compliance = 0.20 * naming
        + 0.15 * type_hints
        + 0.18 * no_any
        + 0.15 * error_handling
        + 0.22 * async_entry_points
        + 0.10 * imports;
    if no_any <= 0.3 {
        onex_compliance = onex_compliance.min(0.5);
    }

    // --- Contract conformance ---
    let contract_conformance = match &contract {
        Some(c) => contract_score(&mut s, c, &facts, node_class.as_ref()),
        None => 0.0,
    };

    // --- Code quality ---
    let mut docs = (0usize, 0usize);
    let mut short = (0usize, 0usize);
    let mut prints = 0usize;
    for (path, f) in &source_files {
        if !path.ends_with("__init__.py") || f.has_module_docstring {
            docs.1 += 1;
            if f.has_module_docstring {
                docs.0 += 1;
            } else {
                s.deduct(path, 1, "quality/docstring", "module has no docstring");
            }
        }
        for c in &f.classes {
            docs.1 += 1;
            if c.has_docstring {
                docs.0 += 1;
            } else {
                s.deduct(
                    path,
                    c.line,
                    "quality/docstring",
                    format!("class {} has no docstring", c.name),
                );
            }
        }
        for func in f
            .functions
            .iter()
            .chain(f.classes.iter().flat_map(|c| c.methods.iter()))
        {
            if !func.name.starts_with('_') {
                docs.1 += 1;
                if func.has_docstring {
                    docs.0 += 1;
                } else {
                    s.deduct(
                        path,
                        func.line,
                        "quality/docstring",
                        format!("public function {} has no docstring", func.name),
                    );
                }
            }
            short.1 += 1;
            if func.lines <= 80 {
                short.0 += 1;
            } else {
                s.deduct(
                    path,
                    func.line,
                    "quality/function-length",
                    format!("{} is {} lines long (limit 80)", func.name, func.lines),
                );
            }
        }
        for line in &f.print_lines {
            prints += 1;
            s.deduct(path, *line, "quality/print", "print() instead of logging");
        }
    }
    let code_quality =
        (ratio(docs.0, docs.1) + ratio(short.0, short.1) + (1.0 - 0.2 * prints as f64).max(0.0))
            / 3.0;

    let overall =
        0.30 * syntax + 0.40 * onex_compliance + 0.20 * contract_conformance + 0.10 * code_quality;
    let passed = parses && overall >= thresholds.overall && onex_compliance >= thresholds.onex;
    QualityReport {
        overall: round3(overall),
        syntax: round3(syntax),
        onex_compliance: round3(onex_compliance),
        contract_conformance: round3(contract_conformance),
        code_quality: round3(code_quality),
        onex: OnexBreakdown {
            naming: round3(onex.naming),
            type_hints: round3(onex.type_hints),
            no_any: round3(onex.no_any),
            error_handling: round3(onex.error_handling),
            async_entry_points: round3(onex.async_entry_points),
            imports: round3(onex.imports),
        },
        parses,
        passed,
        deductions: s.deductions,
        service: None,
        merged: None,
    }
}

/// A file that does not parse: where and why.
#[derive(Clone)]
struct ParseFailure {
    line: usize,
    rule: &'static str,
    message: String,
}

type CheckResult = Result<Option<PythonFacts>, ParseFailure>;

/// Parse every Python and YAML file of the node (Python files yield their facts), in path order;
/// `loaded` is a YAML file already known to load. (Spreading the files over threads was
/// measured slower: the per-node work is well under 1 ms.)
fn check_syntax<'a>(node: &'a RenderedNode, loaded: Option<&str>) -> Vec<(&'a str, CheckResult)> {
    node.files
        .iter()
        .filter(|(p, _)| p.ends_with(".py") || p.ends_with(".yaml"))
        .map(|(p, b)| match loaded == Some(p.as_str()) {
            true => (p.as_str(), Ok(None)),
            false => (p.as_str(), cached_check(p, b)),
        })
        .collect()
}

/// The process's checked files, shared by `generate` and every reconcile.
fn file_cache() -> &'static std::sync::Mutex<FileCache<CheckResult>> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<FileCache<CheckResult>>> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(|| std::sync::Mutex::new(FileCache::new(file_cache::GENERATION_BYTES)))
}

fn cached_check(path: &str, bytes: &[u8]) -> CheckResult {
    use std::hash::{Hash, Hasher};
    // The YAML check differs from the Python one, so the kind is part of the key.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.ends_with(".py").hash(&mut hasher);
    bytes.hash(&mut hasher);
    let key = hasher.finish();
    if let Some(hit) = file_cache()
        .lock()
        .ok()
        .and_then(|mut cache| cache.lookup(key, bytes))
    {
        return hit;
    }
    let result = check_file(path, bytes);
    if let Ok(mut cache) = file_cache().lock() {
        cache.insert(key, bytes.into(), result.clone());
    }
    result
}

/// What keeps a system's shared models package from passing: files that do not parse, model
/// classes without the `Model` prefix, `Any`. Empty when it passes; it has no score of its own
/// because every node that imports it is scored.
pub fn check_shared(shared: &RenderedShared) -> Vec<Deduction> {
    let mut out = Vec::new();
    let mut deduct = |file: &str, line: usize, rule: &str, message: String| {
        out.push(Deduction {
            file: format!("{}/{file}", shared.dir_name),
            line,
            rule: rule.to_string(),
            message,
        })
    };
    for (path, bytes) in &shared.files {
        if !path.ends_with(".py") {
            continue;
        }
        match cached_check(path, bytes) {
            Err(e) => deduct(path, e.line, e.rule, e.message),
            Ok(Some(facts)) => {
                if path.contains("/models/model_") {
                    for c in facts
                        .classes
                        .iter()
                        .filter(|c| !c.name.starts_with("Model"))
                    {
                        deduct(
                            path,
                            c.line,
                            "onex/naming-class-prefix",
                            format!("class {} should start with Model", c.name),
                        );
                    }
                }
                for line in &facts.any_lines {
                    deduct(
                        path,
                        *line,
                        "onex/no-bare-any",
                        "typing.Any used".to_string(),
                    );
                }
            }
            Ok(None) => {}
        }
    }
    out
}

fn check_file(path: &str, bytes: &[u8]) -> Result<Option<PythonFacts>, ParseFailure> {
    let text = String::from_utf8_lossy(bytes);
    if path.ends_with(".py") {
        analyse(&text, path).map(Some).map_err(|e| ParseFailure {
            line: e.line,
            rule: "syntax/python",
            message: e.message,
        })
    } else {
        // Syntax only: `IgnoredAny` reads every event without building a tree.
        serde_norway::from_str::<serde::de::IgnoredAny>(&text)
            .map(|_| None)
            .map_err(|e| ParseFailure {
                line: e.location().map(|l| l.line()).unwrap_or(0),
                rule: "syntax/yaml",
                message: e.to_string(),
            })
    }
}

/// Whether `from <dots><module> import …` in directory `dir` names a file or package of the node.
fn relative_import_resolves(node: &RenderedNode, dir: &str, level: u32, module: &str) -> bool {
    let mut base: Vec<&str> = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    for _ in 1..level {
        if base.pop().is_none() {
            return false;
        }
    }
    let mut path = base.join("/");
    if !module.is_empty() {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&module.replace('.', "/"));
    }
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    node.files.contains_key(&format!("{path}.py"))
        || node.files.contains_key(&format!("{prefix}__init__.py"))
}

/// Whether an absolute import names a module of the node, when it names the node's package at
/// all (other absolute imports are the runtime's or the standard library's).
fn absolute_import_resolves(node: &RenderedNode, module: &str) -> bool {
    let package = &node.context.package;
    if module != package && !module.starts_with(&format!("{package}.")) {
        return true;
    }
    let path = module.replace('.', "/");
    node.files.contains_key(&format!("{path}.py"))
        || node.files.contains_key(&format!("{path}/__init__.py"))
}

/// The file of a dotted module name, relative to the node's directory.
fn module_file(module: &str) -> String {
    format!("{}.py", module.replace('.', "/"))
}

/// The mixins `omninode_runtime` applies when a contract lists them.
const RUNTIME_MIXINS: &[&str] = &[
    "MixinCaching",
    "MixinCircuitBreaker",
    "MixinEventBus",
    "MixinHealthCheck",
    "MixinLogging",
    "MixinMetrics",
    "MixinRetry",
    "MixinSecurity",
    "MixinValidation",
];

/// The subset of `contract.yaml` the checks read.
#[derive(Deserialize, Default)]
struct ContractView {
    #[serde(default)]
    input_model: ModelRef,
    #[serde(default)]
    output_model: ModelRef,
    #[serde(default)]
    handler_routing: RoutingView,
    #[serde(default)]
    mixins: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ModelRef {
    #[serde(default)]
    name: String,
    #[serde(default)]
    module: String,
}

#[derive(Deserialize, Default)]
struct RoutingView {
    #[serde(default)]
    handlers: Vec<RouteView>,
}

#[derive(Deserialize)]
struct RouteView {
    #[serde(default)]
    operation: String,
    handler: HandlerRef,
}

#[derive(Deserialize)]
struct HandlerRef {
    #[serde(default)]
    function: String,
    #[serde(default)]
    module: String,
}

fn read_contract(
    s: &mut Scorer<'_>,
    contract_path: &str,
    parsed: Option<Result<ContractView, serde_norway::Error>>,
) -> Option<ContractView> {
    match parsed {
        None => {
            s.deduct(
                contract_path,
                0,
                "contract/missing",
                "contract.yaml is missing",
            );
            None
        }
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            s.deduct(
                contract_path,
                e.location().map(|l| l.line()).unwrap_or(0),
                "contract/invalid",
                e.to_string(),
            );
            None
        }
    }
}

/// 0.5 what the contract names exists (its models, the node class's models, the handlers), 0.3
/// its operations are exactly the enum's, 0.2 its mixins are ones the runtime applies.
fn contract_score(
    s: &mut Scorer<'_>,
    contract: &ContractView,
    facts: &BTreeMap<String, PythonFacts>,
    class: Option<&python::ClassFact>,
) -> f64 {
    let Some(class) = class else { return 0.0 };
    let node_py = s.path("node.py");
    let contract_path = s.path("contract.yaml");
    let ctx = &s.node.context;
    let defines_class = |module: &str, name: &str| {
        facts
            .get(&module_file(module))
            .is_some_and(|f| f.classes.iter().any(|c| c.name == name))
    };
    let attribute = |name: &str| {
        class
            .assignments
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut named = (0usize, 0usize);
    for (role, model) in [
        ("input_model", &contract.input_model),
        ("output_model", &contract.output_model),
    ] {
        named.1 += 2;
        if defines_class(&model.module, &model.name) {
            named.0 += 1;
        } else {
            s.deduct(
                &contract_path,
                0,
                "contract/model-missing",
                format!("{role} {}.{} does not exist", model.module, model.name),
            );
        }
        if attribute(role) == Some(model.name.as_str()) {
            named.0 += 1;
        } else {
            s.deduct(
                &node_py,
                class.line,
                "contract/model-mismatch",
                format!("{}.{role} is not {}", class.name, model.name),
            );
        }
    }
    for route in &contract.handler_routing.handlers {
        named.1 += 1;
        let exists = facts
            .get(&module_file(&route.handler.module))
            .is_some_and(|f| f.functions.iter().any(|x| x.name == route.handler.function));
        if exists {
            named.0 += 1;
        } else {
            s.deduct(
                &contract_path,
                0,
                "contract/method-missing",
                format!(
                    "contract names {}.{} but it does not exist",
                    route.handler.module, route.handler.function
                ),
            );
        }
    }
    let methods = ratio(named.0, named.1);

    let enum_file = format!("{}/enums/{}.py", ctx.package, ctx.enum_module);
    let members: BTreeSet<&str> = facts
        .get(&enum_file)
        .and_then(|f| f.classes.iter().find(|c| c.name == ctx.enum_name))
        .map(|c| c.assignments.iter().map(|(_, v)| v.as_str()).collect())
        .unwrap_or_default();
    let routed: BTreeSet<&str> = contract
        .handler_routing
        .handlers
        .iter()
        .map(|r| r.operation.as_str())
        .collect();
    let mut ops = (0usize, 0usize);
    for op in routed.union(&members) {
        ops.1 += 1;
        if routed.contains(op) && members.contains(op) {
            ops.0 += 1;
        } else {
            s.deduct(
                &enum_file,
                0,
                "contract/operation-mismatch",
                format!(
                    "operation {op} is {} but not {}",
                    if routed.contains(op) {
                        "routed"
                    } else {
                        "an enum member"
                    },
                    if routed.contains(op) {
                        "an enum member"
                    } else {
                        "routed"
                    }
                ),
            );
        }
    }
    let operations = ratio(ops.0, ops.1);

    let mut mix = 0;
    for m in &contract.mixins {
        if RUNTIME_MIXINS.contains(&m.as_str()) {
            mix += 1;
        } else {
            s.deduct(
                &contract_path,
                0,
                "contract/mixin-unknown",
                format!("mixin {m} is not one omninode_runtime applies"),
            );
        }
    }
    let mixins = ratio(mix, contract.mixins.len());
    0.5 * methods + 0.3 * operations + 0.2 * mixins
}
