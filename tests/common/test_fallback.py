"""The default-image rules (common.fallback): which missing image falls back, which default may stand in, and
which image an app may make its default."""

from __future__ import annotations

import pytest

from common import fallback
from common.errors import Conflict, Forbidden, MinicdnError, NotFound


@pytest.mark.parametrize(
    ("status", "visibility", "expected"),
    [
        ("deleted", "public", True),
        ("rejected", "public", True),
        ("expired", "public", True),
        ("deleted", "private", False),  # never tells a private image from an unknown id
        ("quarantined", "public", False),  # held for a decision
        ("ready", "public", False),
        ("requested", "public", False),
        ("processing", "public", False),
    ],
)
def test_which_images_fall_back(status: str, visibility: str, expected: bool) -> None:
    assert fallback.falls_back(status, visibility) is expected


def test_a_default_stands_in_only_for_its_own_app_when_public_and_ready() -> None:
    assert fallback.default_usable("a1", "a1", "ready", "public")
    assert not fallback.default_usable("a1", "a2", "ready", "public")
    assert not fallback.default_usable("a1", "a1", "ready", "private")
    assert not fallback.default_usable("a1", "a1", "deleted", "public")
    assert not fallback.default_usable(None, None, "ready", "public")  # no app: nothing to take it from


@pytest.mark.parametrize(
    ("image_app", "visibility", "status", "error", "code"),
    [
        ("a2", "private", "ready", NotFound, "not_found"),
        ("a2", "public", "ready", Forbidden, "forbidden"),
        ("a1", "private", "ready", Conflict, "not_public"),
        ("a1", "public", "processing", Conflict, "not_ready"),
    ],
)
def test_candidate_refusals(image_app: str, visibility: str, status: str, error: type[MinicdnError], code: str) -> None:
    with pytest.raises(error) as raised:
        fallback.check_candidate("a1", image_app, visibility, status)
    assert raised.value.code == code


def test_a_good_candidate_and_the_headers() -> None:
    fallback.check_candidate("a1", "a1", "public", "ready")
    assert fallback.headers(60) == {"X-Minicdn-Fallback": "default", "Cache-Control": "public, max-age=60"}
