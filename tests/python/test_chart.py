"""The Helm chart through Helm's own SDK (helm-python-sdk: Helm v4 via ctypes, no binary)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from helm_python import chart as helm
from helm_python.errors import HelmError

from conftest import OPERATOR, ROOT

CHART = ROOT / "charts" / "omninode-operator"
ALL_FEATURES = yaml.safe_load((CHART / "ci" / "all-features-values.yaml").read_text())


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values, name="omninode-operator", namespace="omninode-system")
    docs = []
    for path in sorted(manifests):
        docs.extend(d for d in yaml.safe_load_all(manifests[path]) if d)
    return docs


def kinds(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_chart_lints_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_a_misspelt_key_is_rejected_by_the_schema() -> None:
    with pytest.raises(HelmError, match="replicaCont"):
        helm.Chart.load(CHART).validate_schema({"replicaCont": 2})
    with pytest.raises(HelmError):
        helm.Chart.load(CHART).validate_schema({"kafka": {"bootstrapServer": "k:9092"}})
    with pytest.raises(HelmError):
        helm.Chart.load(CHART).validate_schema({"logging": {"format": "xml"}})


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_rendering_is_deterministic(values: dict[str, Any] | None) -> None:
    assert render(values) == render(values)


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_operator_pod_is_pod_security_restricted(values: dict[str, Any] | None) -> None:
    (deploy,) = kinds(render(values))["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] > 0
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_labels_are_standard_and_never_argo_cd_tracking(values: dict[str, Any] | None) -> None:
    for doc in render(values):
        labels = doc["metadata"].get("labels", {})
        assert labels["app.kubernetes.io/name"] == "omninode-operator", doc["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        everything = [labels, doc["metadata"].get("annotations", {})]
        if doc["kind"] == "Deployment":
            template = doc["spec"]["template"]["metadata"]
            everything += [template.get("labels", {}), template.get("annotations", {})]
        for mapping in everything:
            for key in mapping:
                assert key != "app.kubernetes.io/instance", doc["kind"]
                assert not key.startswith("argocd.argoproj.io/"), doc["kind"]


def test_optional_objects_follow_their_switches() -> None:
    default = kinds(render())
    assert "PodDisruptionBudget" not in default
    assert "ServiceMonitor" not in default and "NetworkPolicy" not in default
    assert "PrometheusRule" not in default and "PodMonitor" not in default
    assert not any(c["metadata"]["name"].endswith("-dashboard") for c in default.get("ConfigMap", []))
    assert [r["kind"] for r in default["ClusterRole"]] == ["ClusterRole"]
    assert not any(r["metadata"]["name"].endswith("leader-election") for r in default.get("Role", []))
    env = {e["name"]: e.get("value") for e in default["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LEADER_ELECT"] == "false" and "WATCH_NAMESPACE" not in env

    full = kinds(render(ALL_FEATURES))
    assert full["PodDisruptionBudget"][0]["spec"]["minAvailable"] == 2
    assert full["ServiceMonitor"] and full["NetworkPolicy"]
    rule = full["PrometheusRule"][0]
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    shipped = yaml.safe_load((CHART / "rules" / "omninode-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"], "the PrometheusRule is not the tested rule file"
    dashboard = next(c for c in full["ConfigMap"] if c["metadata"]["name"] == "omninode-operator-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["omninode-operator.json"] == (CHART / "dashboards" / "omninode-operator.json").read_text().rstrip("\n")
    nodes = full["PodMonitor"][0]
    assert nodes["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert nodes["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert "ClusterRole" not in full
    roles = {r["metadata"]["name"]: r for r in full["Role"]}
    assert roles["omninode-operator"]["metadata"]["namespace"] == "team-a"
    lease = roles["omninode-operator-leader-election"]["rules"][0]
    assert lease["resources"] == ["leases"] and lease["apiGroups"] == ["coordination.k8s.io"]
    env = {e["name"]: e for e in full["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LEADER_ELECT"]["value"] == "true"
    assert env["WATCH_NAMESPACE"]["value"] == "team-a"
    assert env["KAFKA_SECRET_PROPERTIES"]["valueFrom"]["secretKeyRef"]["name"] == "kafka-credentials"
    assert env["KAFKA_PROPERTIES"]["value"].endswith(",$(KAFKA_SECRET_PROPERTIES)")


def test_rbac_is_least_privilege() -> None:
    for values in (None, ALL_FEATURES):
        docs = kinds(render(values))
        rules = [r for kind in ("ClusterRole", "Role") for role in docs.get(kind, []) for r in role["rules"]]
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            if "secrets" in rule["resources"]:
                # Only Git output credentials, only by name, only when configured.
                assert values is ALL_FEATURES and rule["verbs"] == ["get"], rule
                assert rule["resourceNames"] == ["gitops-credentials"], rule
            if "pods" in rule["resources"]:
                # Read only: a node's pods say why it cannot start.
                assert rule["resources"] == ["pods"] and set(rule["verbs"]) == {"get", "list", "watch"}, rule
        by_resource = {res: set(r["verbs"]) for r in rules for res in r["resources"]}
        assert by_resource["nodegenerations"] == {"get", "list", "watch"}
        assert by_resource["nodegenerations/status"] == {"patch"}
        assert by_resource["events"] == {"create"}


def test_every_operator_setting_is_reachable_from_values() -> None:
    help_text = subprocess.run(
        [str(OPERATOR), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = set(re.findall(r"\[env: ([A-Z_]+)=", help_text))
    (deploy,) = kinds(render(ALL_FEATURES))["Deployment"]
    env = {e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    # Custom templates are a build-your-own-image feature, not a chart value.
    missing = flags - env - {"OMNINODE_TEMPLATES_DIR"}
    assert not missing, f"operator settings the chart cannot set: {sorted(missing)}"


def test_chart_crds_are_the_generated_ones() -> None:
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), crd.name


def leaf_keys(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        return [k for key, v in values.items() for k in leaf_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [k for k in leaf_keys(values) if f"| `{k}` |" not in readme]
    assert not missing, f"values missing from the README table: {missing}"


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    """Every alert of the chart's PrometheusRule, firing and not firing (promtool test rules)."""
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        if os.environ.get("CI"):
            pytest.fail("PROMTOOL is not set; scripts/test-all.sh installs it")
        pytest.skip("no promtool: set PROMTOOL (scripts/test-all.sh installs Debian's prometheus)")
    rules = CHART / "rules"
    for args in (["check", "rules", "omninode-alerts.yaml"], ["test", "rules", "omninode-alerts.test.yaml"]):
        result = subprocess.run([promtool, *args], cwd=rules, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    alerts = [r["alert"] for g in yaml.safe_load((rules / "omninode-alerts.yaml").read_text())["groups"] for r in g["rules"]]
    tests = (rules / "omninode-alerts.test.yaml").read_text()
    for alert in alerts:
        # Each alert is tested firing (an expected alert) and not firing (exp_alerts: []).
        blocks = tests.split(f"alertname: {alert}\n")[1:]
        assert any("exp_alerts: []" in b.split("alertname:")[0] for b in blocks), f"{alert}: no not-firing case"
        assert any("exp_labels:" in b.split("alertname:")[0] for b in blocks), f"{alert}: no firing case"
    print(f"promtool: {len(alerts)} alerts, each tested firing and not firing")
