"""The consumer's handling of one JetStream message (replicator.consumer): which job a set event starts, and how
the job's outcome is answered (ack, nak with a delay, term). The end-to-end paths are in
tests/integration/test_replication.py; here the jobs are stand-ins, so the rare outcomes can be forced."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import pytest
from nats.aio.msg import Msg

from common.events import ImageDeleted, ImageRejected, ImageUploaded, NodeHeartbeat
from common.subjects import Subjects
from replicator import consumer
from replicator.consumer import Replicator
from replicator.jobs import ReplicatorContext, Wanted
from replicator.outcomes import Permanent, Retry

SET = "set-1"
IMAGE_ID = "abcdefghijklmnopqrstuv"


@dataclass
class FakeMsg:
    """The part of nats' Msg the consumer uses, recording how it was answered."""

    subject: str
    data: bytes = b""
    headers: dict[str, str] | None = None
    metadata: Any = None
    answers: list[tuple[str, float | None]] = field(default_factory=list)

    async def ack(self) -> None:
        self.answers.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.answers.append(("nak", delay))

    async def term(self) -> None:
        self.answers.append(("term", None))


def message(event: ImageUploaded | ImageDeleted | ImageRejected | NodeHeartbeat, delivered: int | None = None) -> Msg:
    metadata = None if delivered is None else SimpleNamespace(num_delivered=delivered)
    fake = FakeMsg(Subjects().set_event(SET, event.name), event.to_json(), metadata=metadata)
    return cast(Msg, fake)


def uploaded(origin: str) -> ImageUploaded:
    return ImageUploaded(IMAGE_ID, SET, origin, "ab" * 32, 1234, "image/jpeg")


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Replaces the three jobs the consumer starts with recorders."""
    calls: list[tuple[str, object]] = []

    async def delete_local(ctx: ReplicatorContext, image_id: str) -> bool:
        calls.append(("delete", image_id))
        return True

    async def drop_rejected(ctx: ReplicatorContext, image_id: str) -> None:
        calls.append(("drop", image_id))

    async def replicate(ctx: ReplicatorContext, want: Wanted, attempt: int = 1) -> bool:
        calls.append(("replicate", (want, attempt)))
        return True

    monkeypatch.setattr(consumer, "delete_local", delete_local)
    monkeypatch.setattr(consumer, "drop_rejected", drop_rejected)
    monkeypatch.setattr(consumer, "replicate", replicate)
    return calls


async def test_each_set_event_starts_its_job(ctx: ReplicatorContext, jobs: list[tuple[str, object]]) -> None:
    replicator = Replicator(ctx, cast(Any, None))  # the bus is only used by start()
    await replicator._dispatch(message(ImageDeleted(IMAGE_ID, SET)))
    await replicator._dispatch(message(ImageRejected(IMAGE_ID, SET, "nsfw")))
    await replicator._dispatch(message(uploaded("us-east-1"), delivered=3))
    await replicator._dispatch(message(uploaded("us-east-1")))  # no JetStream metadata: the first attempt
    want = Wanted(IMAGE_ID, "ab" * 32, 1234, "image/jpeg")
    assert jobs == [
        ("delete", IMAGE_ID),
        ("drop", IMAGE_ID),
        ("replicate", (want, 3)),  # the delivery count drives the retry backoff
        ("replicate", (want, 1)),
    ]


async def test_own_uploads_and_other_events_start_nothing(
    ctx: ReplicatorContext, jobs: list[tuple[str, object]]
) -> None:
    replicator = Replicator(ctx, cast(Any, None))
    await replicator._dispatch(message(uploaded(ctx.node_id)))  # the origin already holds it
    heartbeat = NodeHeartbeat(ctx.node_id, "eu-west", SET, 0, 0, 0, 0, 0, "0", 0.0)
    await replicator._dispatch(message(heartbeat))  # a kind this consumer does not handle: acked and skipped
    assert jobs == []


@pytest.mark.parametrize(
    ("outcome", "answer"),
    [
        (None, ("ack", None)),
        (Retry("peer down", 7.0), ("nak", 7.0)),
        (Permanent("image gone"), ("term", None)),
        (RuntimeError("bug"), ("nak", 5)),  # unexpected: retried, never dropped
    ],
)
async def test_job_outcome_answers_the_message(
    ctx: ReplicatorContext, monkeypatch: pytest.MonkeyPatch, outcome: Exception | None, answer: tuple[str, float]
) -> None:
    replicator = Replicator(ctx, cast(Any, None))

    async def dispatch(msg: Msg) -> None:
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(replicator, "_dispatch", dispatch)
    msg = message(uploaded("us-east-1"))
    await replicator._handle(msg)
    assert cast(FakeMsg, msg).answers == [answer]


@pytest.mark.parametrize("data", [b"", b"{not json", b'{"v": 99, "image_id": "x", "set_id": "s"}', b'{"v": 1}'])
async def test_an_undecodable_event_is_terminated(ctx: ReplicatorContext, data: bytes) -> None:
    """Redelivering it could never help, so it is terminated rather than retried forever."""
    replicator = Replicator(ctx, cast(Any, None))
    msg = FakeMsg(Subjects().set_event(SET, ImageDeleted.name), data)
    await replicator._handle(cast(Msg, msg))
    assert msg.answers == [("term", None)]


def test_decode_round_trips_a_good_event() -> None:
    event = uploaded("us-east-1")
    assert consumer._decode(ImageUploaded, event.to_json()) == event
    with pytest.raises(Permanent, match="malformed event"):
        consumer._decode(ImageUploaded, ImageDeleted(IMAGE_ID, SET).to_json())  # fields missing


@pytest.mark.parametrize("payload", [b"[]", b"42", b'"uploaded"', b"null", b"{not json"])
def test_decode_refuses_a_payload_that_is_not_an_event_object(payload: bytes) -> None:
    # Terminated as malformed, never an AttributeError that would redeliver the message forever.
    with pytest.raises(Permanent, match="malformed event"):
        consumer._decode(ImageUploaded, payload)


async def test_a_slow_copy_holds_back_no_other(ctx: ReplicatorContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """``replicator.concurrency`` (2 here) messages in hand, each answered as soon as its own job is done: while
    the first hangs, the others fetched with it and after it are copied and acked."""
    replicator = Replicator(ctx, cast(Any, None))
    release = asyncio.Event()
    msgs = [cast(FakeMsg, message(uploaded("us-east-1"))) for _ in range(4)]
    queue = list(msgs)
    fetched: list[int] = []  # the batch sizes asked for

    class FakeSub:
        async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 (nats-py's signature)
            fetched.append(batch)
            if not queue:
                await asyncio.sleep(timeout)
                raise nats.errors.TimeoutError
            taken, queue[:] = queue[:batch], queue[batch:]
            return [cast(Msg, m) for m in taken]

    async def dispatch(msg: Msg) -> None:
        if cast(object, msg) is msgs[0]:
            await release.wait()

    monkeypatch.setattr(replicator, "_dispatch", dispatch)
    consuming = asyncio.create_task(replicator._consume(cast(Any, FakeSub())))
    try:
        for _ in range(100):
            if all(m.answers for m in msgs[1:]):
                break
            await asyncio.sleep(0.01)
        assert [m.answers for m in msgs] == [[], [("ack", None)], [("ack", None)], [("ack", None)]]
        assert max(fetched) <= 2  # never more in hand than the concurrency
        release.set()
        for _ in range(100):
            if msgs[0].answers:
                break
            await asyncio.sleep(0.01)
        assert msgs[0].answers == [("ack", None)]
    finally:
        replicator._stopping.set()
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
