"""NATS/JetStream: connect, make sure the stream exists, publish events with a dedup id."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from common import reqlog
from common.config import NatsSettings
from common.events import Event
from common.subjects import Subjects

logger = logging.getLogger(__name__)


class Bus:
    """One NATS connection with its JetStream context and the subject naming for this cluster."""

    def __init__(self, nc: Client, js: JetStreamContext, subjects: Subjects, settings: NatsSettings) -> None:
        self.nc = nc
        self.js = js
        self.subjects = subjects
        self.settings = settings

    async def ensure_stream(self) -> None:
        config = StreamConfig(
            name=self.subjects.stream,
            subjects=self.subjects.stream_subjects(),
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=float(self.settings.stream_max_age_s),
            duplicate_window=120.0,
            # Applied on every start, so raising it in the config grows an existing stream (NATS 2.10 can).
            num_replicas=self.settings.stream_replicas,
        )
        try:
            await self.js.stream_info(self.subjects.stream)
            await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(config)

    async def publish_set_event(self, set_id: str, event: Event, image_id: str) -> None:
        """Publish to JetStream with ``Nats-Msg-Id`` so a retried publish is stored once (and the current
        request id, so the replicators' log lines name the upload that caused them)."""
        await self.js.publish(
            self.subjects.set_event(set_id, event.name),
            event.to_json(),
            headers={"Nats-Msg-Id": Subjects.msg_id(event.name, image_id), **reqlog.outgoing_headers()},
        )

    async def publish_core(self, subject: str, event: Event) -> None:
        """Fire-and-forget (heartbeats): losing one is harmless, the next follows in seconds."""
        await self.nc.publish(subject, event.to_json())

    async def announce(self, subject: str, event: Event, *, flush: bool = False) -> None:
        """Publish an event that keeps other processes' memory current (core NATS). Never raises: a lost one is
        repaired by the receivers' reconcile from Postgres. ``flush``: return only once the server has it
        (bounded to a second), for an answer that promises the others know (a revoked key)."""
        try:
            await self.nc.publish(subject, event.to_json())
            if flush:
                await self.nc.flush(timeout=1)
        except Exception as exc:
            logger.warning("announcing %s failed (the receivers' reconcile catches up): %r", subject, exc)


@asynccontextmanager
async def open_bus(settings: NatsSettings, name: str) -> AsyncIterator[Bus]:
    async def on_error(exc: Exception) -> None:
        logger.warning("nats: %s", exc)

    nc = await nats.connect(
        [url.strip() for url in settings.url.split(",") if url.strip()],  # a cluster: any of its servers
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        connect_timeout=5,
        drain_timeout=5,
    )
    bus = Bus(nc, nc.jetstream(), Subjects(settings.subject_prefix, settings.stream), settings)
    try:
        await bus.ensure_stream()
        yield bus
    finally:
        try:
            await nc.drain()
        except Exception as exc:  # stopping during a NATS outage: nothing to drain to, close all the same
            logger.warning("nats: closed without draining: %r", exc)
            await nc.close()
