"""The Ray layer: the engine owns the stage actors and routes requests through them.

This package is the only part of svdpipe that imports Ray (besides the Serve app, which owns an engine).
"""

from svdpipe.engine.core import Engine, EngineResult

__all__ = ["Engine", "EngineResult"]
