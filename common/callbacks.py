"""`callback_url` delivery: a signed JSON POST when an image becomes ready or rejected, with a timeout, and
never to the operator's own networks. (Retries, durably: ``common.callback_outbox``.)

A callback URL is attacker-chosen, so it is an SSRF vector: it is refused at `POST /v1/uploads` when it
names (or resolves to) an address that is not globally routable — loopback, link-local (cloud metadata
at 169.254.169.254), private, shared, multicast, reserved — unless ``callbacks.allow_private``; and
again at delivery time, where the HTTP client's resolver drops such addresses *before connecting*, so
a name that was public at upload time and points inward later (DNS rebinding) reaches nothing.
Redirects are not followed. Receivers verify ``X-Minicdn-Signature: t=<unix>,kid=<kid>,v1=<hex>``,
an HMAC-SHA256 with the cluster's signing key over ``"<t>." + body``, and dedupe by ``X-Minicdn-Delivery``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from common.config import Settings
from common.errors import InvalidRequest

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Minicdn-Signature"
DELIVERY_HEADER = "X-Minicdn-Delivery"  # one id per callback, the same on every attempt: receivers dedupe by it


class RefusedAddress(OSError):
    """The callback host resolves only to addresses minicdn will not connect to."""


def address_allowed(address: str, allow_private: bool) -> bool:
    """Globally routable unicast addresses only (IPv4-mapped IPv6 judged as the IPv4 it carries)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private:
        return not (ip.is_multicast or ip.is_unspecified)
    return ip.is_global and not ip.is_multicast


async def check_callback_url(url: str, allow_private: bool) -> str:
    """Upload-time check: an http(s) URL whose host is not (and does not resolve to) a refused address.

    A name that does not resolve right now is accepted: delivery checks again and refuses then.
    Raises InvalidRequest (400 invalid_request).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("callback_url must be an http(s) URL")
    if parts.username or parts.password:
        raise InvalidRequest("callback_url must not carry credentials")
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM), 2.0
            )
            addresses = [str(info[4][0]) for info in infos]
        except (OSError, TimeoutError):
            addresses = []
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        addresses.append("127.0.0.1")
    refused = [a for a in addresses if not address_allowed(a, allow_private)]
    if refused:
        raise InvalidRequest("callback_url points at a loopback, link-local or private address")
    return url


def _literal_refused(url: str, allow_private: bool) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address_allowed(host, allow_private)


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then drops every refused address (the SSRF check that cannot be
    raced: the connection is made only to the addresses that passed)."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if address_allowed(r["host"], self.allow_private)]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to refused addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def sign(body: bytes, kid: str, key: bytes, now: int | None = None) -> str:
    ts = int(time.time()) if now is None else now
    mac = hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},kid={kid},v1={mac}"


def verify(header: str, body: bytes, keys: dict[str, bytes], max_age_s: float = 300) -> bool:
    """Receiver side (and tests): a valid, fresh signature by one of ``keys``."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        ts, kid, mac = int(fields["t"]), fields["kid"], fields["v1"]
    except (ValueError, KeyError):
        return False
    key = keys.get(kid)
    if key is None or abs(time.time() - ts) > max_age_s:
        return False
    expected = hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST: delivered, or why not (``refused``: the SSRF policy, retrying cannot help)."""

    delivered: bool
    error: str = ""
    refused: bool = False


class CallbackSender:
    """One signed POST per call, through the SSRF-guarded client; retries and their state are the outbox's
    (``common.callback_outbox``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.callbacks
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0
        self.refused = 0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.cfg.allow_private), limit=32)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            )
        return self._session

    async def post(self, url: str, event: dict[str, Any], delivery_id: str) -> Attempt:
        """POST ``event`` (plus ``sent_at``) to ``url``, signed, without following redirects."""
        outcome = await self._post(url, event, delivery_id)
        if outcome.delivered:
            self.delivered += 1
        else:
            self.failed += 1
            self.refused += outcome.refused
            log = logger.warning if outcome.refused else logger.info
            log("callback %s for %s failed: %s", delivery_id, event.get("image_id"), outcome.error)
        return outcome

    async def _post(self, url: str, event: dict[str, Any], delivery_id: str) -> Attempt:
        if _literal_refused(url, self.cfg.allow_private):  # aiohttp does not pass IP literals to the resolver
            return Attempt(False, f"{url} is not a public address", refused=True)
        body = json.dumps({**event, "sent_at": int(time.time())}, separators=(",", ":")).encode()
        kid = self.settings.signing.active_kid
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "minicdn-callback/1",
            SIGNATURE_HEADER: sign(body, kid, self.settings.signing_key(kid) or b""),
            DELIVERY_HEADER: delivery_id,
        }
        try:
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return Attempt(True)
                return Attempt(False, f"HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            refused = isinstance(exc, RefusedAddress) or isinstance(getattr(exc, "os_error", None), RefusedAddress)
            return Attempt(False, repr(exc), refused=refused)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
