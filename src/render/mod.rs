//! Plan node → files, from the minijinja templates in `templates/` (embedded in the binary;
//! a directory of templates with the same names can replace them).

mod context;
pub mod filters;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use include_dir::{Dir, include_dir};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use sha2::{Digest, Sha256};

pub use context::{INTROSPECTION_TOPIC, NodeContext, NodeSharedContext, SharedContext, dir_name};
pub use filters::{comment, doc, quote, wrap_quoted};

use crate::analysis::{ExternalSystem, PlannedNode};

static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// Entry templates and the file each renders to, relative to the node's directory (`{pkg}` is
/// the node's package, `{…}` the module names of the context). Templates whose file name starts
/// with `_` are partials.
const FILES: &[(&str, &str)] = &[
    ("node/pyproject.toml.j2", "pyproject.toml"),
    ("node/package/__init__.py.j2", "{pkg}/__init__.py"),
    ("node/package/__main__.py.j2", "{pkg}/__main__.py"),
    ("node/package/py.typed.j2", "{pkg}/py.typed"),
    ("node/package/contract.yaml.j2", "{pkg}/contract.yaml"),
    ("node/package/node.py.j2", "{pkg}/node.py"),
    (
        "node/package/models/__init__.py.j2",
        "{pkg}/models/__init__.py",
    ),
    (
        "node/package/models/model_input.py.j2",
        "{pkg}/models/{input}.py",
    ),
    (
        "node/package/models/model_output.py.j2",
        "{pkg}/models/{output}.py",
    ),
    (
        "node/package/enums/__init__.py.j2",
        "{pkg}/enums/__init__.py",
    ),
    (
        "node/package/enums/enum_operation_type.py.j2",
        "{pkg}/enums/{enum}.py",
    ),
    (
        "node/package/handlers/__init__.py.j2",
        "{pkg}/handlers/__init__.py",
    ),
    (
        "node/package/tests/__init__.py.j2",
        "{pkg}/tests/__init__.py",
    ),
    (
        "node/package/tests/test_contract.py.j2",
        "{pkg}/tests/test_contract.py",
    ),
];

/// Entry templates of a system's shared models package, relative to its directory (`{pkg}`
/// is the package).
const SHARED_FILES: &[(&str, &str)] = &[
    ("shared/pyproject.toml.j2", "pyproject.toml"),
    ("shared/package/__init__.py.j2", "{pkg}/__init__.py"),
    ("shared/package/py.typed.j2", "{pkg}/py.typed"),
    (
        "shared/package/models/__init__.py.j2",
        "{pkg}/models/__init__.py",
    ),
];

/// The template of one shared model, rendered once per entity (with `model` in the context)
/// to `{pkg}/models/<model.module>.py`.
const SHARED_MODEL: &str = "shared/package/models/model_entity.py.j2";

/// The handler template, rendered once per operation (with `op` in the context) to
/// `{pkg}/handlers/<op.module>.py`. Its output belongs to the user: written when the operation
/// first appears, never replaced (the generation gap).
const HANDLER: &str = "node/package/handlers/handler.py.j2";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {template}: {source}")]
    Template {
        template: String,
        source: minijinja::Error,
    },
    #[error("reading templates from {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// One node's files.
#[derive(Clone, Debug)]
pub struct RenderedNode {
    pub dir_name: String,
    /// Path relative to the node directory → content.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The paths of `files` that belong to the user (the handler modules, with their default
    /// content): published only where no file of that path exists yet.
    pub user_files: BTreeSet<String>,
    /// SHA-256 over paths and contents, hex (and over the shared models package the node
    /// imports, so a change of either rolls it).
    pub content_hash: String,
    /// Content hash of the system's shared models package, when the node imports it.
    pub shared_hash: Option<String>,
    pub context: NodeContext,
}

impl RenderedNode {
    pub fn total_bytes(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    /// Recompute `content_hash` after `files` or `shared_hash` changed.
    pub fn rehash(&mut self) {
        let own = content_hash(&self.files);
        self.content_hash = match &self.shared_hash {
            None => own,
            Some(shared) => content_hash(&BTreeMap::from([
                ("node".to_string(), own.into_bytes()),
                ("shared".to_string(), shared.clone().into_bytes()),
            ])),
        };
    }
}

/// A system's shared models package: generated once, imported by the nodes that use its types.
#[derive(Clone, Debug)]
pub struct RenderedShared {
    /// Its directory next to the nodes' (the package name).
    pub dir_name: String,
    /// Path relative to its directory → content.
    pub files: BTreeMap<String, Vec<u8>>,
    pub content_hash: String,
    pub context: SharedContext,
}

impl RenderedShared {
    /// The files a node's code source carries so the package imports where the node runs: the
    /// package directory, without the distribution's `pyproject.toml`.
    pub fn package_files(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        let prefix = format!("{}/", self.context.package);
        self.files
            .iter()
            .filter(move |(path, _)| path.starts_with(&prefix))
    }
}

/// A template environment, built once and reused for every node.
pub struct Renderer {
    env: Environment<'static>,
    fingerprint: String,
}

impl Renderer {
    /// The templates embedded in the binary.
    pub fn embedded() -> Result<Self, RenderError> {
        let mut sources = Vec::new();
        collect_embedded(&TEMPLATES, &mut sources);
        Self::from_sources(sources)
    }

    /// Templates from a directory (same layout as `templates/`), for custom templates; a
    /// template the directory lacks is the embedded one.
    pub fn from_dir(dir: &Path) -> Result<Self, RenderError> {
        let mut custom = Vec::new();
        collect_dir(dir, dir, &mut custom)?;
        let mut sources: BTreeMap<String, String> = BTreeMap::new();
        let mut embedded = Vec::new();
        collect_embedded(&TEMPLATES, &mut embedded);
        sources.extend(embedded);
        sources.extend(custom);
        Self::from_sources(sources.into_iter().collect())
    }

    fn from_sources(mut sources: Vec<(String, String)>) -> Result<Self, RenderError> {
        sources.sort();
        let mut h = Sha256::new();
        for (name, source) in &sources {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((source.len() as u64).to_le_bytes());
            h.update(source.as_bytes());
        }
        let fingerprint = hex::encode(h.finalize());
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Escaping is the filters' job, per target language; never minijinja's HTML/JSON guess
        // from the file name.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.add_filter("quote", |s: &str| quote(s));
        env.add_filter("doc", |s: &str| doc(s));
        env.add_filter("comment", |s: &str| comment(s));
        env.add_filter("wrap_quoted", |s: &str, width: usize| wrap_quoted(s, width));
        for (name, source) in sources {
            env.add_template_owned(name.clone(), source)
                .map_err(|source| RenderError::Template {
                    template: name,
                    source,
                })?;
        }
        let entries = FILES.iter().chain(SHARED_FILES).map(|(t, _)| *t);
        for template in entries.chain([HANDLER, SHARED_MODEL]) {
            env.get_template(template)
                .map_err(|source| RenderError::Template {
                    template: template.to_string(),
                    source,
                })?;
        }
        Ok(Renderer { env, fingerprint })
    }

    /// SHA-256 over the template set: output changes only when this or the input does, so the
    /// controller regenerates after a template change (an operator upgrade) and not otherwise.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Render every file of one node.
    pub fn render(
        &self,
        node: &PlannedNode,
        generation_name: &str,
        external: &[ExternalSystem],
        dependencies: &[String],
        shared: Option<NodeSharedContext>,
    ) -> Result<RenderedNode, RenderError> {
        let ctx = NodeContext::new(node, generation_name, external, dependencies, shared);
        // Serialized once: every template and every handler stub reads the same value.
        let node_value = minijinja::Value::from_serialize(&ctx);
        let value = minijinja::context! { node => node_value.clone() };
        let mut files = BTreeMap::new();
        for (template, target) in FILES {
            let tpl = self
                .env
                .get_template(template)
                .map_err(|source| RenderError::Template {
                    template: template.to_string(),
                    source,
                })?;
            let out = tpl.render(&value).map_err(|source| RenderError::Template {
                template: template.to_string(),
                source,
            })?;
            files.insert(target_path(target, &ctx), out.into_bytes());
        }
        let handler = self
            .env
            .get_template(HANDLER)
            .map_err(|source| RenderError::Template {
                template: HANDLER.to_string(),
                source,
            })?;
        let mut user_files = BTreeSet::new();
        for op in &ctx.operations {
            let out = handler
                .render(minijinja::context! { node => node_value.clone(), op => op })
                .map_err(|source| RenderError::Template {
                    template: HANDLER.to_string(),
                    source,
                })?;
            let path = format!("{}/handlers/{}.py", ctx.package, op.module);
            files.insert(path.clone(), out.into_bytes());
            user_files.insert(path);
        }
        Ok(RenderedNode {
            dir_name: ctx.dir_name.clone(),
            content_hash: content_hash(&files),
            shared_hash: None,
            files,
            user_files,
            context: ctx,
        })
    }

    /// Render a system's shared models package.
    pub fn render_shared(&self, ctx: &SharedContext) -> Result<RenderedShared, RenderError> {
        let shared = minijinja::Value::from_serialize(ctx);
        let render = |template: &str, value: minijinja::Value| {
            self.env
                .get_template(template)
                .and_then(|t| t.render(value))
                .map(String::into_bytes)
                .map_err(|source| RenderError::Template {
                    template: template.to_string(),
                    source,
                })
        };
        let mut files = BTreeMap::new();
        for (template, target) in SHARED_FILES {
            let out = render(template, minijinja::context! { shared => shared.clone() })?;
            files.insert(target.replace("{pkg}", &ctx.package), out);
        }
        for model in &ctx.models {
            let out = render(
                SHARED_MODEL,
                minijinja::context! { shared => shared.clone(), model => model },
            )?;
            files.insert(format!("{}/models/{}.py", ctx.package, model.module), out);
        }
        Ok(RenderedShared {
            dir_name: ctx.package.clone(),
            content_hash: content_hash(&files),
            files,
            context: ctx.clone(),
        })
    }
}

fn target_path(pattern: &str, ctx: &NodeContext) -> String {
    pattern
        .replace("{pkg}", &ctx.package)
        .replace("{input}", &ctx.input_module)
        .replace("{output}", &ctx.output_module)
        .replace("{enum}", &ctx.enum_module)
}

/// SHA-256 over every path and content, in path order; lengths are included so that no two
/// different trees can hash the same by moving bytes between files.
pub fn content_hash(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in files {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

fn collect_embedded(dir: &Dir<'static>, out: &mut Vec<(String, String)>) {
    for file in dir.files() {
        if let Some(text) = file.contents_utf8() {
            out.push((
                file.path().to_string_lossy().replace('\\', "/"),
                text.to_string(),
            ));
        }
    }
    for sub in dir.dirs() {
        collect_embedded(sub, out);
    }
}

fn collect_dir(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, String)>,
) -> Result<(), RenderError> {
    let io = |source, path: &Path| RenderError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(e, dir))?
        .collect::<Result<_, _>>()
        .map_err(|e| io(e, dir))?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect_dir(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "j2") {
            let text = std::fs::read_to_string(&path).map_err(|e| io(e, &path))?;
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((name, text));
        }
    }
    Ok(())
}
