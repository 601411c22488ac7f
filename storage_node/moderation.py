"""Optional moderation/malware hooks run before an image becomes `ready`: an operator command and/or an HTTP
endpoint. A flag (or a hook that fails or times out: fail closed) holds the image in `quarantined` until an
operator approves or rejects it through the query service's admin endpoints.

Command contract: ``<command> <path-to-original>`` with ``MINICDN_IMAGE_ID`` and ``MINICDN_CONTENT_TYPE`` in
its environment; exit 0 passes, exit 1 flags (first stdout line is the reason), anything else is a
failed check. HTTP contract: POST of the raw bytes (``Content-Type`` the image's, ``X-Minicdn-Image-Id``);
a 2xx JSON answer ``{"flag": bool, "reason": str}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from common.config import ModerationSettings


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    reason: str | None = None


class Moderation:
    def __init__(self, cfg: ModerationSettings) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.command or self.cfg.url)

    async def check(self, image_id: str, path: Path, content_type: str) -> Verdict:
        for hook in (self._command, self._http):
            verdict = await hook(image_id, path, content_type)
            if verdict.flagged:
                return verdict
        return Verdict(False)

    async def _command(self, image_id: str, path: Path, content_type: str) -> Verdict:
        if not self.cfg.command:
            return Verdict(False)
        env = {**os.environ, "MINICDN_IMAGE_ID": image_id, "MINICDN_CONTENT_TYPE": content_type}
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(self.cfg.command),
            str(path),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.cfg.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return Verdict(True, "moderation check timed out")
        if proc.returncode == 0:
            return Verdict(False)
        if proc.returncode == 1:
            first = out.decode(errors="replace").strip().splitlines()
            return Verdict(True, (first[0] if first else "flagged by moderation")[:200])
        return Verdict(True, f"moderation check failed (exit {proc.returncode})")

    async def _http(self, image_id: str, path: Path, content_type: str) -> Verdict:
        if not self.cfg.url:
            return Verdict(False)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
        try:
            data = await asyncio.to_thread(path.read_bytes)
            async with self._session.post(
                self.cfg.url, data=data, headers={"Content-Type": content_type, "X-Minicdn-Image-Id": image_id}
            ) as resp:
                if resp.status // 100 != 2:
                    return Verdict(True, f"moderation check failed (HTTP {resp.status})")
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Verdict(True, f"moderation check failed ({type(exc).__name__})")
        if isinstance(answer, dict) and answer.get("flag"):
            return Verdict(True, str(answer.get("reason") or "flagged by moderation")[:200])
        return Verdict(False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
