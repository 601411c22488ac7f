"""`callback_url` delivery: a signed JSON POST when an image becomes ready or rejected, with timeouts and
retries, and never to the operator's own networks.

A callback URL is attacker-chosen, so it is an SSRF vector: it is refused at `POST /v1/uploads` when it
names (or resolves to) an address that is not globally routable — loopback, link-local (cloud metadata
at 169.254.169.254), private, shared, multicast, reserved — unless ``callbacks.allow_private``; and
again at delivery time, where the HTTP client's resolver drops such addresses *before connecting*, so
a name that was public at upload time and points inward later (DNS rebinding) reaches nothing.
Redirects are not followed. Receivers verify ``X-Minicdn-Signature: t=<unix>,kid=<kid>,v1=<hex>``,
an HMAC-SHA256 with the cluster's signing key over ``"<t>." + body``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from common.config import Settings
from common.errors import InvalidRequest

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Minicdn-Signature"


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
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM), 2.0)
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

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
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


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """The callback body for an image row (status `ready` or `rejected`)."""
    ready_at = row.get("ready_at")
    return {
        "event": f"image.{row['status']}", "image_id": row["image_id"], "status": row["status"],
        "reason": row.get("reason"), "duplicate_of": row.get("duplicate_of"), "format": row.get("format"),
        "width": row.get("width"), "height": row.get("height"), "sha256": row.get("sha256"),
        "ready_at": ready_at.isoformat() if ready_at is not None else None, "sent_at": int(time.time()),
    }


class CallbackSender:
    """Background delivery with exponential backoff; ``close()`` cancels what is still retrying."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.callbacks
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self.delivered = 0
        self.failed = 0
        self.refused = 0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.cfg.allow_private), limit=32)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
        return self._session

    def send(self, url: str | None, row: dict[str, Any] | None) -> asyncio.Task[bool] | None:
        """Schedule delivery of ``row``'s event to ``url`` (no-op without a URL)."""
        if not url or row is None:
            return None
        task = asyncio.get_running_loop().create_task(self.deliver(url, payload(row)), name="callback")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def deliver(self, url: str, body_obj: dict[str, Any]) -> bool:
        if _literal_refused(url, self.cfg.allow_private):  # aiohttp does not pass IP literals to the resolver
            logger.warning("callback for %s refused: %s is not a public address", body_obj.get("image_id"), url)
            self.failed += 1
            self.refused += 1
            return False
        body = json.dumps(body_obj, separators=(",", ":")).encode()
        kid = self.settings.signing.active_kid
        key = self.settings.signing_key(kid) or b""
        delay = self.cfg.backoff_s
        for attempt in range(1, self.cfg.max_attempts + 1):
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, kid, key),
                       "User-Agent": "minicdn-callback/1"}
            try:
                async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += 1
                        return True
                    outcome = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if isinstance(exc, RefusedAddress) or isinstance(getattr(exc, "os_error", None), RefusedAddress):
                    logger.warning("callback for %s refused: %s", body_obj.get("image_id"), exc)
                    self.failed += 1
                    self.refused += 1
                    return False  # policy, not a transient failure: retrying cannot help
                outcome = repr(exc)
            logger.info("callback for %s attempt %d failed: %s", body_obj.get("image_id"), attempt, outcome)
            if attempt < self.cfg.max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        return False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
