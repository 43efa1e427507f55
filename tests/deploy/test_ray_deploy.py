"""deploy/'s Ray cluster: the compose profile and the KubeRay manifest parse and reach compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mistudio_common.errors import InvalidArgument
from mistudio_compute.config import ComputeSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def kuberay() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes" / "raycluster.yaml").read_text()))


def test_the_ray_profile_runs_a_head_and_workers_of_the_service_image(compose: dict) -> None:
    services = compose["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["profiles"] == worker["profiles"] == ["ray"]
    assert head["image"] == worker["image"] == services["compute"]["image"]
    assert head["command"][:3] == ["ray", "start", "--head"]
    port = head["command"][head["command"].index("--port") + 1]
    assert worker["command"][worker["command"].index("--address") + 1] == f"ray-head:{port}"
    assert "ports" not in head and "ports" not in worker


def test_compose_gives_compute_a_ray_address_setting_off_by_default(compose: dict) -> None:
    env = compose["services"]["compute"]["environment"]
    assert env["MISTUDIO_COMPUTE_RAY_ADDRESS"] == "${COMPUTE_RAY_ADDRESS:-}"
    assert "ray_address" in ComputeSettings.model_fields


def test_kuberay_cluster_has_a_head_and_an_autoscaling_gpu_worker_group(
    kuberay: list[dict],
) -> None:
    cluster = next(d for d in kuberay if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"]
    assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]


def test_kuberay_config_points_compute_at_the_head_service(kuberay: list[dict]) -> None:
    cluster = next(d for d in kuberay if d["kind"] == "RayCluster")
    config = next(d for d in kuberay if d["kind"] == "ConfigMap")["data"]
    assert config["MISTUDIO_COMPUTE_RAY_ADDRESS"] == f"{cluster['metadata']['name']}-head-svc:6379"
    fields = {name.upper() for name in ComputeSettings.model_fields}
    for variable in config:
        assert variable.removeprefix("MISTUDIO_COMPUTE_") in fields, variable
    assert ComputeSettings.model_validate(
        {k.removeprefix("MISTUDIO_COMPUTE_").lower(): v for k, v in config.items()}
    ).ray_shards == int(config["MISTUDIO_COMPUTE_RAY_SHARDS"])


def test_compose_and_kuberay_keep_shard_states_in_a_bucket_compute_can_parse(
    compose: dict, kuberay: list[dict]
) -> None:
    env = compose["services"]["compute"]["environment"]
    config = next(d for d in kuberay if d["kind"] == "ConfigMap")["data"]
    for url in (
        env["MISTUDIO_COMPUTE_RAY_STATE_URL"].replace(
            "${COMPUTE_RAY_STATE_BUCKET:-mistudio-compute-state}", "mistudio-compute-state"
        ),
        config["MISTUDIO_COMPUTE_RAY_STATE_URL"],
    ):
        settings = ComputeSettings(ray_address="ray-head:6379", ray_state_url=url)
        bucket = settings.ray_state_bucket()
        assert bucket is not None and bucket.address.bucket == "mistudio-compute-state", url
        assert bucket.address.endpoint == "minio:9000"


def test_a_state_url_without_a_bucket_is_refused_naming_the_setting() -> None:
    settings = ComputeSettings(ray_address="auto", ray_state_url="s3://?endpoint=minio:9000")
    with pytest.raises(InvalidArgument) as refused:
        settings.ray_state_bucket()
    assert refused.value.field == "ray_state_url"


def test_without_a_ray_address_no_state_bucket_is_used() -> None:
    settings = ComputeSettings(ray_state_url="s3://states?endpoint=minio:9000")
    assert settings.ray_state_bucket() is None
