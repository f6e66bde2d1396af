"""The monitoring files: Prometheus rules checked and unit-tested with promtool, the Grafana
dashboard and provisioning validated (Grafana itself is not started here), every query parsed,
and every metric they name seen on the real server's /metrics after traffic."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from helpers import API_KEYS, ROOT, RunningServer

from iris_bento.drift import bin_shares, decile_bins, psi

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "iris.json"
# Grafana's own variables, replaced by values it would send, so that the query parses.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$feature": "petal_length"}
# Metric names are the project's (iris_...), BentoML's (bentoml_...) and Prometheus's `up`;
# names with a colon are recording rules.
METRIC_NAME = re.compile(r"\b(?:iris|bentoml)[_:][a-z0-9_:]*|\bup\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from Debian's prometheus package, installed by the project's script if missing."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "apt_install.sh"), "prometheus"], capture_output=True, text=True
    )
    found = shutil.which("promtool")
    if result.returncode != 0 or found is None:
        pytest.skip((result.stderr.strip() or "promtool not found").splitlines()[-1])
    return found


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULES for group in load(path)["groups"] for rule in group["rules"]]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard, panels and variables, Grafana variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(SELECTOR, label) is Grafana's; the selector is PromQL.
            match = re.fullmatch(r"label_values\((.*), \w+\)", variable["query"]["query"])
            assert match, variable["query"]
            queries.append(match.group(1))
    filled = []
    for query in queries:
        for name, value in GRAFANA_VARIABLES.items():
            query = query.replace(name, value)
        assert "$" not in query, f"unknown Grafana variable in {query}"
        filled.append(query)
    return filled


def test_rules_pass_promtool_check(promtool: str) -> None:
    assert "SUCCESS" in run([promtool, "check", "rules", *map(str, RULES)])


def test_alerts_behave_as_their_unit_tests_say(promtool: str) -> None:
    output = run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert "FAILED" not in output


def test_every_alert_has_a_test_that_fires_and_one_that_stays_quiet() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert len(alerts) == 8
    fires, quiet = set(), set()
    for path in RULE_TESTS:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == alerts
    assert quiet == alerts


def test_every_alert_says_what_to_do() -> None:
    monitoring = (ROOT / "docs" / "monitoring.md").read_text()
    for rule in rules():
        if "alert" in rule:
            assert rule["for"], rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical")
            anchor = rule["annotations"]["runbook_url"].split("#")[1]
            assert f"### {rule['alert']}" in monitoring, anchor


def test_the_drift_rule_computes_the_psi_of_iris_bento_drift(promtool: str, tmp_path: Path) -> None:
    """The PSI of the rules and of the drill script are one number: the recording rule, fed a
    shifted histogram, gives what iris_bento.drift.psi gives for the same shares."""
    rng = np.random.default_rng(1)
    training = rng.normal(4.0, 1.0, 2000).round(1)
    bins = decile_bins(training)
    live = rng.normal(4.6, 1.2, 600).round(1)
    live_per_minute = np.bincount(
        np.searchsorted(bins["bounds"], live, side="left"), minlength=len(bins["shares"])
    )
    edges = [repr(b) for b in bins["bounds"]] + ["+Inf"]
    labels = 'job="iris-classifier", instance="a:3000", feature="petal_length"'
    series = []
    cumulative = np.cumsum(live_per_minute)
    for index, (edge, share) in enumerate(zip(edges, bins["shares"], strict=True)):
        lower = f', lower_le="{edges[index - 1]}"' if index else ""
        series.append(
            {
                "series": f'iris_feature_training_share{{{labels}, bin="{index + 1}", '
                f'le="{edge}"{lower}}}',
                "values": f"{share!r}x70",
            }
        )
        series.append(
            {
                "series": f'iris_feature_value_bucket{{{labels}, le="{edge}"}}',
                "values": f"0+{cumulative[index]}x70",
            }
        )
    series.append(
        {"series": f"iris_feature_value_count{{{labels}}}", "values": f"0+{len(live)}x70"}
    )
    expected = psi(bin_shares(live, bins["bounds"]), bins["shares"])
    test_file = tmp_path / "psi.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(PROMETHEUS / "rules" / "iris-model.yml")],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series,
                        "promql_expr_test": [
                            {
                                "expr": "round(iris_feature:psi:1h, 0.0001)",
                                "eval_time": "65m",
                                "exp_samples": [
                                    {
                                        "labels": f"{{{labels}}}",
                                        "value": round(expected, 4),
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    assert expected > 0.25, "a shift the alert would see"
    run([promtool, "test", "rules", str(test_file)])


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    queries = dashboard_queries()
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:query_{n}", "expr": q}
                            for n, q in enumerate(queries)
                        ],
                    }
                ]
            }
        )
    )
    assert f"SUCCESS: {len(queries)} rules found" in run(
        [promtool, "check", "rules", str(rule_file)]
    )


def test_prometheus_config_loads_the_rules(promtool: str, tmp_path: Path) -> None:
    """The configuration compose mounts, with the rules where compose mounts them."""
    config = load(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    output = run([promtool, "check", "config", str(local)])
    assert f"SUCCESS: {len(RULES)} rule files found" in output


def test_dashboard_and_provisioning_agree() -> None:
    """What Grafana would load: the provisioned datasource is the one every panel names, the
    dashboard lies where the provider reads, and compose mounts both there."""
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = load(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    providers = load(GRAFANA / "provisioning" / "dashboards" / "iris.yml")
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": datasource["uid"]}
    compose = load(ROOT / "compose.yaml")["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["volumes"])
    (provider,) = providers["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning/datasources"].endswith("/datasources")
    assert mounts["./deploy/grafana/provisioning/dashboards"].endswith("/dashboards")
    assert compose["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{provider['options']['path']}/{DASHBOARD.name}"
    )


def test_every_panel_and_rule_is_documented() -> None:
    monitoring = (ROOT / "docs" / "monitoring.md").read_text()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["title"] in monitoring, panel["title"]
    for rule in rules():
        if "record" in rule:
            assert f"`{rule['record']}`" in monitoring, rule["record"]


@pytest.mark.server
def test_every_metric_named_is_exported_by_the_server(server: RunningServer) -> None:
    """After traffic (answers, a 4xx), every metric a rule or panel names is on /metrics, and
    every recording rule they use is defined."""
    for features in ([5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 9.8, 2.2]):
        response = requests.post(
            f"{server.url}/predict",
            json={"features": features},
            headers={"x-api-key": API_KEYS[0]},
            timeout=10,
        )
        assert response.status_code == 200
    assert requests.post(f"{server.url}/predict", json={}, timeout=10).status_code == 401
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    exprs = [rule["expr"] for rule in rules()] + dashboard_queries()
    named = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert named & {"iris_feature_value_bucket", "bentoml_service_request_total"}
    for name in sorted(named):
        if ":" in name:
            assert name in recorded, name
        elif name != "up":  # Prometheus's own, for each scrape target
            assert name in exported, name
    # Every project metric the service exports is used by a rule or a panel, but for parts of
    # histograms that no query needs.
    assert {name for name in exported if name.startswith("iris_")} - named == {
        "iris_model_batch_rows_bucket",
        "iris_model_call_seconds_count",
        "iris_model_call_seconds_sum",
        "iris_feature_value_sum",
    }
