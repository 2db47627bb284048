"""The deployment files build valid service configs (what `serve run` hands to the app builder)."""

from __future__ import annotations

from pathlib import Path

import yaml

from svdpipe.placement import actor_layout
from svdpipe.service.config import ServiceConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _args(serve_config: dict) -> ServiceConfig:
    (app,) = serve_config["applications"]
    assert app["import_path"] == "svdpipe.service.app:app_builder"
    return ServiceConfig.model_validate(app["args"])


def test_serve_config_is_valid():
    config = _args(yaml.safe_load((DEPLOY / "serve_config.yaml").read_text()))
    assert config.engine.model == "tiny" and Path(config.data_dir).is_absolute()
    assert config.num_replicas == 1 and config.job_store is None  # zero set-up: one replica, SQLite


def test_kuberay_manifest_is_two_7_gpu_pipelines_on_a_shared_queue():
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay-rayservice.yaml").read_text()))
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    manifest = next(d for d in docs if d["kind"] == "RayService")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica serves every video
    config = _args(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    assert config.engine.num_stages == 7 and config.engine.num_gpus_per_actor == 1
    gpus = sum(b.get("GPU", 0) for b in config.bundles())
    (group,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    limit = pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == limit == len(actor_layout(config.engine)) == 7  # one pipeline fills one node
    assert config.autoscaling is not None and config.autoscaling.max_replicas == group["replicas"] == 2
    # the job store comes from the Secret, on every pod that can run a replica or build the app
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    for spec in (pod, head):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["SVDPIPE_JOB_STORE"]["valueFrom"]["secretKeyRef"]["name"] == "svdpipe"
        assert {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]} == {claim["metadata"]["name"]}
    assert config.job_store is None and config.data_dir.startswith("/data/")
