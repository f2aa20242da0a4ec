"""Install or upgrade the chart into a real cluster with Helm's own SDK; used by tests/e2e.rs.

    helm_release.py install|upgrade KUBECONFIG NAMESPACE RELEASE CHART_DIR [VALUES_JSON]

Prints the release summary as JSON (name, revision, status, chart_version, ...) on success; Helm's error and exit 1 otherwise.
No `helm` binary exists here: helm-python-sdk drives Helm v4's Go SDK through ctypes.
"""

from __future__ import annotations

import json
import sys

from helm_python.chart import Chart
from helm_python.config import Config
from helm_python.errors import HelmError


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6) or argv[0] not in ("install", "upgrade"):
        print(__doc__, file=sys.stderr)
        return 2
    action, kubeconfig, namespace, release, chart_dir = argv[:5]
    values = json.loads(argv[5]) if len(argv) == 6 else {}
    chart = Chart.load(chart_dir)
    try:
        with Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
            run = cfg.install if action == "install" else cfg.upgrade
            rel = run(chart, release, values, namespace=namespace, timeout=120)
    except HelmError as e:
        print(f"helm {action} failed: {e}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in rel.items() if k != "manifest"}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
