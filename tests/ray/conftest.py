"""One local Ray per session (CPU actors) and a background event loop the engines live on."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import PIL.Image
import pytest

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a thread: engines keep tasks between tests, pytest stays synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 180) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, namespace="svdpipe-tests", configure_logging=False, log_to_driver=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def aloop(ray_session) -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@contextlib.contextmanager
def running_engine(aloop: LoopThread, worker: type | None = None, **config: Any):
    """An engine for the duration of a `with`, torn down (actors killed) afterwards; `worker` replaces the
    model actors' body (a ModelWorker subclass)."""
    from svdpipe.config import EngineConfig
    from svdpipe.engine import Engine

    config.setdefault("torch_threads", 1)
    config.setdefault("num_cpus_per_actor", 0.05)
    engine = Engine(EngineConfig(**config)) if worker is None else Engine(EngineConfig(**config), worker=worker)
    aloop.run(engine.start(), timeout=300)
    try:
        yield engine
    finally:
        aloop.run(engine.shutdown(), timeout=60)


def decoded(data: bytes):
    """The frames (F, H, W, 3) uint8 a player would show of a video file (container headers hold times and
    random ids, so bytes may differ where the frames do not)."""
    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="session")
def png() -> bytes:
    import numpy as np

    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def small_engine(name_prefix: str, **overrides: Any):
    """The tiny two-actor engine config the service tests run behind the API (CPU actors, one thread each)."""
    from svdpipe.config import EngineConfig

    fields: dict[str, Any] = {
        "num_stages": 2,
        "max_inflight": 1,
        "num_cpus_per_actor": 0.05,
        "torch_threads": 1,
        "name_prefix": name_prefix,
    }
    return EngineConfig(**{**fields, **overrides})


@contextlib.contextmanager
def serving(config: Any, name: str):
    """The Serve app built from `config` (a ServiceConfig) on a free loopback port for the duration of a `with`;
    yields an HTTP client for it and the port."""
    import httpx
    from ray import serve

    from svdpipe.service.app import app_builder
    from tests.pg import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_builder(config), name=name, route_prefix="/")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, port
    finally:
        serve.shutdown()


def single_process_frames(png: bytes, requests: list[Any]) -> list[Any]:
    """Each request's frames from the single-process pipeline on one torch thread, as the actors run (the same
    reduction order, so the same bits where the split changes nothing)."""
    import torch

    from svdpipe.config import EngineConfig
    from svdpipe.images import load_image
    from svdpipe.local import LocalPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = LocalPipeline(EngineConfig(num_stages=1))
        return [local.generate(load_image(png), p).frames for p in requests]
    finally:
        torch.set_num_threads(threads)
