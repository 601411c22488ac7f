"""A PUT's two trips to Postgres, in groups (``common.grouped``): its first read of the image row, before any
byte is read (the PUTs that arrive while earlier reads run share one query), and its commit (the PUTs whose
bytes are received, hashed and probed while earlier ones are being committed share one transaction).

A group's transaction locks its images' rows in one statement, moves every accepted file into place (each
fsync'd, with its directory) in one thread hop, and records each image `uploaded`, its replica rows and its audit
row in one round trip, then commits once. Each upload is still judged on its own: a used or unknown upload URL
(`409`/`404`), or a file that cannot be stored, refuses that PUT only. Nothing is answered before the commit; a
transaction that does not commit fails every PUT of the group, and their files are removed again, as a lone
PUT's would be.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Any

from psycopg import AsyncConnection

from common.db import audit
from common.db import images as db_images
from common.db.rows import Pool
from common.errors import Conflict, MinicdnError
from common.events import ImageUploaded
from common.grouped import Grouped
from common.metrics import StageMetrics
from storage_node.objects.ingest import Ingested
from storage_node.objects.store import ObjectMeta, Store
from storage_node.validate import ImageInfo


@dataclass(frozen=True)
class Upload:
    """A PUT's received bytes (in tmp/), ready to commit."""

    image_id: str
    got: Ingested
    info: ImageInfo
    client_ip: str | None


@dataclass(frozen=True)
class _Accepted:
    index: int  # in the group
    upload: Upload
    row: db_images.UploadLockRow


class UploadCommits:
    def __init__(self, node_id: str, pool: Pool, store: Store, stages: StageMetrics) -> None:
        self.node_id, self.pool, self.store, self.stages = node_id, pool, store, stages
        self.checks: Grouped[str, None] = Grouped(self._check)
        self.group: Grouped[Upload, ImageUploaded] = Grouped(self._write)

    async def check(self, image_id: str) -> None:
        """A used (`409`) or unknown (`404`) upload URL fails here, before the body is read; the commit checks
        again under the row lock (two PUTs racing)."""
        await self.checks.submit(image_id)

    async def commit(self, upload: Upload) -> ImageUploaded:
        """Once ``upload`` is committed: the event to publish. Raises what refused it."""
        return await self.group.submit(upload)

    async def _check(self, image_ids: list[str]) -> list[None | Exception]:
        rows = await db_images.upload_states(self.pool, list(set(image_ids)))
        outcomes: list[None | Exception] = []
        for image_id in image_ids:
            try:
                db_images.check_uploadable(rows.get(image_id), self.node_id)
                outcomes.append(None)
            except MinicdnError as exc:
                outcomes.append(exc)
        return outcomes

    async def _write(self, uploads: list[Upload]) -> list[ImageUploaded | Exception]:
        outcomes: dict[int, ImageUploaded | Exception] = {}
        stored: list[_Accepted] = []
        try:
            async with self.pool.connection() as conn, conn.transaction():
                rows = await db_images.lock_for_uploads(conn, self.node_id, {u.image_id: u.got.sha256 for u in uploads})
                accepted: list[_Accepted] = []
                for index, upload in enumerate(uploads):
                    try:
                        if any(a.upload.image_id == upload.image_id for a in accepted):  # two PUTs of one URL
                            raise Conflict("this upload URL has already been used", code="already_uploaded")
                        row = db_images.check_uploadable(rows.get(upload.image_id), self.node_id)
                        accepted.append(_Accepted(index, upload, row))
                    except MinicdnError as exc:
                        outcomes[index] = exc
                failures = await asyncio.to_thread(self._store_all, accepted)
                outcomes.update(failures)
                stored = [a for a in accepted if a.index not in failures]
                async with conn.pipeline():  # every statement of the group in one round trip
                    for a in stored:
                        await self._record(conn, a)
        except BaseException:
            if stored:  # the transaction did not commit: nothing of the group stays on disk
                await asyncio.to_thread(self._remove_all, stored)
            raise
        for a in stored:
            got = a.upload.got
            outcomes[a.index] = ImageUploaded(
                image_id=a.upload.image_id,
                set_id=a.row["set_id"],
                origin_node=self.node_id,
                sha256=got.sha256,
                bytes=got.size,
                content_type=a.upload.info.content_type,
            )
        return [outcomes[i] for i in range(len(uploads))]

    def _store_all(self, accepted: list[_Accepted]) -> dict[int, Exception]:
        """On a worker thread: each accepted file into place, moved and fsync'd with its directory (dedupe: the
        same bytes already here are hard-linked instead). Returns the uploads whose file could not be stored."""
        failures: dict[int, Exception] = {}
        for a in accepted:
            got, row = a.upload.got, a.row
            meta = ObjectMeta(got.sha256, a.upload.info.content_type, got.size, private=row["visibility"] == "private")
            try:
                same = row["same"]
                if same is None or self.store.link_copy(same, a.upload.image_id, meta) is None:
                    self.stages.timed(
                        "put:store", partial(self.store.commit_original, got.path, a.upload.image_id, meta)
                    )()
            except OSError as exc:
                failures[a.index] = exc
        return failures

    def _remove_all(self, stored: list[_Accepted]) -> None:
        for a in stored:
            self.store.remove_image(a.upload.image_id)

    async def _record(self, conn: AsyncConnection[Any], a: _Accepted) -> None:
        upload, got, info = a.upload, a.upload.got, a.upload.info
        await db_images.mark_uploaded(
            conn,
            upload.image_id,
            self.node_id,
            a.row["set_id"],
            sha256=got.sha256,
            size=got.size,
            content_type=info.content_type,
            fmt=info.fmt,
            width=info.width,
            height=info.height,
            duplicate_of=a.row["canonical"],
        )
        await audit.record(
            conn,
            "upload.complete",
            image_id=upload.image_id,
            node_id=self.node_id,
            client_ip=upload.client_ip,
            detail={"bytes": got.size, "sha256": got.sha256},
        )
