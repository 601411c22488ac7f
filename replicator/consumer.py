"""The node's durable JetStream pull consumer plus the sweep of its own pending replica rows.

Postgres is the source of truth and NATS the fast path: the consumer copies an image moments after
its upload; the sweep copies whatever the stream lost or never carried (rows older than a few
seconds, found through the partial index). Outcomes: a normal return acks (only once the bytes are
durable and the row committed), Retry naks with a delay, Permanent terminates the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from common import loops, reqlog
from common.bus import Bus
from common.db import replicas as db_replicas
from common.events import ImageDeleted, ImageRejected, ImageUploaded
from common.loops import raise_if_cancelling
from replicator.batch import copy_batch
from replicator.deletes import delete_local, sweep_deletions
from replicator.jobs import ReplicatorContext, Wanted, drop_rejected, replicate
from replicator.outcomes import Permanent, Retry
from replicator.ratelimit import ByteRate

E = TypeVar("E", ImageDeleted, ImageRejected, ImageUploaded)

logger = logging.getLogger(__name__)
FETCH_BATCH = 16
# A fetch that brings uploads but fewer messages than there is room for waits this long for the rest of a
# burst: bigger batches (a copy in a batch costs about a third of one on its own) for a little latency.
BATCH_LINGER_S = 0.02


class Replicator:
    def __init__(self, ctx: ReplicatorContext, bus: Bus) -> None:
        self.ctx = ctx
        self.bus = bus
        self._tasks: list[asyncio.Task[None]] = []
        self._sem = asyncio.Semaphore(ctx.settings.replicator.concurrency)
        self.swept = 0
        self.last_batch = 0
        # An Event, not a bool: it is set by stop() while _consume awaits (mypy would keep a bool narrowed).
        self._stopping = asyncio.Event()
        self.rate = ByteRate(ctx.settings.replicator.max_bytes_per_s)
        self._sub: nats.js.JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        node = self.ctx.settings.node
        subjects = self.bus.subjects
        config = ConsumerConfig(
            durable_name=subjects.durable(node.node_id),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=max(30.0, 2 * self.ctx.settings.replicator.fetch_timeout_s),
            max_deliver=-1,
            filter_subject=subjects.set_all(node.set_id),
        )
        sub = await self.bus.js.pull_subscribe(
            subjects.set_all(node.set_id), durable=config.durable_name, stream=subjects.stream, config=config
        )
        self._sub = sub
        self._tasks = [
            asyncio.create_task(self._consume(sub), name="replicator-consume"),
            asyncio.create_task(self._sweep_forever(), name="replicator-sweep"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            # nats-py's fetch can swallow a cancellation (turning it into a TimeoutError), so cancel until
            # the task is really done; the loop also checks the flag.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        self._tasks = []
        if self._sub is not None:
            # Without this, draining the connection waits out a pull request that will never be answered.
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    # --- JetStream path -----------------------------------------------------------------------------
    async def _consume(self, sub: nats.js.JetStreamContext.PullSubscription) -> None:
        """Keep ``replicator.concurrency`` messages in hand: a new one is fetched as soon as one is done, so one
        slow copy never holds back the copies fetched with it. The uploads of one fetch are copied as a batch
        (``replicator.batch``); every other message is handled on its own."""
        limit = self.ctx.settings.replicator.concurrency
        handling: dict[asyncio.Task[None], int] = {}  # each task, and the messages it holds

        def start(job: Coroutine[Any, Any, None], held: int) -> None:
            task = asyncio.create_task(job, name="replicate")
            handling[task] = held
            task.add_done_callback(handling.pop)

        try:
            while not self._stopping.is_set():
                raise_if_cancelling()
                room = limit - sum(handling.values())
                if room <= 0:
                    await asyncio.wait(handling, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(min(room, FETCH_BATCH), timeout=1.0)
                    msgs += await self._rest_of_burst(sub, msgs, min(room, FETCH_BATCH))
                except nats.errors.TimeoutError:
                    raise_if_cancelling()
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # reconnecting, stream briefly unavailable...: the loop must live on
                    raise_if_cancelling()
                    if self._stopping.is_set():
                        return
                    logger.warning("consumer fetch failed: %r", exc)
                    await loops.sleep(1)
                    continue
                uploads = [(msg, event) for msg in msgs if (event := self._foreign_upload(msg)) is not None]
                if len(uploads) > 1:  # a burst: their copies share round trips
                    batched = {id(msg) for msg, _ in uploads}
                    msgs = [msg for msg in msgs if id(msg) not in batched]
                    start(self._handle_uploads(uploads, start), len(uploads))
                for msg in msgs:
                    start(self._handle(msg), 1)
        finally:
            await loops.cancel_all(list(handling))  # unacked: redelivered (a copy is idempotent)

    async def _rest_of_burst(
        self, sub: nats.js.JetStreamContext.PullSubscription, msgs: list[Msg], want: int
    ) -> list[Msg]:
        """More messages, when ``msgs`` holds uploads but fewer than ``want``: what arrives within the linger.
        (Only the subjects are read: the events are decoded once, by the caller.)"""
        if len(msgs) >= want or not any(_kind(msg) == ImageUploaded.name for msg in msgs):
            return []
        await asyncio.sleep(BATCH_LINGER_S)
        try:
            return await sub.fetch(want - len(msgs), timeout=BATCH_LINGER_S)
        except asyncio.CancelledError:
            raise
        except Exception:  # nothing more now (a timeout, a reconnect): what is in hand goes on
            return []

    async def _handle(self, msg: Msg) -> None:
        reqlog.adopt(msg.headers)  # the id of the upload that published this event (own task: no leak)
        async with self._sem:
            try:
                await self._dispatch(msg)
                await msg.ack()  # not ack_sync: a lost ack only redelivers the message, and a copy is idempotent
            except Retry as exc:
                logger.warning("%s (retry in %.1fs)", exc, exc.defer_s)
                await msg.nak(delay=exc.defer_s)
            except Permanent as exc:
                logger.error("dropping %s: %s", msg.subject, exc)
                await msg.term()
            except Exception:
                logger.exception("replication of %s failed", msg.subject)
                await msg.nak(delay=5)

    def _foreign_upload(self, msg: Msg) -> ImageUploaded | None:
        """The upload ``msg`` announces, when it is another node's and can be decoded (else None)."""
        if _kind(msg) != ImageUploaded.name:
            return None
        try:
            event = ImageUploaded.from_json(msg.data)
        except (ValueError, TypeError):
            return None  # terminated by the single path
        return None if event.origin_node == self.ctx.node_id else event

    async def _handle_uploads(
        self, uploads: list[tuple[Msg, ImageUploaded]], start: Callable[[Coroutine[Any, Any, None], int], None]
    ) -> None:
        """Several uploads at once: what the batch copied (or needs nothing more) is acked; every other message
        is handed to the single path (``start``: its own task, holding only that message), with its own
        outcome (a retry, a repair, a checksum mismatch...)."""
        reqlog.adopt(None)
        for _, event in uploads:
            await self.rate.take(event.bytes)
        wants = [Wanted(e.image_id, e.sha256, e.bytes, e.content_type) for _, e in uploads]
        try:
            async with self._sem:
                done = await copy_batch(self.ctx, wants)
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. Postgres away: every message takes the single path, with its retries
            logger.exception("batched replication of %d uploads failed", len(uploads))
            done = set()
        for msg, event in uploads:
            if event.image_id in done:
                await msg.ack()
            else:
                self.rate.refund(event.bytes, time.monotonic())  # the single path books its own copy
                start(self._handle(msg), 1)

    async def _dispatch(self, msg: Msg) -> None:
        kind = _kind(msg)
        if kind == ImageDeleted.name:
            await delete_local(self.ctx, _decode(ImageDeleted, msg.data).image_id)
            return
        if kind == ImageRejected.name:
            await drop_rejected(self.ctx, _decode(ImageRejected, msg.data).image_id)
            return
        if kind != ImageUploaded.name:
            return  # other set events belong to later jobs; acking keeps the consumer moving
        event = _decode(ImageUploaded, msg.data)
        if event.origin_node == self.ctx.node_id:
            return
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        await self.rate.take(event.bytes)
        await replicate(self.ctx, Wanted(event.image_id, event.sha256, event.bytes, event.content_type), attempt)

    # --- Postgres path ------------------------------------------------------------------------------
    async def sweep_once(self) -> int:
        """Copy this node's pending rows older than ``sweep_age_s`` and its `missing`/`corrupt` rows (repair,
        backfill of a new member), and catch up on deletes; returns how many copies were made."""
        cfg = self.ctx.settings.replicator
        self.last_batch = 0
        await sweep_deletions(self.ctx)
        rows: list[db_replicas.CopyRow] = [
            *await db_replicas.pending_for_node(self.ctx.pool, self.ctx.node_id, cfg.sweep_age_s),
            *await db_replicas.needs_copy_for_node(self.ctx.pool, self.ctx.node_id),
        ]
        self.last_batch = len(rows)

        async def one(row: db_replicas.CopyRow) -> bool:
            reqlog.adopt(None)  # a fresh id per swept copy (each gather() child runs in its own context)
            async with self._sem:
                want = Wanted(row["image_id"], row["sha256"], row["bytes"], row["content_type"])
                await self.rate.take(want.bytes)
                try:
                    return await replicate(self.ctx, want)
                except Retry as exc:
                    logger.info("sweep: %s", exc)
                    return False

        done = sum(await asyncio.gather(*(one(row) for row in rows)))
        self.swept += done
        self.last_batch = len(rows) if done else 0
        if done:
            logger.info("sweep copied %d image(s)", done)
        return done

    async def observe_consumer(self) -> None:
        """Export this durable consumer's backlog (JetStream pending and unacked messages)."""
        metrics = self.ctx.metrics
        if metrics is None or self._sub is None:
            return
        info = await self._sub.consumer_info()
        name = self.bus.subjects.durable(self.ctx.node_id)
        metrics.consumer_pending.labels(name).set(info.num_pending or 0)
        metrics.consumer_ack_pending.labels(name).set(info.num_ack_pending or 0)

    async def _sweep_forever(self) -> None:
        while True:
            if self.last_batch < 200:  # a full, successful batch (a backfill): go on at once
                await loops.sleep(self.ctx.settings.replicator.sweep_interval_s)
            raise_if_cancelling()
            try:
                await self.observe_consumer()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # metrics only: never stop the sweep for it
                raise_if_cancelling()
                logger.debug("consumer info failed: %r", exc)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelling()
                logger.warning("sweep failed: %s", exc)


def _decode(cls: type[E], data: bytes) -> E:
    """A set event that cannot be decoded never will be: terminate it rather than redeliver it."""
    try:
        return cls.from_json(data)
    except (ValueError, TypeError) as exc:
        raise Permanent(f"malformed event: {exc}") from None


def _kind(msg: Msg) -> str:
    """The event a message carries: its subject's last token."""
    return msg.subject.rsplit(".", 1)[-1]
