from __future__ import annotations

import dataclasses
from typing import Any

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
    changed: Any = value + 1 if isinstance(value, int) else value + "x"  # Any: the field is chosen at run time
    other = dataclasses.replace(BASE, **{field: changed})
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


def test_retired_kid_is_refused_even_with_its_secret() -> None:
    params = sign(BASE, "k0", KEYS["k0"])
    with pytest.raises(SignatureInvalid, match="retired"):
        verify(params, lambda exp: dataclasses.replace(BASE, exp=exp), KEYS.get, now=NOW, retired=("k0",))
    assert verify(params, lambda exp: dataclasses.replace(BASE, exp=exp), KEYS.get, now=NOW, retired=("k9",))


@pytest.mark.parametrize(("lifetime_s", "ok"), [(3600, True), (3600 + 30, True), (3600 + 31, False), (10**9, False)])
def test_lifetime_is_bounded_with_a_skew_allowance(lifetime_s: int, ok: bool) -> None:
    claims = dataclasses.replace(BASE, exp=NOW + lifetime_s)
    params = sign(claims, "k1", KEYS["k1"])

    def run() -> Claims:
        return verify(
            params, lambda exp: dataclasses.replace(claims, exp=exp), KEYS.get, now=NOW, max_ttl_s=3600, clock_skew_s=30
        )

    if ok:
        assert run() == claims
    else:
        with pytest.raises(SignatureInvalid, match="maximum"):
            run()


def test_expiry_is_strict_by_one_second() -> None:
    params = sign(BASE, "k1", KEYS["k1"])
    assert check(params, now=BASE.exp) == BASE
    with pytest.raises(SignatureExpired):
        check(params, now=BASE.exp + 1)


def test_verify_with_settings_rotation() -> None:
    from common.config import load_settings
    from common.signing import sign_with, verify_with

    old = load_settings(env={"MINICDN_SIGNING_KEYS": "k1:" + "a" * 20, "MINICDN_SIGNING_ACTIVE_KID": "k1"})
    new = load_settings(
        env={"MINICDN_SIGNING_KEYS": f"k1:{'a' * 20},k2:{'b' * 20}", "MINICDN_SIGNING_ACTIVE_KID": "k2"}
    )
    retired = load_settings(
        env={
            "MINICDN_SIGNING_KEYS": f"k1:{'a' * 20},k2:{'b' * 20}",
            "MINICDN_SIGNING_ACTIVE_KID": "k2",
            "MINICDN_SIGNING_RETIRED_KIDS": "k1",
        }
    )
    claims = Claims("download", "img", "", int(__import__("time").time()) + 60, path="w300.jpg")
    by_old, by_new = sign_with(old.signing, claims), sign_with(new.signing, claims)
    assert by_old["kid"] == "k1" and by_new["kid"] == "k2"
    for settings in (old, new):
        assert verify_with(settings.signing, by_old, lambda exp: dataclasses.replace(claims, exp=exp)) == claims
    assert verify_with(retired.signing, by_new, lambda exp: dataclasses.replace(claims, exp=exp)) == claims
    with pytest.raises(SignatureInvalid):
        verify_with(retired.signing, by_old, lambda exp: dataclasses.replace(claims, exp=exp))
    with pytest.raises(SignatureInvalid):
        verify_with(old.signing, by_new, lambda exp: dataclasses.replace(claims, exp=exp))  # k2 unknown there
