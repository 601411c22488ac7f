"""The sandbox's worker process (`python -m storage_node.sandbox_worker`, started by ``storage_node.sandbox``):
one JSON job per stdin line, one JSON answer per stdout line, with libvips restricted to the allowed loaders."""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from common.errors import InvalidImage, MinicdnError
from storage_node.objects.verify import OriginalMismatch
from storage_node.validate import OUT_OF_MEMORY


def _serve() -> None:
    """Worker side: one JSON job per stdin line, one JSON answer per stdout line."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints and library chatter go to stderr, never into the protocol
    # libvips is loaded only now, so whatever it prints while loading lands on stderr too.
    import pyvips

    from storage_node.analyse import JOBS
    from storage_node.validate import restrict_loaders

    restrict_loaders()
    pyvips.cache_set_max(0)  # each job sees a new file: caching operations only holds memory
    for line in sys.stdin:
        try:
            job = json.loads(line)
            answer: dict[str, Any] = {"ok": True, "result": JOBS[job.get("op", "analyse")](job)}
        except OriginalMismatch as exc:  # the stored bytes are not the recorded ones: nothing was decoded
            answer = {"ok": False, "mismatch": exc.as_dict()}
        except Exception as exc:
            error = _as_error(exc)
            answer = {"ok": False, "status": error.status, "code": error.code, "message": error.message}
        proto.write(json.dumps(answer) + "\n")


def _as_error(exc: Exception) -> MinicdnError:
    """What a job's exception tells the node: the checks' own errors as they are; anything else (a libvips
    error outside the checks, memory exhausted) means this image cannot be processed."""
    if isinstance(exc, MinicdnError):
        return exc
    if isinstance(exc, MemoryError):
        return InvalidImage(OUT_OF_MEMORY)
    traceback.print_exc()
    lines = str(exc).strip().splitlines()
    return InvalidImage(f"cannot process the image: {lines[-1] if lines else type(exc).__name__}")


if __name__ == "__main__":
    _serve()
