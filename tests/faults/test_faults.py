"""The fault suite: faults injected one after another into ONE real `minicdn dev` cluster (Postgres,
nats-server, three storage nodes and the query service, each its own process) under a steady upload and
lookup load; after each, every invariant of `tests.faults.invariants` is checked and the figures are
printed: the load's error rate while the fault lasted, the detection time and the convergence time.

The tests run in file order and share the cluster (a module fixture): steady state, a truncated original
and a bit-flipped one (each read at once from every region), a bit-flipped one left unread (the scrubber
must find it), a hung node (SIGSTOP, then SIGCONT), a killed node, a killed nats-server, a killed Postgres,
and last a node filled to its capacity (it leaves the cluster with a second set). Bounds are
the issue's where it states one, generous for a shared 2-core machine; every wait is bounded and a failure
names the invariant and the image. Run alone with ``pytest tests/faults`` (or ``-m faults``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from tests.faults.conftest import NODE_CAPACITY_BYTES, Suite
from tests.faults.invariants import URL_GRACE_S, Figures, grouped
from tests.faults.load import REGIONS, Upload, fetch, sha256
from tests.faults.rig import NATS, PG, poll

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

HEARTBEAT_TIMEOUT_BOUND_S = 2.0  # the issue: a silent node is out of URLs and placement within this (dev)
SLACK_S = 1.5  # scheduling on a shared 2-core machine, and the probe's own period
DEATH_NOTICED_BOUND_S = 3.0  # the supervisor reaps and reports a death (its watch loop runs 4 times a second)
RESTART_BOUND_S = 30.0  # a killed process is running and serving again (backoff starts at 0.5 s)
CONVERGE_BOUND_S = 30.0  # every acknowledged image `ok` in every region, after the fault ended
DAMAGE_DETECT_BOUND_S = 15.0  # a damaged original is found: read here at once, from every region and as a new variant
REPAIR_BOUND_S = 30.0  # ... and replaced by a verified copy
HANG_S = 6.0  # how long the SIGSTOPped node stays stopped: three heartbeat timeouts
QUIET_S = 3.0  # steady load before each fault, so the error rate has a baseline
FILL_SIDE = 1600  # px: a 1600x1200 noise JPEG is ~1 MB
NEW_SET_BOUND_S = 90.0  # a full set: the capacity monitor provisions a new one and uploads go on there
SET1 = "set-1"


def settle() -> None:
    """Steady load, no fault, before the next one."""
    time.sleep(QUIET_S)


def report(suite: Suite, fig: Figures) -> None:
    """Print and keep the figures, then fail with every problem found (figures are kept even then)."""
    suite.figures.append(fig)
    print(f"\n{fig.line()}")
    assert not fig.problems, f"{fig.fault}: {len(fig.problems)} invariant(s) broken:\n" + "\n".join(fig.problems[:40])


def converged_image(suite: Suite, on: str, avoid: Collection[str] = ()) -> Upload:
    """A recent acknowledged image, `ready` and `ok` in every region, held by node ``on``, not used before."""
    found: list[Upload] = []

    def look() -> bool:
        recent = [u for u in suite.check.acked() if u.ready_at is not None and u.image_id not in avoid][-20:]
        lacking = suite.check.unconverged(recent) if recent else {}
        held = {r[0] for r in suite.rig.sql("SELECT image_id FROM replicas WHERE node_id = %s AND state = 'ok'", (on,))}
        found[:] = [u for u in recent if u.image_id not in lacking and u.image_id in held]
        return bool(found)

    assert poll(look, 30, every_s=0.5) is not None, f"no acknowledged image converged everywhere and on {on} in 30 s"
    return found[-1]


def holders(suite: Suite, image_id: str) -> list[str]:
    """The nodes with an `ok` replica of the image."""
    rows = suite.rig.sql("SELECT node_id FROM replicas WHERE image_id = %s AND state = 'ok'", (image_id,))
    return sorted(str(r[0]) for r in rows)


def replica_state(suite: Suite, image_id: str, node_id: str) -> str | None:
    rows = suite.rig.sql("SELECT state FROM replicas WHERE image_id = %s AND node_id = %s", (image_id, node_id))
    return str(rows[0][0]) if rows else None


def on_disk(path: Path) -> str | None:
    """The SHA-256 of a stored file, None while it is absent (removed for a repair, not back yet)."""
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return None


def url_node(suite: Suite, up: Upload, region: str) -> str | None:
    """The node the query service hands a client in ``region`` for ``up`` now (None: no URL)."""
    return suite.load.run(suite.load.url_node(up, region), timeout_s=15)


@contextlib.contextmanager
def probing(suite: Suite, fig: Figures) -> Iterator[None]:
    """While the block runs (from detection to the fault's end), probe reads from every region (`Load.probe`)."""
    stop = threading.Event()
    future = suite.load.probe(stop)
    try:
        yield
    finally:
        stop.set()
        fig.probed = future.result(30)


def placed_on(suite: Suite, node_id: str, since: float) -> list[Upload]:
    with suite.load.lock:
        return [u for u in suite.load.uploads if u.node_id == node_id and u.t_start >= since]


# --- steady state --------------------------------------------------------------------------------------------
def test_steady_state(suite: Suite) -> None:
    """No fault: the baseline the fault figures compare with, and the invariants on a quiet cluster."""
    assert poll(lambda: len(suite.check.acked()) >= 10, 60, every_s=0.5), "the load got no 10 uploads acknowledged"
    fig = Figures("none (steady load)", "", time.monotonic())  # every URL that fails counts: t_detect = t_fault
    fig.t_detect = fig.t_fault
    settle()
    fig.t_end = time.monotonic()
    fig.problems += suite.check.quiet_problems(fig.t_end)
    report(suite, suite.check.conclude(fig, CONVERGE_BOUND_S))


# --- damaged originals ---------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    data = path.read_bytes()
    with path.open("r+b") as f:
        f.truncate(len(data) // 2)


def flip_a_bit(path: Path) -> None:
    """Same size, one bit different, in the middle of the entropy-coded data (it may still decode)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    with path.open("r+b") as f:
        f.write(data)


def damage_fault(suite: Suite, name: str, victim: str, damage: Callable[[Path], None], used: set[str]) -> None:
    rig, load, check = suite.rig, suite.load, suite.check
    up = converged_image(suite, victim, avoid=used)
    assert up.image_id is not None
    used.add(up.image_id)
    image_id = up.image_id
    good = next(n for n in holders(suite, image_id) if n != victim)
    # A variant nobody asked for yet, built by a good holder: what the damaged node must serve, or not 200.
    fresh = "w150.png"
    reference = load.run(fetch(_session(suite), f"{rig.nodes()[good]}/i/{image_id}/{fresh}"), 15)
    assert reference.status == 200, f"{fresh} of {image_id} from {good}: {reference.status} {reference.error}"
    settle()
    fig = Figures(name, f"the replica on {victim} is no longer `ok` in Postgres", time.monotonic())
    fig.problems += check.quiet_problems(fig.t_fault)
    path = rig.original_path(victim, image_id)
    intact = path.read_bytes()
    damage(path)
    fig.t_fault = time.monotonic()
    served: list[tuple[str, str]] = []

    state = partial(replica_state, suite, image_id, victim)

    def read_everywhere() -> None:
        """The original from every region, and the fresh variant from the damaged node itself."""
        for region in REGIONS:  # recorded with the load's lookups: a wrong byte breaks "never wrong bytes"
            load.run(load.lookup(up, region, "original"), 15)
        got = load.run(fetch(_session(suite), f"{rig.nodes()[victim]}/i/{image_id}/{fresh}"), 15)
        if got.status == 200 and got.body != reference.body:
            served.append(
                (
                    f"never a variant of damaged bytes: {image_id} {fresh} from {victim}",
                    f"200 with {len(got.body)} bytes ({sha256(got.body)[:12]}), not the good holder's "
                    f"{len(reference.body)} ({sha256(reference.body)[:12]}); answered by {got.url}",
                )
            )

    def detected() -> bool:  # a repair as quick as one poll still proves it was found
        read_everywhere()
        return state() != "ok" or on_disk(path) == up.sha256

    fig.t_detect = poll(detected, DAMAGE_DETECT_BOUND_S, every_s=0.2)
    if fig.t_detect is None:
        fig.problems.append(
            f"damage detected within {DAMAGE_DETECT_BOUND_S:g}s: {image_id} on {victim} ({path}) is still `ok` "
            f"in Postgres after reads from every region and of a new variant"
        )
    else:

        def repaired() -> bool:
            read_everywhere()
            return state() == "ok" and on_disk(path) == up.sha256

        fig.t_end = poll(repaired, REPAIR_BOUND_S, every_s=0.25)
        if fig.t_end is None:
            fig.problems.append(
                f"repaired within {REPAIR_BOUND_S:g}s of detection: {image_id} on {victim} is `{state()}` in "
                f"Postgres and {path} hashes to {(on_disk(path) or 'nothing')[:12]}, recorded {up.sha256[:12]}"
            )
    fig.problems += grouped(served)
    try:
        report(suite, check.conclude(fig, CONVERGE_BOUND_S))
    finally:
        restore_unrepaired(fig, path, intact)


def restore_unrepaired(fig: Figures, path: Path, intact: bytes) -> None:
    """After a damage the cluster did not repair (the failure is reported): put the bytes back, so the faults
    after this one are not blamed for it."""
    if fig.t_end is None and on_disk(path) != sha256(intact):
        spare = path.with_name(path.name + ".faults-restore")
        spare.write_bytes(intact)
        spare.replace(path)


def _session(suite: Suite) -> aiohttp.ClientSession:
    assert suite.load.session is not None
    return suite.load.session


DAMAGED: set[str] = set()


def test_truncated_original(suite: Suite) -> None:
    """Half an original gone on one node: never served with 200 (original or new variant), repaired."""
    damage_fault(suite, "truncated original (us-east-1)", "us-east-1", truncate, DAMAGED)


def test_bit_flipped_original(suite: Suite) -> None:
    """One bit of an original flipped on one node (same size): never served with 200, repaired."""
    damage_fault(suite, "bit-flipped original (eu-west-1)", "eu-west-1", flip_a_bit, DAMAGED)


def test_scrubbed_original(suite: Suite) -> None:
    """One bit of an original flipped on one node, and the image left unread: the scrubber alone finds it
    (within a pass plus the pause between passes) and it is repaired."""
    rig, load, check = suite.rig, suite.load, suite.check
    victim = "ap-southeast-1"
    up = converged_image(suite, victim, avoid=DAMAGED)
    assert up.image_id is not None
    image_id = up.image_id
    DAMAGED.add(image_id)
    load.hidden.add(image_id)  # from now on no lookup or probe reads it, so no read can find the damage first
    settle()  # lookups of it already under way end meanwhile
    scrub = rig.node_settings(victim).scrub
    stored = rig.sql(
        "SELECT coalesce(sum(i.bytes), 0) FROM replicas r JOIN images i USING (image_id) "
        "WHERE r.node_id = %s AND r.state = 'ok'",
        (victim,),
    )[0][0]
    pass_s = int(stored) / scrub.bytes_per_s if scrub.bytes_per_s else float("inf")
    bound = scrub.interval_s + pass_s + SLACK_S + 10  # the pause, one pass, slack (the node's other work)
    what = f"the scrubber: replica on {victim} not `ok`"
    fig = Figures(f"bit-flipped original, unread ({victim})", what, time.monotonic())
    fig.problems += check.quiet_problems(fig.t_fault)
    path = rig.original_path(victim, image_id)
    intact = path.read_bytes()
    flip_a_bit(path)
    fig.t_fault = time.monotonic()
    try:
        state = partial(replica_state, suite, image_id, victim)
        fig.t_detect = poll(lambda: state() != "ok" or on_disk(path) == up.sha256, bound, every_s=0.2)
        if fig.t_detect is None:
            fig.problems.append(
                f"found by the scrubber within {bound:.0f}s (scrub.interval_s {scrub.interval_s:g} + a pass of "
                f"{int(stored)} B at {scrub.bytes_per_s} B/s + slack): {image_id} on {victim} is still `ok`"
            )
        else:
            fig.t_end = poll(lambda: state() == "ok" and on_disk(path) == up.sha256, REPAIR_BOUND_S, every_s=0.2)
            if fig.t_end is None:
                fig.problems.append(
                    f"repaired within {REPAIR_BOUND_S:g}s of detection: {image_id} on {victim} is `{state()}`, "
                    f"{path} hashes to {(on_disk(path) or 'nothing')[:12]}, recorded {up.sha256[:12]}"
                )
    finally:
        load.hidden.discard(image_id)  # the checks below read it from every region
    try:
        report(suite, check.conclude(fig, CONVERGE_BOUND_S))
    finally:
        restore_unrepaired(fig, path, intact)


# --- a node that hangs or dies -------------------------------------------------------------------------------
def node_out_of_urls(
    suite: Suite, victim: str, region: str, up: Upload, fig: Figures, back: Callable[[], bool] | None = None
) -> None:
    """Detection: the query service stops handing ``victim`` to a client of its region (probed 10 times a second),
    within the heartbeat timeout. With ``back``: or the node is serving again first (a supervisor's restart can
    beat the timeout; clients then only saw the gap), which the figures say."""

    def detected() -> bool:
        if url_node(suite, up, region) != victim:
            return True
        if back is not None and back():
            fig.detection_what = f"{victim} serving again before it was out of its region's URLs"
            return True
        return False

    bound = HEARTBEAT_TIMEOUT_BOUND_S + SLACK_S
    fig.t_detect = poll(detected, bound + 10, every_s=0.1)
    if fig.t_detect is None or fig.t_detect - fig.t_fault > bound:
        fig.problems.append(
            f"out of URLs within the heartbeat timeout: a {region} client still got {victim} for {up.image_id} "
            f"{'after ' + format(fig.t_detect - fig.t_fault, '.2f') + 's' if fig.t_detect else 'throughout'}, "
            f"bound {bound:g}s ({HEARTBEAT_TIMEOUT_BOUND_S:g}s + {SLACK_S:g}s slack)"
        )


def placement_problems(suite: Suite, victim: str, fig: Figures, until: float) -> list[str]:
    if fig.t_detect is None:
        return []
    late = [u for u in placed_on(suite, victim, fig.t_detect + URL_GRACE_S) if u.t_start < until]
    return [
        f"out of placement once detected: upload {u.image_id} of a {u.region} client placed on {victim} "
        f"{u.t_start - fig.t_detect:.2f}s after detection ({u.outcome} {u.detail})"
        for u in late
    ]


def test_hung_node(suite: Suite) -> None:
    """SIGSTOP a node (its whole process group: the parent, its workers, their sandboxes) for three heartbeat
    timeouts, then SIGCONT: it is out of URLs and placement within the timeout, then used again."""
    victim, region = "ap-southeast-1", "ap-southeast"
    up = converged_image(suite, victim)
    assert url_node(suite, up, region) == victim, f"a {region} client is not sent to {victim} before the fault"
    settle()
    fig = Figures(f"SIGSTOP node ({victim}, {HANG_S:g}s)", f"{victim} out of its region's URLs", time.monotonic())
    fig.problems += suite.check.quiet_problems(fig.t_fault)
    suite.rig.kill(victim, signal.SIGSTOP, group=True)
    fig.t_fault = time.monotonic()
    try:
        node_out_of_urls(suite, victim, region, up, fig)
        with probing(suite, fig):
            time.sleep(max(0.0, fig.t_fault + HANG_S - time.monotonic()))
    finally:
        suite.rig.kill(victim, signal.SIGCONT, group=True)
    fig.t_end = time.monotonic()
    fig.problems += placement_problems(suite, victim, fig, fig.t_end)
    report(suite, suite.check.conclude(fig, CONVERGE_BOUND_S))


def test_killed_node(suite: Suite) -> None:
    """SIGKILL a node (its whole process group: a crash of the node, not of one of its workers): avoided within
    the heartbeat timeout (or back before it), restarted by the supervisor, caught up."""
    victim, region = "eu-west-1", "eu-west"
    up = converged_image(suite, victim)
    assert poll(lambda: url_node(suite, up, region) == victim, 30, every_s=0.5), f"{region} client not on {victim}"
    settle()
    fig = Figures(f"SIGKILL node ({victim})", f"{victim} out of its region's URLs", time.monotonic())
    fig.problems += suite.check.quiet_problems(fig.t_fault)
    rig = suite.rig
    old = rig.kill(victim, signal.SIGKILL, group=True)
    fig.t_fault = time.monotonic()

    def back() -> bool:
        return rig.pid(victim) not in (None, old) and rig.serving(victim)

    node_out_of_urls(suite, victim, region, up, fig, back)
    with probing(suite, fig):
        if suite.rig.wait_replaced(victim, old, RESTART_BOUND_S) is None:
            fig.problems.append(f"restarted: {victim} (pid {old}) was not running again within {RESTART_BOUND_S:g}s")
        fig.t_end = suite.rig.wait_serving(victim, RESTART_BOUND_S)
    if fig.t_end is None:
        fig.problems.append(f"restarted: {victim} did not answer /healthz within {RESTART_BOUND_S:g}s")
    fig.problems += placement_problems(suite, victim, fig, fig.t_end or time.monotonic())
    report(suite, suite.check.conclude(fig, CONVERGE_BOUND_S))


# --- the servers under everything ----------------------------------------------------------------------------
def server_fault(suite: Suite, name: str, what: str) -> None:
    """SIGKILL Postgres or nats-server: the supervisor notices and restarts it; nothing acknowledged is lost."""
    rig = suite.rig
    settle()
    fig = Figures(f"SIGKILL {what}", "the supervisor reaped and reported the death", time.monotonic())
    fig.problems += suite.check.quiet_problems(fig.t_fault)
    deaths = rig.deaths()
    old = rig.kill(name, signal.SIGKILL)
    fig.t_fault = time.monotonic()
    fig.t_detect = poll(lambda: rig.deaths() > deaths, DEATH_NOTICED_BOUND_S, every_s=0.05)
    if fig.t_detect is None:
        fig.problems.append(f"death noticed: {what} (pid {old}) not reported within {DEATH_NOTICED_BOUND_S:g}s")
    with probing(suite, fig):
        if rig.wait_replaced(name, old, RESTART_BOUND_S) is None:
            fig.problems.append(f"restarted: {what} (pid {old}) was not running again within {RESTART_BOUND_S:g}s")
        fig.t_end = rig.wait_serving(name, RESTART_BOUND_S)
    if fig.t_end is None:
        fig.problems.append(f"restarted: {what} was not serving within {RESTART_BOUND_S:g}s")
    report(suite, suite.check.conclude(fig, CONVERGE_BOUND_S))


def test_killed_nats(suite: Suite) -> None:
    """SIGKILL nats-server: uploads and lookups go on (Postgres holds what replication owes), it is restarted."""
    server_fault(suite, NATS, "nats-server")


def test_killed_postgres(suite: Suite) -> None:
    """SIGKILL Postgres's postmaster: the supervisor restarts it; URLs handed out meanwhile must still work."""
    server_fault(suite, PG, "Postgres")


# --- a full node ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_full_node(suite: Suite) -> None:
    """Uploads of ~1 MB fill set-1's nodes towards their capacity. The fault starts when a member is past the
    high-water mark (its heartbeat's figures in Postgres); detection: the set closes, and no upload is placed
    there any more; it ends when uploads are taken elsewhere (a new set, provisioned by the capacity monitor)."""
    rig, load = suite.rig, suite.load
    settings = rig.query_settings()
    high_water = settings.capacity.high_water
    members = {str(r[0]) for r in rig.sql("SELECT node_id FROM nodes WHERE set_id = %s", (SET1,))}
    settle()
    name = f"full node ({NODE_CAPACITY_BYTES / 1e6:g} MB, {SET1})"
    fig = Figures(name, f"{SET1} closed in Postgres, from a member past high water ({high_water:g})", 0.0)
    started = time.monotonic()
    fig.problems += suite.check.quiet_problems(started)

    def fullest() -> float:
        rows = rig.sql(
            "SELECT max(used_bytes::float / capacity_bytes) FROM nodes WHERE set_id = %s AND capacity_bytes > 0",
            (SET1,),
        )
        return float(rows[0][0] or 0.0)

    def set_closed() -> bool:
        return rig.sql("SELECT state FROM sets WHERE set_id = %s", (SET1,)) == [("closed",)]

    full = threading.Event()

    async def fill() -> int:
        """Upload big images from every region until a member is full; how many were sent."""
        sent = 0
        while not full.is_set() and time.monotonic() - started < NEW_SET_BOUND_S:
            batch = [load.upload(REGIONS[(sent + i) % 3], size=FILL_SIDE) for i in range(3)]
            sent += len(await asyncio.gather(*batch))
        return sent

    filling = asyncio.run_coroutine_threadsafe(fill(), load.loop)
    full_at: list[float] = []

    def closed() -> bool:  # sampled 10 times a second, apart from the uploads' pace
        if not full_at and fullest() >= high_water:
            full_at.append(time.monotonic())
            full.set()  # once a member is full only the steady load goes on: nothing is forced further
        return set_closed()

    fig.t_detect = poll(closed, NEW_SET_BOUND_S, every_s=0.1)
    full.set()
    sent = filling.result(60)
    # The monitor may close the set between two samples: then the close is the first sign of a full member.
    fig.t_fault = min([*full_at, fig.t_detect or time.monotonic()])
    if fig.t_detect is None:
        seen = f"a member past high water after {full_at[0] - started:.1f}s" if full_at else "no member past high water"
        fig.problems.append(f"a full set closes: {SET1} still open {NEW_SET_BOUND_S:g}s after filling began ({seen})")
    else:
        detected = fig.t_detect

        def elsewhere() -> bool:
            return any(u.node_id not in members and u.t_start > detected for u in suite.check.acked())

        fig.t_end = poll(elsewhere, NEW_SET_BOUND_S, every_s=0.5)
        if fig.t_end is None:
            fig.problems.append(f"uploads go on: none acknowledged outside {SET1} within {NEW_SET_BOUND_S:g}s")
        # Placement reads the set's state from the node table, reloaded every query.node_refresh_s.
        grace = detected + settings.query.node_refresh_s + SLACK_S
        fig.problems += [
            f"a closed set takes no upload: {u.image_id} of a {u.region} client placed on {u.node_id} "
            f"{u.t_start - detected:.1f}s after {SET1} closed"
            for u in suite.check.acked()
            if u.node_id in members and u.t_start > grace
        ]
    print(f"\nfill: {sent} uploads of ~1 MB in {time.monotonic() - started:.1f}s; nodes now {sorted(rig.nodes())}")
    report(suite, suite.check.conclude(fig, CONVERGE_BOUND_S))
