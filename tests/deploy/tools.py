"""The Debian tools the deploy tests run (.ci/run installs them): missing in CI is a failure, on a laptop a skip."""

from __future__ import annotations

import os
import shutil

import pytest


def need(tool: str) -> str:
    """A tool .ci/run installs: missing in CI is a failure, missing on a laptop a skip."""
    path = shutil.which(tool)
    if path is None:
        message = f"`{tool}` is not installed (.ci/run installs it from Debian)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
