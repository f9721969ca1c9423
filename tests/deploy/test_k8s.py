"""Kubernetes manifests: every overlay rendered with `kubectl kustomize` and validated offline and strictly.

`kubernetes-validate` carries the Kubernetes JSON schemas, so validation needs no cluster. Custom resources
(ServiceMonitor, InferenceService, ScaledObject) have no schema there: their kind and key fields are checked
here by hand. Then the production properties of the issue are asserted on the rendered output.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import CPU_MAX_BATCH_PIXELS, CPU_MAX_BATCH_SIZE
from tests.deploy.conftest import K8S, load_yaml

OVERLAYS = ("cpu", "gpu")
COMPONENTS = ("weights-pvc", "weights-init")  # hub-cache and hub-offline: their own test
# the oldest Kubernetes minor the manifests promise to work on, and the newest the validator knows
K8S_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}


def _kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed, so the kustomize overlays cannot be rendered here")
    return exe


def _render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _validate(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate each resource strictly; return the custom resources the validator has no schema for."""
    import kubernetes_validate

    custom = []
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                assert (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS, f"no schema for {doc['kind']}"
                custom.append(doc)
                break
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {path}: {error.message}")
    return custom


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']} resources"
        kinds[doc["kind"]] = doc
    return kinds


def _env(kinds: dict[str, dict[str, Any]]) -> dict[str, str]:
    return dict(kinds["ConfigMap"]["data"])


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    docs = _render(K8S / "overlays" / request.param)
    custom = _validate(docs)
    assert [doc["kind"] for doc in custom] == ["ServiceMonitor"]
    return request.param, _by_kind(docs)


def test_overlay_has_every_resource(overlay: tuple[str, dict[str, dict[str, Any]]]) -> None:
    _, kinds = overlay
    expected = {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "ServiceAccount",
        "NetworkPolicy",
        "ServiceMonitor",
        "HorizontalPodAutoscaler",
    }
    assert set(kinds) == expected
    assert {doc["metadata"]["namespace"] for doc in kinds.values()} == {"vqserve"}


def test_deployment_is_production_shaped(overlay: tuple[str, dict[str, dict[str, Any]]]) -> None:
    _, kinds = overlay
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1, "one process per pod"
    container = pod["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": kinds["ConfigMap"]["metadata"]["name"]}}]

    # probes map one to one onto the service's health endpoints; the startup probe covers model loading
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120

    # the drain fits: preStop sleep + shutdown delay + VQSERVE_GRACEFUL_TIMEOUT_S < terminationGracePeriodSeconds
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    env = _env(kinds)
    drain = float(pre_stop[1]) + float(env["VQSERVE_SHUTDOWN_DELAY_S"]) + float(env["VQSERVE_GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] >= drain + 10

    resources = container["resources"]
    assert set(resources["requests"]) >= {"cpu", "memory"}
    assert set(resources["limits"]) >= {"cpu", "memory"}

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    tmp = {mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"}
    assert any(volume["name"] in tmp and "emptyDir" in volume for volume in pod["volumes"])


def test_selectors_match_the_pods(overlay: tuple[str, dict[str, dict[str, Any]]]) -> None:
    _, kinds = overlay
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(key) == value for key, value in selector.items())

    assert selects(kinds["Deployment"]["spec"]["selector"]["matchLabels"])
    assert selects(kinds["Service"]["spec"]["selector"])
    assert selects(kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    assert selects(kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"])
    service_labels = kinds["Service"]["metadata"]["labels"]
    monitor = kinds["ServiceMonitor"]["spec"]
    assert all(service_labels.get(k) == v for k, v in monitor["selector"]["matchLabels"].items())
    service_ports = {port["name"] for port in kinds["Service"]["spec"]["ports"]}
    assert [endpoint["port"] for endpoint in monitor["endpoints"]] == ["http"]
    assert "http" in service_ports
    assert monitor["endpoints"][0]["path"] == "/metrics"
    container_ports = {
        p["name"]: p["containerPort"] for p in kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert container_ports["http"] == int(_env(kinds)["VQSERVE_PORT"])


def test_hpa_scales_on_queue_depth_with_slow_scale_down(overlay: tuple[str, dict[str, dict[str, Any]]]) -> None:
    _, kinds = overlay
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vqserve"}
    assert hpa["metrics"][0]["type"] == "Pods"
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "vqserve_queue_depth"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    # a fixed replica count would be reset by every `kubectl apply`, fighting the autoscaler
    assert "replicas" not in kinds["Deployment"]["spec"]


def test_overlay_specifics(overlay: tuple[str, dict[str, dict[str, Any]]]) -> None:
    name, kinds = overlay
    env = _env(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].endswith(f":{name}")
    assert env["VQSERVE_HOST"] == "0.0.0.0"  # the service binds 127.0.0.1 unless told
    if name == "gpu":
        assert env["VQSERVE_DEVICE"] == "cuda"
        assert env["VQSERVE_DTYPE"] == "float16"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert env["VQSERVE_DEVICE"] == "cpu"
        assert env["VQSERVE_DTYPE"] == "float32"
        # the CPU values (tests/deploy/test_one_cpu_story.py)
        assert env["VQSERVE_MAX_BATCH_SIZE"] == str(CPU_MAX_BATCH_SIZE)
        assert env["VQSERVE_MAX_BATCH_PIXELS"] == str(CPU_MAX_BATCH_PIXELS)
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert "nodeSelector" not in pod


def _overlay_with(tmp_path: Path, base: str, *components: str) -> list[dict[str, Any]]:
    """Render `base` (an overlay) with `components`, from an overlay written into a copy of the tree."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    overlay = tree / "overlays" / "with-components"
    overlay.mkdir()
    listed = ", ".join(f"../../components/{component}" for component in components)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [../{base}]\ncomponents: [{listed}]\n"
    )
    return _render(overlay)


@pytest.mark.parametrize("component", COMPONENTS)
def test_weights_components_render_and_mount_models(component: str, tmp_path: Path) -> None:
    """Kustomize only renders a component through an overlay: `_overlay_with` builds one in a copy of the tree."""
    docs = _overlay_with(tmp_path, "gpu", component)
    _validate(docs)
    kinds = {doc["kind"]: doc for doc in docs}
    assert kinds["ConfigMap"]["data"]["VQSERVE_MODEL_PATH"].startswith("/models/")
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    if component == "weights-pvc":
        assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadOnlyMany"]
    else:
        init = pod["initContainers"][0]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        assert {m["mountPath"] for m in init["volumeMounts"]} == {"/models"}


@pytest.mark.parametrize("offline", [False, True], ids=["fetching", "air-gapped"])
def test_hub_cache_component_serves_a_repo_id_from_the_model_volume(offline: bool, tmp_path: Path) -> None:
    """`hub-cache`: a Hub repo id, its cache (HF_HOME) on a claim mounted at /models, HTTPS out to fetch it;
    with `hub-offline` after it: HF_HUB_OFFLINE=1, the volume read-only and DNS the only egress again."""
    from service.model_source import parse_hub_id

    docs = _overlay_with(tmp_path, "cpu", "hub-cache", *(["hub-offline"] if offline else []))
    _validate(docs)
    kinds = _by_kind(docs)
    env = _env(kinds)
    assert parse_hub_id(env["VQSERVE_MODEL_PATH"]) == ("CompVis/ldm-celebahq-256", None)
    assert env["VQSERVE_MODEL_SUBFOLDER"] == "vqvae"
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert env["HF_HOME"].startswith(mount["mountPath"] + "/")
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    claim = kinds["PersistentVolumeClaim"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    token = {item["name"]: item for item in container["env"]}["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    egress_ports = {
        (p["port"], p["protocol"]) for rule in kinds["NetworkPolicy"]["spec"]["egress"] for p in rule["ports"]
    }
    if offline:
        assert env["HF_HUB_OFFLINE"] == "1"
        assert mount["readOnly"] is True
        assert egress_ports == {(53, "UDP"), (53, "TCP")}
    else:
        assert "HF_HUB_OFFLINE" not in env
        assert not mount.get("readOnly", False), "huggingface_hub writes the cache (and its locks) on the volume"
        assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def _readme_overlay() -> str:
    """The `my-vqserve/kustomization.yaml` of deploy/README.md, as written there."""
    text = (K8S.parent / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    (overlay,) = [block for block in blocks if block.startswith("# my-vqserve/kustomization.yaml")]
    return overlay


def test_the_documented_own_overlay_renders_with_your_image_and_the_alerts(tmp_path: Path) -> None:
    """deploy/README.md's overlay beside a checkout: `kubectl kustomize` alone renders it, with the image it names,
    the PrometheusRule in the namespace, and the release label kube-prometheus-stack selects."""
    shutil.copytree(K8S, tmp_path / "vqserve" / "deploy" / "k8s")
    (tmp_path / "my-vqserve").mkdir()
    (tmp_path / "my-vqserve" / "kustomization.yaml").write_text(_readme_overlay())
    docs = _render(tmp_path / "my-vqserve")
    custom = _validate(docs)
    assert sorted(doc["kind"] for doc in custom) == ["PrometheusRule", "ServiceMonitor"]
    kinds = _by_kind(docs)
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/vqserve:1.0-cpu"
    assert {doc["metadata"]["namespace"] for doc in docs} == {"vqserve"}
    assert kinds["ServiceMonitor"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = load_yaml(K8S.parent / "prometheus" / "alerts.yml")["groups"]
    assert kinds["PrometheusRule"]["spec"]["groups"] == alerts


def test_the_overlays_image_is_the_documented_placeholder(overlay: tuple[str, dict[str, dict[str, Any]]]) -> None:
    """The README's `images:` override names the image the overlays set; change both together."""
    name, kinds = overlay
    image = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/example/vqserve:{name}"
    assert "- name: ghcr.io/example/vqserve" in _readme_overlay()


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """Guards the tests above: strict validation must catch an unknown field, not ignore it."""
    import kubernetes_validate

    deployment = load_yaml(K8S / "base/deployment.yaml")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_extras_are_well_formed() -> None:
    """KServe and KEDA are CRDs (no schema offline): check kind and the fields that matter."""
    isvc = load_yaml(K8S / "extras/kserve-inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) in CUSTOM_KINDS
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["name"] == "kserve-container"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert int(env["VQSERVE_PORT"]) == container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    keda = load_yaml(K8S / "extras/keda-scaledobject.yaml")
    assert (keda["apiVersion"], keda["kind"]) in CUSTOM_KINDS
    assert keda["spec"]["scaleTargetRef"]["name"] == "vqserve"
    trigger = keda["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "vqserve_queue_depth" in trigger["metadata"]["query"]
    scale_down = keda["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 60
