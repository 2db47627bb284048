"""The `svdpipe` command: generate, serve, bench, gpu-check, simulate, capacity, export-model. Heavy imports stay
inside commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdpipe.cli_flags import add_model_flags, model_from_args
from svdpipe.config import EngineConfig, VideoParams

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "sample.png"
# Engine fields the CLI spells differently, or leaves to config files.
_ENGINE_ALIASES = {"num_stages": "--stages"}
_ENGINE_SKIP = {"step_weights", "namespace", "name_prefix"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svdpipe", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="image -> video, once")
    gen.add_argument("--image", default=str(SAMPLE_IMAGE), help="input image (default: the bundled sample)")
    gen.add_argument("--out", required=True, help="output file; .mp4, .webm, .gif or .npy picks the format")
    gen.add_argument("--engine", choices=["ray", "local"], default="ray", help="stage actors on Ray, or one process")
    gen.add_argument(
        "--work-dir",
        help="long videos (--num-clips > 1): keep finished clips here; run again with the same flags to resume",
    )
    gen.add_argument("--address", default=None, help="join this Ray cluster (default: start a local Ray)")
    add_model_flags(gen, EngineConfig, _ENGINE_ALIASES, _ENGINE_SKIP)
    add_model_flags(gen, VideoParams)

    srv = sub.add_parser("serve", help="run the HTTP jobs API (Ray Serve) until interrupted")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    srv.add_argument("--port", type=int, default=8000, help="HTTP port")
    srv.add_argument("--address", default=None, help="join this Ray cluster (e.g. 'auto'; default: start a local Ray)")
    add_model_flags(srv, EngineConfig, _ENGINE_ALIASES, _ENGINE_SKIP)
    from svdpipe.service.config import ServiceConfig

    # autoscaling is a nested object: set it in deploy/serve_config.yaml.
    add_model_flags(srv, ServiceConfig, {"num_replicas": "--replicas"}, skip={"engine", "autoscaling"})

    from svdpipe.bench import add_bench_parser

    add_bench_parser(sub)
    from svdpipe.gpucheck import add_gpu_check_parser

    add_gpu_check_parser(sub)
    from svdpipe.sim.cli import add_capacity_parser, add_simulate_parser

    add_simulate_parser(sub)
    add_capacity_parser(sub)

    exp = sub.add_parser("export-model", help="save a built-in model as a diffusers directory")
    exp.add_argument("--model", default="tiny", choices=["tiny", "random-full", "random-full-xt"])
    exp.add_argument("directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _quiet_libraries()
    from svdpipe.errors import SvdpipeError, describe_validation_error

    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "export-model":
            return _export_model(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            from svdpipe.bench import run_bench_command

            return run_bench_command(args)
        if args.command == "gpu-check":
            from svdpipe.gpucheck import run_gpu_check_command

            return run_gpu_check_command(args)
        if args.command == "simulate":
            from svdpipe.sim.cli import run_simulate_command

            return run_simulate_command(args)
        if args.command == "capacity":
            from svdpipe.sim.cli import run_capacity_command

            return run_capacity_command(args)
    except (SvdpipeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"svdpipe: error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("svdpipe: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(args.command)


def _quiet_libraries() -> None:
    """diffusers/transformers warn about things that are expected here (no torchvision, random weights)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from svdpipe.config import resolve_params
    from svdpipe.images import load_image
    from svdpipe.models import model_spec
    from svdpipe.video import format_from_path, write_video

    # 1. Check everything cheap before loading weights or starting actors.
    config = model_from_args(EngineConfig, args)
    params = model_from_args(VideoParams, args)
    format_from_path(args.out)
    image = load_image(args.image)
    resolved = resolve_params(params, model_spec(config.model), config.max_video_pixels, max_clips=config.max_clips)
    params = params.model_copy(update={"seed": resolved.seed})
    # 2. Run.
    bar = tqdm(total=params.num_inference_steps * params.num_clips, desc="denoising", unit="step")
    if params.num_clips > 1:
        path = _generate_clips(args, config, image, params, bar)
        frames = f"{params.num_clips} clips of {resolved.num_frames} frames"
    elif args.engine == "local":
        from svdpipe.local import LocalPipeline

        result = LocalPipeline(config).generate(image, params, on_step=lambda _i: bar.update())
    else:
        from svdpipe.engine.sync import generate_once

        bar.set_description("starting stage actors")
        result = generate_once(
            config, image, params, address=args.address, on_steps=bar.update, on_ready=lambda: _restart(bar)
        )
    bar.close()
    if params.num_clips == 1:
        path = write_video(result.frames, args.out, fps=result.params.fps)
        frames = f"{result.frames.shape[0]} frames"
    print(f"wrote {path} ({frames}, {resolved.width}x{resolved.height}, seed {resolved.seed})")
    return 0


def _generate_clips(args: argparse.Namespace, config: EngineConfig, image: Any, params: VideoParams, bar: Any) -> Any:
    """A long video, streamed clip by clip into `args.out` (clips kept in --work-dir, if given, for a resume)."""
    from svdpipe.video import format_from_path

    fmt = format_from_path(args.out)
    if args.engine == "local":
        from svdpipe.local import LocalPipeline

        return LocalPipeline(config).generate_clips(image, params, args.out, on_step=lambda _i: bar.update())
    from svdpipe.engine.sync import generate_file_once

    bar.set_description("starting stage actors")
    return generate_file_once(
        config, image, params, args.out, fmt, args.work_dir, args.address, bar.update, lambda: _restart(bar)
    )


def _restart(bar: Any) -> None:
    bar.set_description("denoising")
    bar.reset()  # the rate shown should be the pipeline's, not the actors' start-up


def _export_model(args: argparse.Namespace) -> int:
    from svdpipe.models import build_random_pipeline

    build_random_pipeline(args.model).save_pretrained(args.directory)
    print(f"saved {args.model} to {args.directory}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os
    import time

    from svdpipe.service.config import SERVICE_LATENCY_MODE, ServiceConfig

    engine = model_from_args(EngineConfig, args, latency_mode=args.latency_mode or SERVICE_LATENCY_MODE)
    config = model_from_args(ServiceConfig, args, engine=engine)
    # Ray workers do not share this shell's working directory: make the data directory absolute.
    config = config.model_copy(update={"data_dir": os.path.abspath(config.data_dir)})
    if config.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"svdpipe: warning: listening on {args.host} without an API key (set SVDPIPE_API_KEY)", file=sys.stderr)

    import signal

    from ray import serve

    from svdpipe.engine.sync import ensure_ray
    from svdpipe.service.app import app_builder

    ensure_ray(args.address, dashboard=True)
    # Ray's SIGTERM handler (ray.init installs it) aborts the process and leaves Ray's dashboard and agents
    # running; SIGTERM is how Kubernetes stops a pod, so ours, installed after it, stops as Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app_builder(config), name=SERVE_APP, route_prefix="/")
        print(f"svdpipe: serving on http://{args.host}:{args.port} (API docs at /docs); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        _stop_serving(config.shutdown_grace_s)
    return 0


SERVE_APP = "svdpipe"


class Terminated(BaseException):
    """SIGTERM arrived: stop serving gracefully (a BaseException, like KeyboardInterrupt, so no handler eats it)."""


def _terminated(_signum: int, _frame: Any) -> None:
    raise Terminated


def _stop_serving(grace_s: float) -> None:
    """Stop as a replica should: Serve stops routing, each replica lets its running jobs finish for up to
    `grace_s` and re-queues the rest (VideoService.__del__), then every Ray process this one started exits."""
    import signal

    import ray
    from ray import serve

    # A second signal must not cut the stop short (Kubernetes sends SIGKILL after its own grace period).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"svdpipe: stopping; running jobs get up to {grace_s:g} s, the rest go back to the queue", flush=True)
    try:
        if ray.is_initialized():
            serve.delete(SERVE_APP)  # returns once the replicas have stopped (Serve kills them past their timeout)
            serve.shutdown()
    finally:
        ray.shutdown()  # a Ray this process started goes with it: GCS, raylet, dashboard, agents, workers
    print("svdpipe: stopped", flush=True)
