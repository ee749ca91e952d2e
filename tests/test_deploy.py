"""The deployment files, which no test here can run: Kubernetes, compose, the Dockerfile.

The Kubernetes manifests are validated offline against the schemas bundled by
kubernetes-validate (strict: an unknown or misspelt field fails), and their
shutdown timings are checked against the settings the ConfigMap gives the
gateway, so changing one side without the other fails here. compose.yaml and
the Dockerfile are parsed and their structure checked.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor

from gateway.cli import env_names
from gateway.settings import Settings, trace_exporters

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# Applied on its own once its host is set (docs/operating.md), not by the kustomization.
INGRESS = "ingress.yaml"
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Every Kubernetes release whose schemas kubernetes-validate bundles (1.25 on).
K8S_VERSIONS = sorted(
    {major_minor(v) for v in all_versions()}, key=lambda v: tuple(map(int, v.split(".")))
)

# Seconds beyond --shutdown-grace before the SIGKILL: uvicorn's share of the
# grace is rounded up to whole seconds (gateway/server.py), then the
# interpreter exits.
SHUTDOWN_MARGIN = 5.0

# ---------------------------------------------------------------- Kubernetes


def manifests() -> dict[str, dict[str, Any]]:
    """Each manifest of deploy/k8s by kind (one document per file, one file per kind)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        loaded = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert len(loaded) == 1, f"{path.name}: one manifest per file"
        doc = loaded[0]
        assert doc["kind"] not in docs, f"two manifests of kind {doc['kind']}"
        docs[doc["kind"]] = doc
    return docs


def pod_spec(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = docs["Deployment"]["spec"]["template"]["spec"]
    return spec


def gateway_container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def configured_environment(docs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The environment the pod gets: the ConfigMap's data, then the Secret's."""
    secret = docs["Secret"]
    return {**docs["ConfigMap"]["data"], **secret.get("stringData", {}), **secret.get("data", {})}


def configured_settings(
    docs: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings as the gateway reads them in the pod: from that environment alone."""
    for name in list(os.environ):
        if name.startswith("KUMIHO_"):
            monkeypatch.delenv(name)
    for name, value in configured_environment(docs).items():
        monkeypatch.setenv(name, value)
    return Settings()


def prestop_seconds(container: dict[str, Any]) -> float:
    """How long the preStop hook holds the SIGTERM back: `sleep N`, as exec or native action."""
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert len(command) == 2 and command[0] in ("sleep", "/bin/sleep"), command
    return float(command[1])


def shutdown_problems(
    docs: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """What is wrong with the shutdown timings of these manifests, if anything."""
    settings = configured_settings(docs, monkeypatch)
    prestop = prestop_seconds(gateway_container(docs))
    termination_grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    problems = []
    # The preStop sleep covers the endpoint removal, which races the SIGTERM.
    if prestop < 3:
        problems.append(f"preStop {prestop} s: too short for kube-proxy and ingresses")
    # The gateway cuts a longer drain delay to half the grace (gateway/server.py).
    if not 0 < settings.drain_delay <= settings.shutdown_grace / 2:
        problems.append(
            f"KUMIHO_GATEWAY_DRAIN_DELAY {settings.drain_delay} is not in "
            f"(0, KUMIHO_GATEWAY_SHUTDOWN_GRACE / 2]"
        )
    # The SIGTERM comes after the preStop, then the gateway exits within its
    # grace; the SIGKILL comes terminationGracePeriodSeconds after the deletion.
    if termination_grace < prestop + settings.shutdown_grace + SHUTDOWN_MARGIN:
        problems.append(
            f"terminationGracePeriodSeconds {termination_grace} < preStop {prestop} + "
            f"KUMIHO_GATEWAY_SHUTDOWN_GRACE {settings.shutdown_grace} + {SHUTDOWN_MARGIN}"
        )
    return problems


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", INGRESS}
    assert set(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)
    docs = manifests()
    assert set(docs) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
    }
    # The image the kustomization points elsewhere is the one the Deployment names.
    assert [image["name"] for image in kustomization["images"]] == [
        gateway_container(docs)["image"]
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    for kind, doc in manifests().items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(part) for part in e.path)
            pytest.fail(f"{kind} is not valid Kubernetes {version}: {where}: {e.message}")


@pytest.mark.parametrize(
    "break_it",
    [
        # A misspelt field, which the API server would drop or refuse.
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=30),
        # A port as text where a number is required.
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
            containerPort="8000"
        ),
        # A probe without a handler's required field.
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop(
            "port"
        ),
    ],
    ids=["unknown-field", "wrong-type", "missing-field"],
)
def test_validation_catches_a_broken_deployment(break_it: Any) -> None:
    broken = copy.deepcopy(manifests()["Deployment"])
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_configuration_is_settings_the_gateway_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    readable = {env: field for field in Settings.model_fields for env in env_names(field)}
    secret_fields = {
        field
        for field, info in Settings.model_fields.items()
        if "SecretStr" in str(info.annotation)
    }
    assert secret_fields == {"auth_token", "api_keys"}
    docs = manifests()
    in_configmap = set(docs["ConfigMap"]["data"])
    in_secret = set(docs["Secret"].get("stringData", {})) | set(docs["Secret"].get("data", {}))
    for name in in_configmap | in_secret:
        assert name in readable, f"{name} is no setting of the gateway (a typo?)"
    for name in in_configmap:
        assert readable[name] not in secret_fields, f"{name} is a credential: Secret, not ConfigMap"
    for field in secret_fields:
        assert set(env_names(field)) & in_secret, f"the Secret has no place for {field}"
    assert all(isinstance(value, str) for value in configured_environment(docs).values())

    # The pod reads both, and the gateway accepts what they say.
    env_from = gateway_container(docs)["envFrom"]
    assert {"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}} in env_from
    assert {"secretRef": {"name": docs["Secret"]["metadata"]["name"]}} in env_from
    settings = configured_settings(docs, monkeypatch)
    assert settings.host == "0.0.0.0"
    assert settings.workers == 1


def test_shutdown_timings_agree_with_the_gateway_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = manifests()
    container = gateway_container(docs)
    # Flags would override the ConfigMap's timings: the image's `serve`, nothing else.
    assert "command" not in container and container.get("args", ["serve"]) == ["serve"]
    assert shutdown_problems(docs, monkeypatch) == []


def set_env(docs: dict[str, dict[str, Any]], name: str, value: float) -> None:
    docs["ConfigMap"]["data"][name] = str(value)


def set_prestop(docs: dict[str, dict[str, Any]], seconds: float) -> None:
    gateway_container(docs)["lifecycle"]["preStop"] = {
        "exec": {"command": ["sleep", str(int(seconds))]}
    }


def set_termination_grace(docs: dict[str, dict[str, Any]], seconds: float) -> None:
    pod_spec(docs)["terminationGracePeriodSeconds"] = int(seconds)


# Each changes one value only, from what the manifests hold now: (grace, preStop,
# terminationGracePeriodSeconds) -> a change that the check must refuse.
ONE_SIDED_CHANGES = {
    "longer-shutdown-grace": (
        lambda docs, g, p, t: set_env(docs, "KUMIHO_GATEWAY_SHUTDOWN_GRACE", t - p),
        "terminationGracePeriodSeconds",
    ),
    "longer-prestop": (
        lambda docs, g, p, t: set_prestop(docs, t - g),
        "terminationGracePeriodSeconds",
    ),
    "shorter-termination-grace": (
        lambda docs, g, p, t: set_termination_grace(docs, p + g),
        "terminationGracePeriodSeconds",
    ),
    "short-prestop": (lambda docs, g, p, t: set_prestop(docs, 1), "preStop"),
    "drain-delay-past-half-the-grace": (
        lambda docs, g, p, t: set_env(docs, "KUMIHO_GATEWAY_DRAIN_DELAY", g / 2 + 1),
        "DRAIN_DELAY",
    ),
    "no-drain-delay": (
        lambda docs, g, p, t: set_env(docs, "KUMIHO_GATEWAY_DRAIN_DELAY", 0),
        "DRAIN_DELAY",
    ),
}


@pytest.mark.parametrize("change", sorted(ONE_SIDED_CHANGES))
def test_shutdown_check_refuses_a_change_to_one_side_alone(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    docs = copy.deepcopy(manifests())
    settings = configured_settings(docs, monkeypatch)
    container = gateway_container(docs)
    apply, complaint = ONE_SIDED_CHANGES[change]
    apply(
        docs,
        settings.shutdown_grace,
        prestop_seconds(container),
        pod_spec(docs)["terminationGracePeriodSeconds"],
    )
    problems = shutdown_problems(docs, monkeypatch)
    assert any(complaint in problem for problem in problems), problems


def test_probes_ports_and_selectors_fit_together(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = manifests()
    settings = configured_settings(docs, monkeypatch)
    container = gateway_container(docs)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": settings.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # /readyz may wait a second for the upstream before it answers.
    assert container["readinessProbe"]["timeoutSeconds"] >= 2

    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service"]["spec"]
    for selector in (
        docs["Deployment"]["spec"]["selector"]["matchLabels"],
        service["selector"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector and selector.items() <= labels.items()
    assert [port["targetPort"] for port in service["ports"]] == ["http"]
    # Any replica resumes any client: no stickiness.
    assert service.get("sessionAffinity", "None") == "None"


def test_pod_runs_as_the_image_user_on_a_read_only_filesystem() -> None:
    docs = manifests()
    dockerfile = DOCKERFILE.read_text()
    useradd = re.search(r"useradd\b.*--uid (\d+)", dockerfile)
    assert useradd, "the Dockerfile creates the image's user with a fixed uid"
    uid = int(useradd.group(1))
    pod = pod_spec(docs)["securityContext"]
    assert pod["runAsNonRoot"] is True
    # The image's USER is a name, which the kubelet cannot check against runAsNonRoot.
    assert pod["runAsUser"] == uid
    container = gateway_container(docs)["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    # The preStop runs `sleep` from the image: Debian's, where coreutils is essential.
    assert re.search(r"^FROM python:[\d.]+-slim\b", dockerfile, re.MULTILINE)


def test_autoscaler_and_disruption_budget_leave_replicas_serving() -> None:
    docs = manifests()
    deployment = docs["Deployment"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert docs["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    # The HPA owns the count: re-applying the Deployment must not reset it.
    assert "replicas" not in deployment["spec"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    [metric] = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is measured against the request, which must be there.
    assert gateway_container(docs)["resources"]["requests"]["cpu"]

    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1
    # A rollout adds a replica before it drains one.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_ingress_streams_to_the_service_with_the_proxy_settings_sse_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = manifests()
    ingress = docs["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert annotations[prefix + "proxy-buffering"] == "off"
    # Above the heartbeat the pods are given, and as long as deploy/nginx/sse.conf's.
    sse_conf = (ROOT / "deploy" / "nginx" / "sse.conf").read_text()
    for name in ("read", "send"):
        timeout = float(annotations[f"{prefix}proxy-{name}-timeout"])
        conf = re.search(rf"^proxy_{name}_timeout (\d+)s;", sse_conf, re.MULTILINE)
        assert conf and timeout == float(conf.group(1))
        assert timeout > 2 * configured_settings(docs, monkeypatch).heartbeat
    # Every path goes to the Service, by a port the Service has.
    service = docs["Service"]
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in port_names


def test_the_docs_state_the_shutdown_timings_the_manifests_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = manifests()
    settings = configured_settings(docs, monkeypatch)
    prestop = prestop_seconds(gateway_container(docs))
    termination_grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    text = (ROOT / "docs" / "operating.md").read_text()
    stated = re.search(
        r"terminationGracePeriodSeconds \((\d+)\) = preStop \((\d+)\) \+ "
        r"shutdown grace \((\d+)\) \+ margin \((\d+)\)",
        text,
    )
    assert stated, "docs/operating.md states the shutdown timings as one sum"
    numbers = [float(n) for n in stated.groups()]
    assert numbers[:3] == [termination_grace, prestop, settings.shutdown_grace]
    assert numbers[0] == sum(numbers[1:]) and numbers[3] >= SHUTDOWN_MARGIN
    drain = re.search(r"0 < drain delay \((\d+)\)", text)
    assert drain and float(drain.group(1)) == settings.drain_delay


# ------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A service's volumes as target -> (source, mode), from the short syntax."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def test_compose_makes_its_own_certificate() -> None:
    services = compose()["services"]
    tls, nginx = services["tls"], services["nginx"]
    assert nginx["depends_on"]["tls"] == {"condition": "service_completed_successfully"}

    [(target, (volume, mode))] = mounts(tls).items()
    assert mode == "rw"
    assert volume in compose()["volumes"], "the certificate lives in a named volume"
    # The paths the tls service writes are those nginx reads, through the same volume.
    command = " ".join(tls["command"])
    nginx_conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    read = re.findall(r"ssl_certificate(?:_key)?\s+(\S+);", nginx_conf)
    assert len(read) == 2
    for path in read:
        directory, name = path.rsplit("/", 1)
        assert mounts(nginx)[directory] == (volume, "ro")
        assert f"{target}/{name}" in command

    # No service needs files that are not in the repository.
    for name, service in services.items():
        for source, _ in mounts(service).values():
            assert "tls" not in source or source == volume, f"{name} mounts {source}"
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
    assert not (COMPOSE.parent / "tls").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_compose_certificate_command_makes_a_usable_certificate(tmp_path: Path) -> None:
    tls = compose()["services"]["tls"]
    [target] = mounts(tls)
    assert tls["entrypoint"] == ["sh", "-c"]
    script = tls["command"][0].replace(f"{target}/", f"{tmp_path}/")
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=60)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:localhost" in text
    # A restart keeps a certificate that is still good.
    before = cert.read_bytes()
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=60)
    assert cert.read_bytes() == before


def test_compose_stop_grace_covers_the_gateway_shutdown() -> None:
    for name in ("gateway-1", "gateway-2"):
        service = compose()["services"][name]
        grace = float(service["environment"]["KUMIHO_GATEWAY_SHUTDOWN_GRACE"])
        drain = float(service["environment"]["KUMIHO_GATEWAY_DRAIN_DELAY"])
        assert drain <= grace / 2
        stop = float(service["stop_grace_period"].removesuffix("s"))
        assert stop >= grace + SHUTDOWN_MARGIN


def test_compose_gateways_trust_only_what_can_reach_them() -> None:
    # Trusting any peer's X-Forwarded-For is safe only while nothing but nginx,
    # which replaces the header with the client's address, reaches the gateways.
    services = compose()["services"]
    for name in ("gateway-1", "gateway-2"):
        service = services[name]
        assert service["environment"]["KUMIHO_GATEWAY_FORWARDED_ALLOW_IPS"] == "*"
        assert "ports" not in service and "network_mode" not in service, name
    sse_conf = (ROOT / "deploy" / "nginx" / "sse.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in sse_conf.splitlines()


def test_compose_sends_the_gateways_traces_to_its_collector() -> None:
    services = compose()["services"]
    collector = services["otel-collector"]
    [(target, (source, mode))] = mounts(collector).items()
    assert mode == "ro" and f"--config={target}" in collector["command"]
    config = yaml.safe_load((COMPOSE.parent / source).read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"] and pipeline["exporters"]
    listening = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    for name in ("gateway-1", "gateway-2"):
        service = services[name]
        env = {key: str(value) for key, value in service["environment"].items()}
        # Tracing on, over OTLP/gRPC, to the collector's gRPC port.
        assert trace_exporters(env) == ["otlp_proto_grpc"]
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.hostname == "otel-collector" in service["depends_on"]
        assert listening.endswith(f":{endpoint.port}")


# --------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, rest = (current + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def dependency_install() -> tuple[int, str]:
    """The RUN that installs the dependencies: its position and its arguments."""
    steps = dockerfile_instructions()
    found = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "RUN" and "-r " in args]
    assert len(found) == 1, "one RUN installs the dependency list"
    return found[0]


def test_dockerfile_installs_dependencies_in_a_layer_before_the_code() -> None:
    steps = dockerfile_instructions()
    deps_at, deps = dependency_install()
    copies = [(i, args.split()) for i, (kw, args) in enumerate(steps) if kw == "COPY"]
    # Before the dependencies: pyproject.toml alone, so only it can invalidate them.
    assert [files for i, files in copies if i < deps_at] == [["pyproject.toml", "./"]]
    assert "pip install" in deps
    code_at = next(i for i, files in copies if files[0] == "gateway")
    static_at = next(i for i, files in copies if files[0] == "static")
    assert deps_at < code_at and deps_at < static_at
    # After the code: the package alone, without fetching anything again.
    final = [args for i, (kw, args) in enumerate(steps) if kw == "RUN" and i > code_at]
    assert len(final) == 1 and "pip install --no-deps" in final[0]
    assert "--no-build-isolation" in final[0]


def test_dockerfile_dependency_list_is_pyproject_s() -> None:
    _, deps = dependency_install()
    words = shlex.split(deps)
    code = words[words.index("-c") + 1]
    # pip installs the very file that the code's output went to.
    assert words[words.index(">") + 1] == words[words.index("-r") + 1]
    listed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    # The otel extra too: the image traces when OTEL_* variables ask (compose.yaml does).
    expected = (
        pyproject["build-system"]["requires"]
        + project["dependencies"]
        + project["optional-dependencies"]["otel"]
    )
    assert [line for line in listed if line] == expected
