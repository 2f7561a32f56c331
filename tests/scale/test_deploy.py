"""The deploy files agree with the code and with each other.

The image, compose.yaml and the Kubernetes manifests cannot be run on the development machine (no Docker
engine, no Kubernetes; deploy/README.md), so what can be checked is checked here: every setting they name
exists, probes hit the real endpoints, ports and labels line up, the workers run as non-root, and HAProxy
accepts its config.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings, env_name

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTING_NAMES = {env_name(field) for field in Settings.__struct_fields__}


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return loaded


def manifests() -> dict[str, dict[str, Any]]:
    """The Kubernetes objects of deploy/k8s, by kind."""
    return {doc["kind"]: doc for doc in (load(f"k8s/{name}") for name in _kustomized())}


def _kustomized() -> list[str]:
    resources: list[str] = load("k8s/kustomization.yaml")["resources"]
    return resources


def _is_setting(name: str) -> bool:
    return name in SETTING_NAMES or not name.startswith(("CHATLEDGER_", "REDIS_"))


class TestKubernetes:
    def test_kustomization_lists_every_manifest(self) -> None:
        """`kubectl apply -k deploy/k8s` applies every file of the folder."""
        files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
        assert set(_kustomized()) == files
        assert set(manifests()) == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"}

    def test_configmap_and_secret_hold_real_settings(self) -> None:
        """Every key is a chatledger environment variable; the Secret names a Redis, not both kinds."""
        objects = manifests()
        names = [*objects["ConfigMap"]["data"], *objects["Secret"]["stringData"]]
        assert [name for name in names if name not in SETTING_NAMES] == []
        assert len({"REDIS_URL", "REDIS_CLUSTER_URL"} & set(objects["Secret"]["stringData"])) == 1

    def test_probes_ports_and_shutdown(self) -> None:
        """Readiness on /readyz, liveness on /healthz, on the port the settings bind; the grace period
        outlasts the preStop sleep plus the shutdown timeout; the pod runs as non-root."""
        objects = manifests()
        pod = objects["Deployment"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (port,) = container["ports"]
        assert str(port["containerPort"]) == objects["ConfigMap"]["data"]["CHATLEDGER_PORT"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        sleep_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        shutdown_s = float(objects["ConfigMap"]["data"]["CHATLEDGER_SHUTDOWN_TIMEOUT_S"])
        assert pod["terminationGracePeriodSeconds"] > sleep_s + shutdown_s
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert {
            ref["configMapRef" if "configMapRef" in ref else "secretRef"]["name"]
            for ref in container["envFrom"]
        } == {
            objects["ConfigMap"]["metadata"]["name"],
            objects["Secret"]["metadata"]["name"],
        }

    def test_service_and_autoscaler_point_at_the_deployment(self) -> None:
        """The Service selects the pods and targets their named port; the HPA scales the Deployment."""
        objects = manifests()
        deployment = objects["Deployment"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = objects["Service"]["spec"]
        assert service["selector"].items() <= labels.items()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert [p["targetPort"] for p in service["ports"]] == [container["ports"][0]["name"]]
        target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


class TestContainers:
    def test_dockerfile_is_slim_non_root_and_sets_real_settings(self) -> None:
        """A slim base, a numeric non-root USER, and only real settings in ENV."""
        text = (DEPLOY / "Dockerfile").read_text()
        assert all(image.endswith("-slim") for image in re.findall(r"^FROM (\S+)", text, re.M))
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users
        assert users[-1].isdigit()
        assert users[-1] != "0"
        env_block = re.search(r"^ENV (.*?)(?=^\S)", text, re.M | re.S)
        assert env_block
        names = re.findall(r"([A-Z_]+)=", env_block[1])
        assert "CHATLEDGER_HOST" in names
        assert all(_is_setting(name) for name in names), names

    def test_compose_runs_three_workers_behind_haproxy(self) -> None:
        """Redis, worker1-3 on the shared Redis, and HAProxy with deploy/haproxy.cfg, whose servers are
        exactly those workers."""
        services = load("compose.yaml")["services"]
        workers = sorted(name for name in services if name.startswith("worker"))
        assert workers == ["worker1", "worker2", "worker3"]
        for name in workers:
            environment = services[name]["environment"]
            assert environment["REDIS_URL"].startswith("redis://redis:")
            assert all(_is_setting(key) for key in environment)
        assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["haproxy"]["volumes"]
        servers = re.findall(r"^\s*server (\S+) (\S+):8080", (DEPLOY / "haproxy.cfg").read_text(), re.M)
        assert [(name, host) for name, host in servers] == [(w, w) for w in workers]

    @pytest.mark.haproxy
    def test_haproxy_accepts_its_config(self) -> None:
        """`haproxy -c` validates deploy/haproxy.cfg as compose mounts it."""
        haproxy = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if haproxy is None:
            pytest.fail("haproxy is not installed: apt-get install haproxy (.ci/run installs it)")
        result = subprocess.run(
            [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
