from __future__ import annotations

import pytest

from common.clientaddr import TrustedProxies, client_address

PROXIES = TrustedProxies.parse(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("remote", "headers", "expected"),
    [
        # Untrusted peers: their headers are ignored, whatever they say.
        ("203.0.113.5", {"X-Forwarded-For": "52.16.1.10"}, "203.0.113.5"),
        ("203.0.113.5", {"Forwarded": "for=52.16.1.10"}, "203.0.113.5"),
        ("127.0.0.1", {"X-Forwarded-For": "52.16.1.10"}, "127.0.0.1"),
        # A trusted proxy: the rightmost untrusted hop is the client (a client-sent prefix cannot win).
        ("10.1.2.3", {"X-Forwarded-For": "52.16.1.10"}, "52.16.1.10"),
        ("10.1.2.3", {"X-Forwarded-For": "6.6.6.6, 52.16.1.10"}, "52.16.1.10"),
        ("10.1.2.3", {"X-Forwarded-For": "52.16.1.10, 10.9.9.9"}, "52.16.1.10"),
        ("10.1.2.3", {"Forwarded": 'for="[2001:db8::1]:443";proto=https, for=10.2.2.2'}, "2001:db8::1"),
        ("10.1.2.3", {"Forwarded": "for=13.228.1.10:4711"}, "13.228.1.10"),
        ("10.1.2.3", {"Forwarded": "for=13.228.1.10", "X-Forwarded-For": "6.6.6.6"}, "13.228.1.10"),
        # Only trusted hops, no header, or garbage: the proxy itself.
        ("10.1.2.3", {}, "10.1.2.3"),
        ("10.1.2.3", {"X-Forwarded-For": "10.4.4.4"}, "10.1.2.3"),
        ("10.1.2.3", {"X-Forwarded-For": "not-an-ip"}, "10.1.2.3"),
        ("::ffff:10.1.2.3", {"X-Forwarded-For": "52.16.1.10"}, "52.16.1.10"),
        ("fd00::1", {"X-Forwarded-For": "52.16.1.10"}, "52.16.1.10"),
    ],
)
def test_client_address(remote: str, headers: dict[str, str], expected: str) -> None:
    assert client_address(remote, headers, PROXIES) == expected


def test_nothing_trusted_by_default() -> None:
    assert client_address("10.1.2.3", {"X-Forwarded-For": "52.16.1.10"}, TrustedProxies.parse([])) == "10.1.2.3"
