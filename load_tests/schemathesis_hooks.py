"""Schemathesis hooks for fuzzing the jobs API: a real image in place of the generated `image` field.

Schemathesis fills `image` with arbitrary bytes or text, which the service rightly refuses (400), so no job would
be created; this puts in a valid PNG of a random size (1-pixel sides and extreme aspect ratios included), so the
other fields' whole schema-valid space reaches the pipeline. Use with `SCHEMATHESIS_HOOKS=load_tests.schemathesis_hooks`
(see load_tests/README.md).
"""

from __future__ import annotations

import base64
import io
import random
from typing import Any

import PIL.Image
import schemathesis

_SIDES = (1, 2, 3, 8, 17, 64, 255, 1024)


def random_png(rng: random.Random) -> bytes:
    width, height = rng.choice(_SIDES), rng.choice(_SIDES)
    buf = io.BytesIO()
    PIL.Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(buf, "PNG")
    return buf.getvalue()


@schemathesis.hook
def map_case(ctx: object, case: Any) -> Any:
    """The body's `image`: PNG bytes in a form, a data URL in JSON."""
    if isinstance(case.body, dict) and "image" in case.body:
        png = random_png(random.Random())
        if case.media_type == "application/json":
            case.body = {**case.body, "image": "data:image/png;base64," + base64.b64encode(png).decode()}
        else:
            case.body = {**case.body, "image": png}
    return case
