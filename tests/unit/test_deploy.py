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


def test_kuberay_manifest_is_the_7_gpu_reference():
    manifest = yaml.safe_load((DEPLOY / "kuberay-rayservice.yaml").read_text())
    config = _args(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    assert config.engine.num_stages == 7 and config.engine.num_gpus_per_actor == 1
    gpus = sum(b.get("GPU", 0) for b in config.bundles())
    (group,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limit = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == limit == len(actor_layout(config.engine)) == 7
