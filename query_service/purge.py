"""Optional purge hook after a delete: tell an external CDN in front which URLs to drop from its cache.

The payload (JSON) is ``{"event": "purge", "image_id", "url_prefixes": [...], "urls": [...]}``: every
member's ``/i/<id>/`` prefix (originals and all variants) and the query service's ``/img/<id>``. It
runs in the background after the delete has committed; a failing hook is logged, never retried. The
webhook is signed like the provisioner's (``X-Minicdn-Signature: <kid>:<hex HMAC-SHA256 of the body>``)
so the receiver can refuse forged purges, and carries ``Idempotency-Key: minicdn-purge-<id>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import shlex
from typing import Any

import aiohttp

from common.config import DeletesSettings

logger = logging.getLogger(__name__)
HOOK_TIMEOUT_S = 30.0


def purge_payload(image_id: str, node_base_urls: list[str], query_base_url: str) -> dict[str, Any]:
    return {
        "event": "purge",
        "image_id": image_id,
        "url_prefixes": sorted(f"{u.rstrip('/')}/i/{image_id}/" for u in set(node_base_urls)),
        "urls": [f"{query_base_url.rstrip('/')}/img/{image_id}"],
    }


async def run_purge_hooks(
    settings: DeletesSettings, payload: dict[str, Any], sign: tuple[str, bytes] | None = None
) -> list[str]:
    """Run the configured command and/or webhook (signing it with ``sign`` = (kid, key) when given);
    returns the failures (empty when all went well)."""
    failures = []
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"minicdn-purge-{payload['image_id']}"}
    if sign is not None:
        kid, key = sign
        headers["X-Minicdn-Signature"] = f"{kid}:{hmac.new(key, body, hashlib.sha256).hexdigest()}"
    if settings.purge_command:
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(settings.purge_command),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _out, err = await asyncio.wait_for(proc.communicate(body), HOOK_TIMEOUT_S)
            if proc.returncode != 0:
                failures.append(f"purge command exited {proc.returncode}: {err.decode(errors='replace')[-200:]}")
        except (OSError, TimeoutError) as exc:
            failures.append(f"purge command failed: {exc!r}")
    if settings.purge_webhook:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    settings.purge_webhook,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=HOOK_TIMEOUT_S),
                ) as resp,
            ):
                if resp.status >= 300:
                    failures.append(f"purge webhook answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(f"purge webhook failed: {exc!r}")
    for failure in failures:
        logger.warning("%s (image %s)", failure, payload["image_id"])
    return failures
