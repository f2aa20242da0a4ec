//! The embedded `omninode-runtime` wheel installs with pip into a fresh venv, from
//! `--find-links` alone (its dependencies may come from PyPI), and imports.
//!
//! Needs a Python with `venv`: set `OMNINODE_PYTHON` (any interpreter or venv interpreter; the
//! fresh venv is made from its base interpreter). Skipped when unset.

use std::path::Path;
use std::process::Command;

use omninode_operator::runtime_dist::{self, RUNTIME_DIR};

fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("PYTHONPATH")
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn wheel_installs_into_a_fresh_venv() {
    let Some(python) = std::env::var_os("OMNINODE_PYTHON") else {
        println!("skipped: set OMNINODE_PYTHON to a Python interpreter to run this test");
        return;
    };
    let wheel = runtime_dist::runtime_wheel().expect("runtime wheel builds");
    let version = runtime_dist::runtime_version();

    let tmp = tempfile::tempdir().expect("tempdir");
    let path = runtime_dist::write_runtime(tmp.path()).expect("write wheel");
    assert_eq!(path, tmp.path().join(RUNTIME_DIR).join(&wheel.file_name));
    assert_eq!(std::fs::read(&path).expect("read wheel"), wheel.bytes);
    let find_links = tmp.path().join(RUNTIME_DIR);

    let base = run(
        Path::new(&python),
        &["-c", "import sys; print(sys._base_executable)"],
    );
    let base = Path::new(base.trim());
    let venv = tmp.path().join("venv");
    run(base, &["-m", "venv", venv.to_str().expect("utf-8 path")]);
    let venv_python = venv.join("bin").join("python");

    let requirement = format!("omninode-runtime=={version}");
    run(
        &venv_python,
        &[
            "-m",
            "pip",
            "install",
            "--find-links",
            find_links.to_str().expect("utf-8 path"),
            &requirement,
        ],
    );

    let printed = run(
        &venv_python,
        &[
            "-c",
            "import omninode_runtime; print(omninode_runtime.RUNTIME_VERSION)",
        ],
    );
    assert_eq!(printed.trim(), version);

    let shown = run(
        &venv_python,
        &["-m", "pip", "show", "-f", "omninode-runtime"],
    );
    assert!(shown.contains(&format!("Version: {version}")), "{shown}");
    assert!(shown.contains("omninode_runtime/py.typed"), "{shown}");
    assert!(shown.contains("Requires: "), "{shown}");

    // The installed distribution is ours, not one from an index.
    let wheel_file = run(
        &venv_python,
        &[
            "-c",
            "import importlib.metadata as m; print(m.distribution('omninode-runtime').read_text('WHEEL'))",
        ],
    );
    assert!(
        wheel_file.contains("Generator: omninode-operator"),
        "{wheel_file}"
    );
}
