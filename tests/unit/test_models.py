"""Model loading: clear errors for missing directories, wrong layouts and unreachable hubs."""

from __future__ import annotations

import pytest

from svdpipe.errors import ModelLoadError
from svdpipe.models import load_model, model_spec


def test_missing_directory_or_nonsense():
    with pytest.raises(ModelLoadError, match="neither a built-in model"):
        load_model("/no/such/dir")


def test_wrong_layout(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=r"missing model_index\.json, vae"):
        load_model(str(tmp_path))


def test_unreachable_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not load SVD from hub id 'nobody/no-such-svd'"):
        load_model("nobody/no-such-svd", parts=["unet"])


def test_spec_of_saved_directory(tmp_path, reference_pipe):
    reference_pipe.save_pretrained(tmp_path)
    assert model_spec(str(tmp_path)) == model_spec("tiny")
