"""deploy/kubernetes: rendered, checked against the Kubernetes and KEDA schemas, and held to
DreamForge's own settings. No cluster and no network: the kustomizations are rendered here by a
small renderer that knows only the kustomize features the manifests use (and refuses any other),
and, where `kubectl` is installed, compared with `kubectl kustomize`'s own rendering."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from dreamforge.queue import make_huey
from dreamforge.settings import SECRET_NAMES, Settings

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    # In CI the dev extra has them: a missing one is a failure, not a skip.
    import jsonschema
    import kubernetes_validate
else:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
OVERLAYS = sorted(p.parent for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
TARGETS = [BASE, *OVERLAYS]
KEDA_SCHEMA = KUBE / "schemas" / "keda.sh-v1alpha1.schema.json"
SECRET_EXAMPLE = KUBE / "secret.example.yaml"
# The oldest Kubernetes the manifests promise to work on (docs/deploy-kubernetes.md).
KUBERNETES_VERSION = "1.31"
KEDA_KINDS = {"ScaledObject": "scaledObject", "TriggerAuthentication": "triggerAuthentication"}
# The worker needs this long after its drain gives up to hand the job back and exit.
HAND_BACK_MARGIN_S = 30


# ---- a minimal kustomize ------------------------------------------------------------------------

KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _json_pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _apply_json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = _json_pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] in ("add", "replace"):
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(index, copy.deepcopy(op["value"]))
                else:
                    node[index] = copy.deepcopy(op["value"])
            else:
                if op["op"] == "replace":
                    assert last in node, f"replace of a missing {op['path']}"
                node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"JSON patch op {op['op']!r} is not supported by this renderer")


def _matches(target: dict[str, Any], doc: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group, "version": version}
    unknown = set(target) - set(wanted)
    assert not unknown, f"patch target fields {unknown} are not supported by this renderer"
    return all(wanted[k] == v for k, v in target.items())


def _pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return []
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _set_image(container: dict[str, Any], rule: dict[str, Any]) -> None:
    name, tag = container["image"], ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != rule["name"]:
        return
    name = rule.get("newName", name)
    tag = str(rule.get("newTag", tag))
    container["image"] = f"{name}:{tag}" if tag else name


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize DIRECTORY` prints, for the features listed in KNOWN_KEYS."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN_KEYS
    assert not unknown, f"{directory}: kustomization keys {unknown} are not supported by the test renderer"
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        docs += render(path) if path.is_dir() else _load_docs(path)
    for patch in k.get("patches", []):
        assert set(patch) == {"target", "patch"}, f"only inline JSON 6902 patches are supported: {patch}"
        hits = [d for d in docs if _matches(patch["target"], d)]
        assert hits, f"{directory}: patch target {patch['target']} matches nothing"
        for doc in hits:
            _apply_json6902(doc, yaml.safe_load(patch["patch"]))
    for rule in k.get("replicas", []):
        hits = [d for d in docs if d["metadata"]["name"] == rule["name"] and d["kind"] == "Deployment"]
        assert hits, f"{directory}: replicas for {rule['name']} match nothing"
        for doc in hits:
            doc["spec"]["replicas"] = rule["count"]
    for rule in k.get("images", []):
        for doc in docs:
            for container in _pod_containers(doc):
                _set_image(container, rule)
    if "namespace" in k:
        for doc in docs:
            doc["metadata"]["namespace"] = k["namespace"]
    return docs


@cache
def rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    return tuple(render(directory))


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert name in found, f"no {kind} {name} among {sorted(found)}"
    return found[name]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def configmap_env(docs: tuple[dict[str, Any], ...], c: dict[str, Any]) -> dict[str, str]:
    """The plain (non-secret) environment a container gets: envFrom ConfigMaps, then `env`
    values, which win, as in Kubernetes."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert "configMapRef" in source, "secrets come in by secretKeyRef, one key at a time"
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def settings_for(docs: tuple[dict[str, Any], ...], c: dict[str, Any], monkeypatch) -> Settings:
    """DreamForge's settings as that container would load them (secrets left out)."""
    for name in [n for n in os.environ if n.startswith("DF_")]:
        monkeypatch.delenv(name)
    for name, value in configmap_env(docs, c).items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


# ---- rendering and schemas ----------------------------------------------------------------------

def test_there_are_overlays_to_check() -> None:
    names = {p.name for p in OVERLAYS}
    assert {"production", "single-gpu-node"} <= names


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_renders_what_kubectl_kustomize_renders(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the test renderer's output is not cross-checked")
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=False, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr

    def keyed(docs):
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert keyed(d for d in yaml.safe_load_all(out.stdout) if d) == keyed(rendered(directory))


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_manifests_pass_the_kubernetes_and_keda_schemas(directory: Path) -> None:
    docs = rendered(directory)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap",
            "PersistentVolumeClaim", "ScaledObject", "TriggerAuthentication"} <= kinds
    for doc in docs:
        if doc["kind"] in KEDA_KINDS:
            keda_validator(doc["kind"]).validate(doc)
        else:
            # strict: unknown fields fail, as `kubectl apply --validate=strict` would.
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_secret_example_passes_the_schema() -> None:
    (secret,) = _load_docs(SECRET_EXAMPLE)
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)


@cache
def keda_validator(kind: str):
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    sub = {k: v for k, v in schema.items() if k != "oneOf"}
    sub["$ref"] = f"#/$defs/{KEDA_KINDS[kind]}"
    return jsonschema.Draft202012Validator(sub)


def test_the_schema_checks_catch_broken_manifests() -> None:
    """The validators are not vacuous: each of these breakages is refused."""
    docs = rendered(BASE)
    api = copy.deepcopy(one(docs, "Deployment", "dreamforge-api"))
    api["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)
    worker = copy.deepcopy(one(docs, "Deployment", "dreamforge-worker"))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 600  # a typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(one(docs, "ScaledObject", "dreamforge-worker"))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 1  # KEDA wants strings there
    with pytest.raises(jsonschema.ValidationError):
        keda_validator("ScaledObject").validate(scaled)
    scaled = copy.deepcopy(one(docs, "ScaledObject", "dreamforge-worker"))
    scaled["spec"]["maxReplicas"] = 4  # not a ScaledObject field
    with pytest.raises(jsonschema.ValidationError):
        keda_validator("ScaledObject").validate(scaled)


# ---- the worker: GPU, drain, probes, scaling ----------------------------------------------------

@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_worker_drain_outlasts_dreamforges_shutdown_grace(directory: Path, monkeypatch) -> None:
    docs = rendered(directory)
    worker = one(docs, "Deployment", "dreamforge-worker")
    pod = worker["spec"]["template"]["spec"]
    settings = settings_for(docs, container(worker), monkeypatch)
    # SIGTERM → the job gets DF_SHUTDOWN_GRACE_S → handed back → exit; SIGKILL only after that.
    assert pod["terminationGracePeriodSeconds"] >= settings.shutdown_grace_s + HAND_BACK_MARGIN_S
    # The default DF_SHUTDOWN_GRACE_S is 600 s; whoever removes the env must raise the grace.
    assert settings.shutdown_grace_s > 0


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_worker_probes_agree_with_dreamforges_settings(directory: Path, monkeypatch) -> None:
    docs = rendered(directory)
    c = container(one(docs, "Deployment", "dreamforge-worker"))
    settings = settings_for(docs, c, monkeypatch)
    for probe in ("startupProbe", "livenessProbe"):
        # What the worker image's HEALTHCHECK runs: exit 0 while the job store and queue answer.
        assert c[probe]["exec"]["command"] == ["df", "status", "--json"]
    assert "readinessProbe" not in c, "workers serve nothing; readiness would mean nothing"
    live = c["livenessProbe"]
    # A worker rides out DF_STORE_WAIT_S of job-store outage by itself: liveness must not kill it first.
    assert live["periodSeconds"] * live["failureThreshold"] > settings.store_wait_s
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600, "startup must be generous"
    assert c["command"][:2] == ["df", "worker"]


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_worker_asks_for_one_gpu_and_no_replica_count(directory: Path) -> None:
    worker = one(rendered(directory), "Deployment", "dreamforge-worker")
    c = container(worker)
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--concurrency" not in c["command"] or c["command"][c["command"].index("--concurrency") + 1] == "1"
    assert "replicas" not in worker["spec"], "the ScaledObject owns the worker count"
    rolling = worker["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] >= 1
    assert "ports" not in c, "workers accept no connections"


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_keda_scales_the_worker_on_huey_redis_list(directory: Path, monkeypatch) -> None:
    docs = rendered(directory)
    worker = one(docs, "Deployment", "dreamforge-worker")
    settings = settings_for(docs, container(worker), monkeypatch)
    scaled = one(docs, "ScaledObject", "dreamforge-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert scaled["minReplicaCount"] == 0
    assert scaled["maxReplicaCount"] >= 1
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    # The list Huey pushes to, named by DreamForge's own queue code (no connection is made).
    huey = make_huey("redis://127.0.0.1:6379/0", settings.queue_name)
    assert trigger["metadata"]["listName"] == huey.storage.queue_key
    assert int(trigger["metadata"]["listLength"]) >= 1
    assert set(trigger["metadata"]) <= {"listName", "listLength", "activationListLength",
                                        "databaseIndex", "enableTLS", "unsafeSsl"}
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    assert {ref["parameter"] for ref in auth["secretTargetRef"]} >= {"address"}


# ---- the API ------------------------------------------------------------------------------------

@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_api_probes_and_port(directory: Path) -> None:
    docs = rendered(directory)
    api = one(docs, "Deployment", "dreamforge-api")
    c = container(api)
    port = Settings.model_fields["api_port"].default
    assert c["command"][:2] == ["df", "serve"] and "--no-worker" in c["command"]
    assert c["command"][c["command"].index("--port") + 1] == str(port)
    (declared,) = c["ports"]
    assert declared["containerPort"] == port
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in (declared["name"], port)
    service = one(docs, "Service", "dreamforge-api")
    (sp,) = service["spec"]["ports"]
    assert sp["targetPort"] in (declared["name"], port)
    assert labels_match(service["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])


# ---- settings and secrets -----------------------------------------------------------------------

def _known_settings() -> set[str]:
    return {f"DF_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_every_df_variable_is_a_real_setting(directory: Path) -> None:
    """Settings ignore unknown variables, so a typo would pass silently: catch it here."""
    docs = rendered(directory)
    for deployment in by_kind(docs, "Deployment").values():
        c = container(deployment)
        names = set(configmap_env(docs, c)) | {v["name"] for v in c.get("env", [])}
        unknown = {n for n in names if n.startswith("DF_")} - _known_settings()
        assert not unknown, f"{deployment['metadata']['name']}: {unknown} are not DreamForge settings"


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_no_secret_is_committed_and_all_come_from_the_secret(directory: Path) -> None:
    docs = rendered(directory)
    assert not by_kind(docs, "Secret"), "Secrets are the operator's: none may be rendered"
    (example,) = _load_docs(SECRET_EXAMPLE)
    example_keys = set(example["stringData"])
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|QUEUE_URL|ACCESS_KEY")
    for cm in by_kind(docs, "ConfigMap").values():
        leaked = {k for k in cm["data"] if secretish.search(k) or k in SECRET_NAMES}
        assert not leaked, f"ConfigMap {cm['metadata']['name']} holds secrets: {leaked}"
    for deployment in by_kind(docs, "Deployment").values():
        for var in container(deployment).get("env", []):
            if var["name"] in SECRET_NAMES or secretish.search(var["name"]):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                assert ref, f"{var['name']} must come from a Secret, not a value"
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == example["metadata"]["name"]
                assert ref["key"] in example_keys, f"secret.example.yaml lacks {ref['key']}"
    for auth in by_kind(docs, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == example["metadata"]["name"] and ref["key"] in example_keys


def test_secret_example_is_in_no_kustomization() -> None:
    for kustomization in KUBE.rglob("kustomization.yaml"):
        k = yaml.safe_load(kustomization.read_text())
        for entry in k.get("resources", []):
            assert (kustomization.parent / entry).resolve() != SECRET_EXAMPLE.resolve()


# ---- pods: security, volumes, resources ---------------------------------------------------------

def _dockerfile_user(name: str) -> tuple[int, int]:
    text = (ROOT / "containers" / name).read_text()
    (user,) = re.findall(r"^USER\s+(\d+):(\d+)\s*$", text, re.MULTILINE)
    return int(user[0]), int(user[1])


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
@pytest.mark.parametrize("name,dockerfile", [("dreamforge-api", "api.Dockerfile"),
                                             ("dreamforge-worker", "worker.Dockerfile")])
def test_pods_run_as_the_images_user_read_only(directory: Path, name: str, dockerfile: str,
                                               monkeypatch) -> None:
    docs = rendered(directory)
    deployment = one(docs, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    uid, gid = _dockerfile_user(dockerfile)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # With a read-only root, every place DreamForge writes is a mounted volume.
    settings = settings_for(docs, c, monkeypatch)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    assert str(settings.data_dir) in writable
    assert "/tmp" in writable
    env = configmap_env(docs, c)
    if "HOME" in env:
        assert env["HOME"] in writable
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    assert c["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_models_volume_is_read_only_at_models_root(directory: Path, monkeypatch) -> None:
    docs = rendered(directory)
    worker = one(docs, "Deployment", "dreamforge-worker")
    c = container(worker)
    settings = settings_for(docs, c, monkeypatch)
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == settings.models_root]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    one(docs, "PersistentVolumeClaim", claim)
    model, _ = settings.model_path()
    assert str(model).startswith(settings.models_root)


# ---- selectors, disruption budgets, network policy ----------------------------------------------

def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("directory", TARGETS, ids=lambda p: str(p.relative_to(KUBE)))
def test_selectors_budgets_and_policies_pick_the_right_pods(directory: Path) -> None:
    docs = rendered(directory)
    deployments = by_kind(docs, "Deployment")
    for d in deployments.values():
        assert labels_match(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
    for name in ("dreamforge-api", "dreamforge-worker"):
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        others = [d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items() if n != name]
        pdb = one(docs, "PodDisruptionBudget", name)["spec"]
        assert labels_match(pdb["selector"]["matchLabels"], pod_labels)
        assert not any(labels_match(pdb["selector"]["matchLabels"], o) for o in others)
        # maxUnavailable stays valid (and lets node drains proceed) at any replica count, zero too.
        assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb
        policy = one(docs, "NetworkPolicy", name)["spec"]
        assert labels_match(policy["podSelector"]["matchLabels"], pod_labels)
        assert not any(labels_match(policy["podSelector"]["matchLabels"], o) for o in others)
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        egress = {(p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]}
        assert {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (6379, "TCP"), (443, "TCP"), (9000, "TCP")} <= egress
    api_policy = one(docs, "NetworkPolicy", "dreamforge-api")["spec"]
    ingress = {p["port"] for rule in api_policy["ingress"] for p in rule["ports"]}
    assert ingress == {container(deployments["dreamforge-api"])["ports"][0]["containerPort"]}
    assert one(docs, "NetworkPolicy", "dreamforge-worker")["spec"]["ingress"] == []
