"""deploy/kubernetes: every overlay renders (`kubectl kustomize`) and validates offline against the Kubernetes
1.32 OpenAPI schemas (`kubernetes-validate`, strict: unknown fields fail); what `podman kube play` ignores
(readiness/startup probes, preStop, the grace period, HPA, PDB, NetworkPolicy, Service) is checked here
on the rendered objects and, for probes and drain timing, on a real `python -m app` process."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.processes import ROOT, free_port, spawn, stop, wait_ready

KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if (p / "kustomization.yaml").exists())
K8S_VERSION = "1.32"  # the kubectl here; the schemas are bundled with kubernetes-validate
Doc = dict[str, Any]

# No schema for the Prometheus Operator's CRD ships offline: ServiceMonitor is checked against a
# hand-written subset of monitoring.coreos.com/v1 (the fields used here, nothing else allowed).
SERVICE_MONITOR_SCHEMA = json.loads((KUBE / "servicemonitor.schema.json").read_text())


def render(target: str) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl (with kustomize) is required under CI")
        pytest.skip("kubectl is not installed: the Kubernetes manifests cannot be rendered")
    out = subprocess.run([kubectl, "kustomize", str(KUBE / target)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


def env_values(ctr: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in ctr["env"] if "value" in e}


def env_secret(ctr: Doc, name: str) -> Doc:
    ref: Doc = next(e for e in ctr["env"] if e["name"] == name)["valueFrom"]["secretKeyRef"]
    return ref


def validate(doc: Doc) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return render("base")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_every_object_validates(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    for doc in docs:
        validate(doc)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    # Every Secret the pods read is in the overlay or named in its operator instructions (production).
    generated = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    instructions = (KUBE / "overlays" / overlay / "kustomization.yaml").read_text()
    for parent in OVERLAYS:  # and those of the overlays it builds on
        if f"../{parent}\n" in instructions:
            instructions += (KUBE / "overlays" / parent / "kustomization.yaml").read_text()
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for ctr in doc["spec"]["template"]["spec"]["containers"]:
                for ref in (e["valueFrom"]["secretKeyRef"] for e in ctr.get("env", []) if "valueFrom" in e):
                    assert ref["name"] in generated or f"create secret generic {ref['name']}" in instructions


def test_validation_is_strict(base: list[Doc]) -> None:
    """A misspelled field fails: the offline validation would catch a typo in the manifests."""
    api = copy.deepcopy(find(base, "Deployment", "pixelserve-api"))
    container(api)["readinesProbe"] = container(api).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(api)
    monitor = find(render("overlays/production"), "ServiceMonitor", "pixelserve-api")
    monitor["spec"]["endpoints"][0]["targetport"] = 9100
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_api_deployment_service_and_scaling_objects_agree(base: list[Doc]) -> None:
    api, worker = find(base, "Deployment", "pixelserve-api"), find(base, "Deployment", "pixelserve-worker")
    pod, ctr = api["spec"]["template"]["spec"], container(api)
    labels = api["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http": 8000, "metrics": 9100}
    assert env_values(ctr)["PIXELSERVE_METRICS_PORT"] == str(ports["metrics"])
    assert env_values(ctr)["PIXELSERVE_WORKERS"] == "1"
    assert env_secret(ctr, "PIXELSERVE_ADMIN_TOKEN").get("optional") is True
    assert env_secret(ctr, "PIXELSERVE_JOB_STORE_URL") == env_secret(container(worker), "PIXELSERVE_JOB_STORE_URL")
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    for c in (ctr, *pod["initContainers"], container(worker)):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for deployment in (api, worker):
        spec = deployment["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/srv/pixelserve/models"]]["persistentVolumeClaim"]["claimName"] == "pixelserve-models"
        assert "emptyDir" in volumes[mounts["/tmp"]]
    assert find(base, "PersistentVolumeClaim", "pixelserve-models")["spec"]["accessModes"] == ["ReadWriteMany"]

    service = find(base, "Service", "pixelserve-api")
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("http", 80, "http"), ("metrics", 9100, "metrics")}  # fmt: skip
    selects = service["spec"]["selector"].items()
    assert selects <= labels.items() and not selects <= worker["spec"]["template"]["metadata"]["labels"].items()
    assert (
        find(base, "PodDisruptionBudget", "pixelserve-api")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    hpa = find(base, "HorizontalPodAutoscaler", "pixelserve-api")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pixelserve-api"}
    assert hpa["minReplicas"] == api["spec"]["replicas"] == 3
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and "cpu" in ctr["resources"]["requests"]

    # Metrics: only from this namespace or the monitoring one; HTTP: from anywhere.
    policy = find(base, "NetworkPolicy", "pixelserve-api")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["ingress"]}
    assert rules["http"] is None and rules["metrics"]
    assert find(base, "NetworkPolicy", "pixelserve-worker")["spec"]["ingress"] == []


def test_grace_period_covers_prestop_drain_and_shutdown(base: list[Doc]) -> None:
    api = find(base, "Deployment", "pixelserve-api")
    ctr, env = container(api), env_values(container(api))
    pre_stop = ctr["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + float(env["PIXELSERVE_DRAIN_S"]) + float(env["PIXELSERVE_SHUTDOWN_GRACE_S"])
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed + 5  # + interpreter exit
    # Liveness must not kill a replica that is draining: it asks /health/live, which stays 200.
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/health/ready"

    worker = find(base, "Deployment", "pixelserve-worker")
    assert worker["spec"]["replicas"] == 1 and worker["spec"]["strategy"]["type"] == "Recreate"
    assert container(worker)["command"] == ["python", "-m", "training.worker"]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 600  # a job finishes


def test_overlays_wire_the_job_store_monitoring_and_queue_autoscaling() -> None:
    dev = render("overlays/dev")
    postgres, db_service = find(dev, "StatefulSet", "pixelserve-postgres"), find(dev, "Service", "pixelserve-postgres")
    url = base64.b64decode(find(dev, "Secret", "pixelserve-job-store")["data"]["url"]).decode()
    pg_env = env_values(container(postgres))
    assert url.startswith(f"postgresql+psycopg://{pg_env['POSTGRES_USER']}:")
    assert url.endswith(
        f"@{db_service['metadata']['name']}:{db_service['spec']['ports'][0]['port']}/{pg_env['POSTGRES_DB']}"
    )
    assert (
        env_secret(container(find(dev, "Deployment", "pixelserve-api")), "PIXELSERVE_JOB_STORE_URL")["name"]
        == (find(dev, "Secret", "pixelserve-job-store")["metadata"]["name"])
    )  # the hash-suffixed name
    allowed = find(dev, "NetworkPolicy", "pixelserve-postgres")["spec"]["ingress"][0]["from"]
    assert allowed == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "pixelserve"}}}]

    production = render("overlays/production")
    assert not [d for d in production if d["kind"] == "Secret"]  # the operator's, not in git
    monitor = find(production, "ServiceMonitor", "pixelserve-api")["spec"]
    service = find(production, "Service", "pixelserve-api")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}

    queue = find(render("overlays/production-queue-hpa"), "HorizontalPodAutoscaler", "pixelserve-api")["spec"]
    assert queue["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "pixelserve_queue_images"},
                "target": {"type": "AverageValue", "averageValue": "16"},
            },
        }
    ]


def test_seed_init_container_fills_an_empty_repository_and_never_overwrites(
    base: list[Doc], tiny_repository: Path, tmp_path: Path
) -> None:
    init = find(base, "Deployment", "pixelserve-api")["spec"]["template"]["spec"]["initContainers"][0]
    script = init["command"][2]
    target = tmp_path / "pvc"
    target.mkdir()
    subprocess.run([sys.executable, "-c", script, str(tiny_repository), str(target)], check=True)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in tiny_repository.iterdir())
    marker = next(target.glob("mnist/*/model.pt"))
    marker.write_bytes(b"published later")  # a repository the worker has written to since
    run = subprocess.run([sys.executable, "-c", script, str(tiny_repository), str(target)], capture_output=True)
    assert run.returncode == 0 and run.stdout == b"" and marker.read_bytes() == b"published later"
    assert not list(target.glob(".seed-*"))


def test_rendered_probes_and_drain_on_a_real_server(base: list[Doc], tiny_repository: Path, tmp_path: Path) -> None:
    """The image's command with the manifest's environment: every probe path answers 200; after SIGTERM
    readiness turns 503 while liveness stays 200, and the process exits within the grace period."""
    api = find(base, "Deployment", "pixelserve-api")
    ctr = container(api)
    port = free_port()
    env = {
        **env_values(ctr),
        "PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository),
        "PIXELSERVE_JOB_STORE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
        "PIXELSERVE_METRICS_PORT": str(free_port()),  # 9100 may be taken by a parallel run
    }
    url = f"http://127.0.0.1:{port}"
    process = spawn(["-m", "app", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "server.log")
    try:
        wait_ready(url, process)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctr[probe]["httpGet"]["port"] == "http"
            assert httpx.get(url + ctr[probe]["httpGet"]["path"], timeout=5).status_code == 200, probe
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert httpx.get(url + ctr["readinessProbe"]["httpGet"]["path"], timeout=5).status_code == 503
        assert httpx.get(url + ctr["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
        grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        pre_stop = float(ctr["lifecycle"]["preStop"]["exec"]["command"][1])
        # uvicorn re-raises the signal it handled once it has shut down: -SIGTERM here (0 as PID 1 in a container)
        assert process.wait(timeout=grace - pre_stop) in (0, -signal.SIGTERM)
        assert "Finished server process" in (tmp_path / "server.log").read_text()
        assert time.monotonic() - started >= float(env["PIXELSERVE_DRAIN_S"]) - 0.5  # it did drain
    finally:
        stop(process)
