from __future__ import annotations

import dataclasses

import pytest

from common.errors import SignatureExpired, SignatureInvalid
from common.signing import Claims, sign, verify

KEYS = {"k1": b"a" * 32, "k0": b"b" * 32}
NOW = 1_800_000_000
BASE = Claims("upload", "img", "node-a", NOW + 60, max_bytes=100)


def check(params: dict[str, str], expected: Claims = BASE, now: float = NOW) -> Claims:
    return verify(params, lambda exp: dataclasses.replace(expected, exp=exp), KEYS.get, now=now)


def test_round_trip_and_rotation() -> None:
    assert check(sign(BASE, "k1", KEYS["k1"])) == BASE
    assert check(sign(BASE, "k0", KEYS["k0"])) == BASE  # an older key still verifies


@pytest.mark.parametrize("field", ["scope", "image_id", "node_id", "max_bytes", "path"])
def test_each_bound_claim_matters(field: str) -> None:
    params = sign(BASE, "k1", KEYS["k1"])
    value = getattr(BASE, field)
    other = dataclasses.replace(BASE, **{field: value + 1 if isinstance(value, int) else value + "x"})
    with pytest.raises(SignatureInvalid):
        check(params, other)


def test_expiry_unknown_kid_and_garbage() -> None:
    params = sign(BASE, "k1", KEYS["k1"])
    with pytest.raises(SignatureExpired):
        check(params, now=NOW + 61)
    with pytest.raises(SignatureInvalid):
        check({**params, "kid": "k9"})
    with pytest.raises(SignatureInvalid):
        check({**params, "exp": str(NOW + 3600)})
    with pytest.raises(SignatureInvalid):
        check({"exp": "soon", "kid": "k1", "sig": "x"})
    with pytest.raises(SignatureInvalid):
        check({})
