from __future__ import annotations

import time

import pytest

from common.callbacks import address_allowed, sign, verify


@pytest.mark.parametrize(
    ("address", "public", "private_ok"),
    [
        ("8.8.8.8", True, True),
        ("2606:4700:4700::1111", True, True),
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("169.254.169.254", False, True),
        ("10.0.0.1", False, True),
        ("172.16.5.4", False, True),
        ("192.168.1.1", False, True),
        ("100.64.0.1", False, True),
        ("fe80::1", False, True),
        ("fc00::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("0.0.0.0", False, False),
        ("224.0.0.1", False, False),
        ("not-an-ip", False, False),
    ],
)
def test_address_allowed(address: str, public: bool, private_ok: bool) -> None:
    assert address_allowed(address, allow_private=False) is public
    assert address_allowed(address, allow_private=True) is private_ok


def test_signature_round_trip_and_tampering() -> None:
    keys = {"k1": b"secret-secret-secret"}
    header = sign(b'{"a":1}', "k1", keys["k1"])
    assert verify(header, b'{"a":1}', keys)
    assert not verify(header, b'{"a":2}', keys)
    assert not verify(header, b'{"a":1}', {"k1": b"other"})
    assert not verify(header.replace("kid=k1", "kid=k2"), b'{"a":1}', keys)
    assert not verify(sign(b"x", "k1", keys["k1"], now=int(time.time()) - 3600), b"x", keys)
    assert not verify("garbage", b"x", keys)
