"""Shared fixtures: the tiny model, a test image, and diffusers' own pipeline as the reference."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model():
    from svdpipe.models import load_model

    return load_model("tiny", "fp32", "cpu")


@pytest.fixture(scope="session")
def reference_pipe():
    """diffusers' StableVideoDiffusionPipeline on an independently built copy of the tiny model."""
    from svdpipe.models import build_random_pipeline

    return build_random_pipeline("tiny")


@pytest.fixture(scope="session")
def image() -> PIL.Image.Image:
    rng = np.random.default_rng(1234)
    return PIL.Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))


def diffusers_frames(pipe, image, params) -> np.ndarray:
    """What diffusers gives for these resolved parameters (output_type='np', frames[0])."""
    import torch

    out = pipe(
        image,
        height=params.height,
        width=params.width,
        num_frames=params.num_frames,
        num_inference_steps=params.num_inference_steps,
        min_guidance_scale=params.min_guidance_scale,
        max_guidance_scale=params.max_guidance_scale,
        fps=params.fps,
        motion_bucket_id=params.motion_bucket_id,
        noise_aug_strength=params.noise_aug_strength,
        decode_chunk_size=params.decode_chunk_size,
        generator=torch.Generator("cpu").manual_seed(params.seed),
        output_type="np",
    )
    return out.frames[0]


# -- job stores: every contract test runs against SQLite and against a real PostgreSQL ------------------------

PG_SKIP_REASON = (
    "no PostgreSQL for the job-store tests: set SVDPIPE_TEST_PG_DSN, or run them under "
    "`python -m tests.pg -- python -m pytest ...` (CI does)"
)


@pytest.fixture
def pg_dsn():
    """The address of an empty schema of its own on the test PostgreSQL (dropped afterwards); skips without one."""
    import uuid
    from urllib.parse import quote

    import psycopg

    from tests.pg import DSN_ENV

    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        pytest.skip(PG_SKIP_REASON)
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in dsn else "?"
    yield f"{dsn}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request, tmp_path):
    """A function that opens a job store (a new connection each call) on one fresh database and data directory."""
    from svdpipe.service.store import SQLiteJobStore

    if request.param == "sqlite":

        def factory():
            return SQLiteJobStore(tmp_path)
    else:
        from svdpipe.service.store.postgres import PostgresJobStore

        dsn = request.getfixturevalue("pg_dsn")

        def factory():
            return PostgresJobStore(dsn, tmp_path)

    opened = []

    def open_() -> object:
        opened.append(factory())
        return opened[-1]

    open_.backend = request.param  # type: ignore[attr-defined]
    yield open_
    for store in opened:
        store.close()
