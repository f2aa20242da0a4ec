//! The `omninode-runtime` Python package that generated nodes import, carried in the binary and
//! shipped as a pure-Python wheel next to the generated nodes.
//!
//! `python/omninode-runtime`'s sources are embedded at compile time (build.rs lists them); [`build_wheel`] turns its
//! `pyproject.toml`, `README.md` and `src/omninode_runtime/**` into a `py3-none-any` wheel, with
//! no Python and no build backend involved. The archive is byte-for-byte deterministic: entries in
//! sorted order, every timestamp 1980-01-01 00:00:00, every mode 0o644, Unix as the creator
//! system, a fixed deflate level. `generate --output OUT` writes it to `OUT/_runtime/`, so that
//! `pip install --find-links OUT/_runtime OUT/<generation>/<node>` resolves the node's
//! `omninode-runtime` requirement without a checkout of this repository.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, System, ZipWriter};

/// The runtime's files, relative to `python/omninode-runtime` and sorted: its `pyproject.toml`,
/// `README.md` and package sources, listed by build.rs (which leaves the caches out).
static RUNTIME_FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/runtime_files.rs"));

/// Directory below an output directory that holds the runtime wheel.
pub const RUNTIME_DIR: &str = "_runtime";

/// Path components that are build or tool caches, never part of the package.
const SKIPPED_DIRS: &[&str] = &["__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"];

/// Mode of every file in the wheel.
const FILE_MODE: u32 = 0o644;

/// Deflate level (flate2); fixed so the bytes do not depend on the zip crate's default.
const DEFLATE_LEVEL: i64 = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeDistError {
    #[error("pyproject.toml: {0}")]
    Pyproject(String),
    #[error("pyproject.toml has no [project].{0}")]
    MissingField(&'static str),
    #[error("pyproject.toml [project].{field} {value:?}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("no files under {0}")]
    NoPackageFiles(String),
    #[error("writing the wheel archive: {0}")]
    Zip(String),
}

/// A built wheel: its file name (`omninode_runtime-0.1.0-py3-none-any.whl`) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wheel {
    pub file_name: String,
    pub bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct Pyproject {
    project: Option<Project>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Project {
    name: Option<String>,
    version: Option<String>,
    description: Option<String>,
    requires_python: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    optional_dependencies: BTreeMap<String, Vec<String>>,
    readme: Option<Readme>,
    license: Option<License>,
    #[serde(default)]
    authors: Vec<Person>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    classifiers: Vec<String>,
    #[serde(default)]
    urls: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Readme {
    File(String),
    Table {
        file: Option<String>,
        text: Option<String>,
        #[serde(rename = "content-type")]
        content_type: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum License {
    Expression(String),
    Table { text: Option<String> },
}

#[derive(Deserialize)]
struct Person {
    name: Option<String>,
    email: Option<String>,
}

/// The project's fields that the wheel needs, checked.
struct Meta {
    project: Project,
    name: String,
    version: String,
}

fn parse_pyproject(pyproject: &str) -> Result<Meta, RuntimeDistError> {
    let parsed: Pyproject =
        toml::from_str(pyproject).map_err(|e| RuntimeDistError::Pyproject(e.to_string()))?;
    let project = parsed
        .project
        .ok_or(RuntimeDistError::Pyproject("no [project] table".into()))?;
    let name = project
        .name
        .clone()
        .ok_or(RuntimeDistError::MissingField("name"))?;
    let valid_name = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        return Err(RuntimeDistError::InvalidField {
            field: "name",
            value: name,
            reason: "not a valid project name",
        });
    }
    let version = project
        .version
        .clone()
        .ok_or(RuntimeDistError::MissingField("version"))?;
    let valid_version = version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '!' | '-' | '_'));
    if !valid_version {
        return Err(RuntimeDistError::InvalidField {
            field: "version",
            value: version,
            reason: "not a valid version",
        });
    }
    for (field, values) in [
        (
            "dependencies",
            project.dependencies.iter().collect::<Vec<_>>(),
        ),
        (
            "optional-dependencies",
            project.optional_dependencies.values().flatten().collect(),
        ),
    ] {
        if let Some(bad) = values
            .into_iter()
            .find(|d| d.trim().is_empty() || d.contains('\n'))
        {
            return Err(RuntimeDistError::InvalidField {
                field,
                value: bad.clone(),
                reason: "not a one-line requirement",
            });
        }
    }
    Ok(Meta {
        project,
        name,
        version,
    })
}

/// PEP 503 normalisation: runs of `-`, `_`, `.` become one `-`, lower case.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_run = false;
        }
    }
    out
}

/// The name as it appears in wheel and `.dist-info` file names: normalised, `-` → `_`.
pub fn distribution_name(name: &str) -> String {
    normalize(name).replace('-', "_")
}

/// Whether a path (relative, `/`-separated) is a cache or build artefact rather than source.
fn is_skipped(path: &str) -> bool {
    let mut parts = path.split('/').peekable();
    while let Some(part) = parts.next() {
        if SKIPPED_DIRS.contains(&part) || part.ends_with(".egg-info") {
            return true;
        }
        if parts.peek().is_none() && (part.ends_with(".pyc") || part.ends_with(".pyo")) {
            return true;
        }
    }
    false
}

/// One header line's value: a single line, no surrounding space.
fn one_line(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `requirement; extra == "name"`, keeping a marker the requirement already has.
fn with_extra(requirement: &str, extra: &str) -> String {
    match requirement.split_once(';') {
        Some((req, marker)) if !marker.trim().is_empty() => {
            format!(
                "{}; ({}) and extra == \"{extra}\"",
                req.trim(),
                marker.trim()
            )
        }
        Some((req, _)) => format!("{}; extra == \"{extra}\"", req.trim()),
        None => format!("{}; extra == \"{extra}\"", requirement.trim()),
    }
}

fn content_type_for(file: &str) -> &'static str {
    let lower = file.to_ascii_lowercase();
    if lower.ends_with(".md") || lower.ends_with(".markdown") {
        "text/markdown"
    } else if lower.ends_with(".rst") {
        "text/x-rst"
    } else {
        "text/plain"
    }
}

/// The core metadata file (`METADATA`, version 2.1), with the readme as its body.
fn metadata(meta: &Meta, files: &BTreeMap<&str, &[u8]>) -> String {
    let p = &meta.project;
    let mut lines = vec![
        "Metadata-Version: 2.1".to_string(),
        format!("Name: {}", meta.name),
        format!("Version: {}", meta.version),
    ];
    if let Some(d) = &p.description {
        lines.push(format!("Summary: {}", one_line(d)));
    }
    if !p.keywords.is_empty() {
        lines.push(format!("Keywords: {}", one_line(&p.keywords.join(","))));
    }
    let authors: Vec<String> = p
        .authors
        .iter()
        .filter(|a| a.email.is_none())
        .filter_map(|a| a.name.as_deref().map(one_line))
        .collect();
    if !authors.is_empty() {
        lines.push(format!("Author: {}", authors.join(", ")));
    }
    let emails: Vec<String> = p
        .authors
        .iter()
        .filter_map(|a| {
            let email = one_line(a.email.as_deref()?);
            Some(match &a.name {
                Some(n) => format!("{} <{email}>", one_line(n)),
                None => email,
            })
        })
        .collect();
    if !emails.is_empty() {
        lines.push(format!("Author-email: {}", emails.join(", ")));
    }
    match &p.license {
        Some(License::Expression(l)) | Some(License::Table { text: Some(l) }) => {
            lines.push(format!("License: {}", one_line(l)));
        }
        _ => {}
    }
    for c in &p.classifiers {
        lines.push(format!("Classifier: {}", one_line(c)));
    }
    for (label, url) in &p.urls {
        lines.push(format!(
            "Project-URL: {}, {}",
            one_line(label),
            one_line(url)
        ));
    }
    if let Some(r) = &p.requires_python {
        lines.push(format!("Requires-Python: {}", one_line(r)));
    }
    for d in &p.dependencies {
        lines.push(format!("Requires-Dist: {}", d.trim()));
    }
    for (extra, deps) in &p.optional_dependencies {
        let extra = normalize(extra);
        lines.push(format!("Provides-Extra: {extra}"));
        for d in deps {
            lines.push(format!("Requires-Dist: {}", with_extra(d, &extra)));
        }
    }
    let readme = match &p.readme {
        Some(Readme::File(f)) => files.get(f.as_str()).map(|b| {
            (
                String::from_utf8_lossy(b).into_owned(),
                content_type_for(f).to_string(),
            )
        }),
        Some(Readme::Table {
            file,
            text,
            content_type,
        }) => {
            let body = match (text, file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => files
                    .get(f.as_str())
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                (None, None) => None,
            };
            let ct = match (content_type, file) {
                (Some(ct), _) => one_line(ct),
                (None, Some(f)) => content_type_for(f).to_string(),
                (None, None) => "text/plain".to_string(),
            };
            body.map(|b| (b, ct))
        }
        None => None,
    };
    let mut out = lines.join("\n");
    out.push('\n');
    if let Some((body, ct)) = readme {
        out.push_str(&format!("Description-Content-Type: {ct}\n\n"));
        out.push_str(&body);
        if !body.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn wheel_file() -> String {
    [
        "Wheel-Version: 1.0",
        "Generator: omninode-operator",
        "Root-Is-Purelib: true",
        "Tag: py3-none-any",
        "",
    ]
    .join("\n")
}

/// Unpadded URL-safe base64, as RECORD wants its hashes.
fn urlsafe_b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = chunk.len() + 1;
        for i in 0..symbols {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

/// One RECORD field, quoted as CSV when it has to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn record_line(path: &str, bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!(
        "{},sha256={},{}\n",
        csv_field(path),
        urlsafe_b64(&digest),
        bytes.len()
    )
}

/// Build the wheel from a `pyproject.toml` and the project's files, given as paths relative to
/// the project directory (`/`-separated: `README.md`, `src/omninode_runtime/__init__.py`, …).
/// Files outside `src/<package>/` are only read for the readme; caches are skipped.
pub fn build_wheel(
    pyproject: &str,
    files: &[(String, Vec<u8>)],
) -> Result<Wheel, RuntimeDistError> {
    let meta = parse_pyproject(pyproject)?;
    let dist = distribution_name(&meta.name);
    let version = meta.version.replace('-', "_");
    let by_path: BTreeMap<&str, &[u8]> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();

    let package_root = format!("src/{dist}/");
    let mut entries: Vec<(String, Vec<u8>)> = by_path
        .iter()
        .filter_map(|(path, bytes)| {
            let rel = path.strip_prefix(&package_root)?;
            (!rel.is_empty() && !is_skipped(rel)).then(|| (format!("{dist}/{rel}"), bytes.to_vec()))
        })
        .collect();
    if entries.is_empty() {
        return Err(RuntimeDistError::NoPackageFiles(package_root));
    }

    let dist_info = format!("{dist}-{version}.dist-info");
    entries.push((
        format!("{dist_info}/METADATA"),
        metadata(&meta, &by_path).into_bytes(),
    ));
    entries.push((format!("{dist_info}/WHEEL"), wheel_file().into_bytes()));
    let record_path = format!("{dist_info}/RECORD");
    let mut record = String::new();
    for (path, bytes) in &entries {
        record.push_str(&record_line(path, bytes));
    }
    record.push_str(&format!("{},,\n", csv_field(&record_path)));
    entries.push((record_path, record.into_bytes()));

    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(DEFLATE_LEVEL))
        .last_modified_time(DateTime::default())
        .unix_permissions(FILE_MODE)
        .system(System::Unix);
    let zip_err = |e: &dyn std::fmt::Display| RuntimeDistError::Zip(e.to_string());
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (path, bytes) in &entries {
        zip.start_file(path, options).map_err(|e| zip_err(&e))?;
        zip.write_all(bytes).map_err(|e| zip_err(&e))?;
    }
    let bytes = zip.finish().map_err(|e| zip_err(&e))?.into_inner();
    Ok(Wheel {
        file_name: format!("{dist}-{version}-py3-none-any.whl"),
        bytes,
    })
}

/// Every file of the embedded project, relative to its directory, sorted by path.
fn embedded_files() -> Vec<(String, Vec<u8>)> {
    RUNTIME_FILES
        .iter()
        .map(|(path, bytes)| (path.to_string(), bytes.to_vec()))
        .collect()
}

fn embedded_pyproject() -> &'static str {
    RUNTIME_FILES
        .iter()
        .find(|(path, _)| *path == "pyproject.toml")
        .and_then(|(_, bytes)| std::str::from_utf8(bytes).ok())
        .unwrap_or("")
}

/// The runtime wheel built from the embedded package; built once per process.
pub fn runtime_wheel() -> Result<&'static Wheel, RuntimeDistError> {
    static WHEEL: OnceLock<Result<Wheel, RuntimeDistError>> = OnceLock::new();
    WHEEL
        .get_or_init(|| build_wheel(embedded_pyproject(), &embedded_files()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The embedded runtime's version (`[project].version`), or "" if its pyproject cannot be read
/// (the unit tests rule that out for the embedded copy).
pub fn runtime_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        parse_pyproject(embedded_pyproject())
            .map(|m| m.version)
            .unwrap_or_default()
    })
}

/// Write the runtime wheel to `out_dir/_runtime/<file name>` and return that path. The file is
/// written to a temporary sibling and renamed into place; an identical file is left alone, and
/// other versions of the runtime wheel in that directory are removed so `--find-links` sees one.
pub fn write_runtime(out_dir: &Path) -> std::io::Result<PathBuf> {
    let wheel = runtime_wheel().map_err(std::io::Error::other)?;
    write_wheel(&out_dir.join(RUNTIME_DIR), wheel)
}

fn write_wheel(dir: &Path, wheel: &Wheel) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let target = dir.join(&wheel.file_name);
    let up_to_date = match std::fs::read(&target) {
        Ok(existing) => existing == wheel.bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if !up_to_date {
        let tmp = dir.join(format!(".{}.tmp-{}", wheel.file_name, std::process::id()));
        let result =
            std::fs::write(&tmp, &wheel.bytes).and_then(|()| std::fs::rename(&tmp, &target));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
    }
    // Stale wheels of other runtime versions (same distribution prefix, same tag).
    if let Some((dist, _)) = wheel.file_name.split_once('-') {
        let prefix = format!("{dist}-");
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != wheel.file_name && name.starts_with(&prefix) && name.ends_with(".whl") {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const PYPROJECT: &str = r#"
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "OmniNode.Runtime"
version = "0.1.0"
description = "Runtime for\n  generated nodes"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["pydantic>=2,<3", "PyYAML>=6"]

[project.optional-dependencies]
kafka = ["confluent-kafka>=2"]
Dev_Tools = ["pytest>=8; python_version >= \"3.11\""]
"#;

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("pyproject.toml".into(), PYPROJECT.as_bytes().to_vec()),
            ("README.md".into(), b"# Runtime\n\nHello.".to_vec()),
            (
                "src/omninode_runtime/__init__.py".into(),
                b"RUNTIME_VERSION = \"0.1.0\"\n".to_vec(),
            ),
            ("src/omninode_runtime/py.typed".into(), Vec::new()),
            (
                "src/omninode_runtime/sub/mod.py".into(),
                b"x = 1\n".to_vec(),
            ),
            (
                "src/omninode_runtime/__pycache__/__init__.cpython-311.pyc".into(),
                b"junk".to_vec(),
            ),
            ("src/omninode_runtime/sub/mod.pyc".into(), b"junk".to_vec()),
            (
                "src/omninode_runtime/.mypy_cache/3.11/x.json".into(),
                b"{}".to_vec(),
            ),
            (
                "src/omninode_runtime.egg-info/PKG-INFO".into(),
                b"x".to_vec(),
            ),
            (
                "src/omninode_runtime/.ruff_cache/CACHEDIR.TAG".into(),
                b"x".to_vec(),
            ),
            (".pytest_cache/v/cache".into(), b"x".to_vec()),
            ("tests/test_x.py".into(), b"def test(): pass\n".to_vec()),
        ]
    }

    fn unpack(wheel: &Wheel) -> Vec<(String, Vec<u8>, u32)> {
        let mut archive =
            zip::ZipArchive::new(Cursor::new(wheel.bytes.clone())).expect("valid zip");
        (0..archive.len())
            .map(|i| {
                let mut f = archive.by_index(i).expect("entry");
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).expect("read entry");
                assert_eq!(f.last_modified(), Some(DateTime::default()));
                (
                    f.name().expect("entry name").to_string(),
                    bytes,
                    f.unix_mode().expect("unix mode") & 0o777,
                )
            })
            .collect()
    }

    fn entry<'a>(entries: &'a [(String, Vec<u8>, u32)], name: &str) -> &'a str {
        let (_, bytes, _) = entries
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        std::str::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn deterministic() {
        let a = build_wheel(PYPROJECT, &files()).expect("build");
        let mut reversed = files();
        reversed.reverse();
        let b = build_wheel(PYPROJECT, &reversed).expect("build");
        assert_eq!(a, b);
        let again = build_wheel(PYPROJECT, &files()).expect("build");
        assert_eq!(a.bytes, again.bytes);
    }

    #[test]
    fn file_name_is_normalised() {
        let w = build_wheel(PYPROJECT, &files()).expect("build");
        assert_eq!(w.file_name, "omninode_runtime-0.1.0-py3-none-any.whl");
        assert_eq!(distribution_name("omninode-runtime"), "omninode_runtime");
        assert_eq!(distribution_name("Foo.._Bar-baz"), "foo_bar_baz");
        assert_eq!(normalize("Dev_Tools"), "dev-tools");
    }

    #[test]
    fn contents_sorted_caches_skipped_record_last() {
        let w = build_wheel(PYPROJECT, &files()).expect("build");
        let entries = unpack(&w);
        let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "omninode_runtime/__init__.py",
                "omninode_runtime/py.typed",
                "omninode_runtime/sub/mod.py",
                "omninode_runtime-0.1.0.dist-info/METADATA",
                "omninode_runtime-0.1.0.dist-info/WHEEL",
                "omninode_runtime-0.1.0.dist-info/RECORD",
            ]
        );
        assert!(entries.iter().all(|(_, _, mode)| *mode == 0o644));
    }

    #[test]
    fn record_hashes_match() {
        let w = build_wheel(PYPROJECT, &files()).expect("build");
        let entries = unpack(&w);
        let record = entry(&entries, "omninode_runtime-0.1.0.dist-info/RECORD");
        let lines: Vec<&str> = record.lines().collect();
        assert_eq!(lines.len(), entries.len());
        assert_eq!(
            lines.last().copied(),
            Some("omninode_runtime-0.1.0.dist-info/RECORD,,")
        );
        for line in &lines[..lines.len() - 1] {
            let fields: Vec<&str> = line.split(',').collect();
            let [path, hash, size] = fields[..] else {
                panic!("bad RECORD line {line}");
            };
            let (_, bytes, _) = entries.iter().find(|(n, _, _)| n == path).expect("listed");
            let expected = base64_reference(&Sha256::digest(bytes));
            assert_eq!(hash, format!("sha256={expected}"), "{path}");
            assert_eq!(size, bytes.len().to_string(), "{path}");
        }
        // The known digest of the empty file.
        assert!(record.contains(
            "omninode_runtime/py.typed,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n"
        ));
    }

    /// Independent of `urlsafe_b64`: the dev-dependency's encoder.
    fn base64_reference(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn base64_matches_reference() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(urlsafe_b64(&data), base64_reference(&data));
        }
    }

    #[test]
    fn metadata_lines() {
        let w = build_wheel(PYPROJECT, &files()).expect("build");
        let entries = unpack(&w);
        let metadata = entry(&entries, "omninode_runtime-0.1.0.dist-info/METADATA");
        let (headers, body) = metadata.split_once("\n\n").expect("headers and body");
        assert_eq!(
            headers.lines().collect::<Vec<_>>(),
            [
                "Metadata-Version: 2.1",
                "Name: OmniNode.Runtime",
                "Version: 0.1.0",
                "Summary: Runtime for generated nodes",
                "Requires-Python: >=3.11",
                "Requires-Dist: pydantic>=2,<3",
                "Requires-Dist: PyYAML>=6",
                "Provides-Extra: dev-tools",
                "Requires-Dist: pytest>=8; (python_version >= \"3.11\") and extra == \"dev-tools\"",
                "Provides-Extra: kafka",
                "Requires-Dist: confluent-kafka>=2; extra == \"kafka\"",
                "Description-Content-Type: text/markdown",
            ]
        );
        assert_eq!(body, "# Runtime\n\nHello.\n");
        let wheel = entry(&entries, "omninode_runtime-0.1.0.dist-info/WHEEL");
        assert_eq!(
            wheel,
            "Wheel-Version: 1.0\nGenerator: omninode-operator\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            build_wheel("[project]\nname = \"x\"\n", &files()),
            Err(RuntimeDistError::MissingField("version"))
        ));
        assert!(matches!(
            build_wheel("not toml [", &files()),
            Err(RuntimeDistError::Pyproject(_))
        ));
        assert!(matches!(
            build_wheel(
                "[project]\nname = \"bad name\"\nversion = \"1\"\n",
                &files()
            ),
            Err(RuntimeDistError::InvalidField { field: "name", .. })
        ));
        let only_caches = vec![(
            "src/omninode_runtime/__pycache__/a.pyc".to_string(),
            b"x".to_vec(),
        )];
        assert!(matches!(
            build_wheel(PYPROJECT, &only_caches),
            Err(RuntimeDistError::NoPackageFiles(_))
        ));
    }

    #[test]
    fn skip_rules() {
        assert!(is_skipped("__pycache__/a.cpython-311.pyc"));
        assert!(is_skipped("a/b.pyc"));
        assert!(is_skipped(".pytest_cache/README.md"));
        assert!(is_skipped("x.egg-info/PKG-INFO"));
        assert!(!is_skipped("pyc/mod.py"));
        assert!(!is_skipped("py.typed"));
    }

    #[test]
    fn write_is_atomic_idempotent_and_prunes_stale_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = build_wheel(PYPROJECT, &files()).expect("build");
        let runtime = dir.path().join(RUNTIME_DIR);
        std::fs::create_dir_all(&runtime).expect("mkdir");
        std::fs::write(
            runtime.join("omninode_runtime-0.0.9-py3-none-any.whl"),
            b"old",
        )
        .expect("stale");
        std::fs::write(runtime.join("other-1.0-py3-none-any.whl"), b"keep").expect("other");
        let path = write_wheel(&runtime, &w).expect("write");
        assert_eq!(path, runtime.join(&w.file_name));
        assert_eq!(std::fs::read(&path).expect("read"), w.bytes);
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_wheel(&runtime, &w).expect("rewrite");
        let again = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(modified, again, "identical bytes are not rewritten");
        let mut names: Vec<String> = std::fs::read_dir(&runtime)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [w.file_name.as_str(), "other-1.0-py3-none-any.whl"]);
    }

    #[test]
    fn embedded_runtime_builds() {
        let w = runtime_wheel().expect("embedded runtime builds");
        assert_eq!(
            w.file_name,
            format!("omninode_runtime-{}-py3-none-any.whl", runtime_version())
        );
        let entries = unpack(w);
        assert!(
            entries
                .iter()
                .any(|(n, _, _)| n == "omninode_runtime/__init__.py")
        );
        assert!(
            entries
                .iter()
                .any(|(n, _, _)| n == "omninode_runtime/py.typed")
        );
        assert!(
            entries
                .iter()
                .all(|(n, _, _)| !n.contains("__pycache__") && !n.ends_with(".pyc"))
        );
    }

    #[test]
    fn runtime_version_is_operator_version() {
        assert_eq!(runtime_version(), env!("CARGO_PKG_VERSION"));
    }
}
