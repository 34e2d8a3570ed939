"""The Docker image's inputs (issue 15, item 13): locked versions that match what the tests ran
with, ray[default], the analysis package inside, and cluster recipes that name the same Ray."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    lines = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_constraints_lock_every_dependency_at_the_tested_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["cluster"]]
    assert [_name(r) for r in wanted if _name(r) not in pins] == []
    for name in ("torch", "ray", "mlflow", "optuna", "torchvision", "psutil"):
        assert pins[name] == importlib.metadata.version(name), name  # the tested versions
    # ray[default]: the dashboard / metrics-agent packages KubeRay and the launcher rely on.
    assert {"aiohttp-cors", "prometheus-client", "opencensus", "py-spy"} <= set(pins)


def test_the_image_installs_the_locked_cluster_stack_and_the_analysis_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install -c docker/constraints.txt ".[cluster]"' in dockerfile
    assert "COPY analysis ./analysis" in dockerfile and "ENV PYTHONPATH=/opt/dmx" in dockerfile
    assert "wget" in dockerfile  # KubeRay's probes
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "analysis" not in ignored and "docker" not in ignored and "dmx" not in ignored


def test_cluster_recipes_run_the_image_with_its_ray_version():
    ray = _pins()["ray"]
    cluster = yaml.safe_load((ROOT / "deploy" / "kuberay-raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == ray
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    workers = [
        g["template"]["spec"]["containers"][0]["image"] for g in cluster["spec"]["workerGroupSpecs"]
    ]
    assert workers and set(workers) == {head}  # one image on every node
    launcher = yaml.safe_load((ROOT / "deploy" / "ray-cluster-launcher.yaml").read_text())
    assert launcher["docker"]["image"] == head
