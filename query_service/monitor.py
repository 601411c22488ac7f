"""The capacity monitor: every query service runs one, exactly one acts (a Postgres advisory-lock leader).

Each tick the leader samples usage, computes the figures, applies node/set state changes, drives
provisioning in flight, and plans a new set when the decisions want one. A provisioning is recorded
(`planned`, with its plan) *before* the provisioner is called, and a unique index allows only one in
flight, so neither a second instance nor a leader restarted after a crash provisions twice: a new
leader resumes the recorded plan (same ``plan_id``) instead of making another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg.errors

from common import loops
from common.config import Settings
from common.db import control as db_control
from common.db.rows import Pool
from query_service.capacity import (
    Decisions,
    Report,
    build_report,
    decide,
    growth_per_day,
    node_figures,
    replaced_nodes,
)
from query_service.provisioners import Plan, PlannedNode, Provisioner, ProvisionError
from query_service.registry import NodeRegistry

logger = logging.getLogger(__name__)
LEADER_LOCK_KEY = 0x6D696E6963646E + 4  # distinct from the migrations' lock


@contextlib.asynccontextmanager
async def leadership(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any] | None]:
    """Yields a connection holding the leader lock, or None when another instance leads. The lock lives as
    long as the session: if this process dies, Postgres releases it and another instance takes over."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        yield conn if await db_control.try_session_lock(conn, LEADER_LOCK_KEY) else None
    finally:
        await conn.close()


async def load_report(pool: Pool, settings: Settings, registry: NodeRegistry | None) -> Report:
    """Figures from Postgres (and this instance's view of health when it has one)."""
    cap = settings.capacity
    rows = await db_control.nodes_with_sets(pool)
    samples = await db_control.growth_samples(pool, cap.growth_window_s)
    set_states = {r["set_id"]: r["state"] for r in await db_control.list_sets(pool)}
    health = {}
    for r in rows:
        info = registry.nodes.get(r["node_id"]) if registry else None
        if info is not None and registry is not None:
            health[r["node_id"]] = registry.healthy(info)
        else:
            age = r["heartbeat_age_s"]
            health[r["node_id"]] = (
                r["state"] != "dead" and age is not None and age < settings.health.heartbeat_timeout_s
            )
    replaced = replaced_nodes((r["node_id"], r["set_id"], r["region"], r["state"], health[r["node_id"]]) for r in rows)
    figures = []
    for r in rows:
        # Neither shown nor acted upon before the samples span `forecast_min_span_s`: a minute of history
        # forecasts nothing but its own noise.
        growth = growth_per_day(samples.get(r["node_id"]), min_span_s=cap.forecast_min_span_s)
        figures.append(node_figures(r, health[r["node_id"]], growth, r["node_id"] in replaced))
    history_s = max((span for span, _slope in samples.values() if span is not None), default=0.0)
    return build_report(figures, set_states, cap, history_s)


class CapacityMonitor:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        provisioner: Provisioner | None,
        registry: NodeRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.provisioner = provisioner
        self.registry = registry
        self.is_leader = False
        self.last_sample = 0.0
        self.last_report: Report | None = None
        self.last_decisions: Decisions | None = None
        self.ticks = 0

    async def run(self) -> None:
        interval = self.settings.capacity.interval_s
        while True:
            try:
                async with leadership(self.settings.database.url.reveal()) as conn:
                    if conn is not None:
                        self.is_leader = True
                        logger.info("capacity monitor: this instance leads")
                        while True:
                            await db_control.keep_alive(conn)  # still holding the lock (the session lives)
                            await self.tick()
                            await loops.sleep(interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                loops.raise_if_cancelling()
                logger.warning("capacity monitor: %r", exc)
            finally:
                self.is_leader = False
            await loops.sleep(interval)

    async def tick(self) -> Report:
        """One round of the leader's work (also called directly by tests)."""
        cap = self.settings.capacity
        self.ticks += 1
        if time.monotonic() - self.last_sample >= cap.sample_interval_s:
            rows = await db_control.nodes_with_sets(self.pool)
            timeout_s = self.settings.health.heartbeat_timeout_s
            live = [
                (r["node_id"], r["used_bytes"], r["objects"])
                for r in rows
                if r["heartbeat_age_s"] is not None and r["heartbeat_age_s"] < timeout_s
            ]
            await db_control.add_samples(self.pool, live, keep_s=2 * cap.growth_window_s)
            self.last_sample = time.monotonic()
        report = await load_report(self.pool, self.settings, self.registry)
        decisions = decide(report, cap, self.settings.health)
        self.last_report, self.last_decisions = report, decisions
        await self._apply(decisions)
        await self._drive_in_flight(report)
        reason = decisions.provision_reason
        if (
            reason
            and decisions.by_forecast
            and await db_control.seconds_since_provisioning(self.pool) < cap.provision_cooldown_s
        ):
            reason = None  # the last new set's room is not in the growth history yet
        if reason and self.provisioner is not None:
            await self._plan_new_set(report, reason)
        await self._auto_replace(report)
        return report

    async def _apply(self, decisions: Decisions) -> None:
        for node_id, state, reason in decisions.node_states:
            try:
                changed = await db_control.set_node_state(self.pool, node_id, state, "auto")
            except psycopg.errors.UniqueViolation:  # back from `dead`, but a replacement took its place
                continue
            if changed:
                logger.warning("node %s -> %s: %s", node_id, state, reason)
                await db_control.record_event(
                    self.pool, "node_state", reason, node_id=node_id, outcome=f"state {state}"
                )
                if state == "active":
                    await self.rejoin(node_id)
        for set_id, state, reason in decisions.set_states:
            if await db_control.set_set_state(self.pool, set_id, state):
                logger.warning("set %s %s: %s", set_id, state, reason)
                await db_control.record_event(
                    self.pool,
                    "set_closed" if state == "closed" else "set_opened",
                    reason,
                    set_id=set_id,
                    outcome=f"set {state}",
                )

    async def rejoin(self, node_id: str) -> None:
        """A node back from `dead` missed the uploads meanwhile (no rows were made for it): backfill them."""
        await db_control.rejoin_set(self.pool, node_id)

    # --- provisioning ----------------------------------------------------------------------------------
    async def _drive_in_flight(self, report: Report) -> None:
        by_id = {n.node_id: n for n in report.nodes}
        for event in await db_control.in_flight(self.pool):
            plan = Plan.from_dict(event["plan"]) if event["plan"] else None
            if plan is None:
                await db_control.update_event(self.pool, event["event_id"], "failed", "no plan recorded")
                continue
            if event["state"] == "planned":  # recorded, but the provisioner may never have been called
                if self.provisioner is not None:
                    await self._call(event["event_id"], plan)
                continue
            ready = [n.node_id for n in plan.nodes if n.node_id in by_id and by_id[n.node_id].healthy]
            if len(ready) == len(plan.nodes):
                took = event["age_s"]
                await db_control.update_event(
                    self.pool,
                    event["event_id"],
                    "succeeded",
                    f"{len(ready)} node(s) registered and healthy after {took:.1f}s",
                )
                logger.warning("provisioning %s succeeded in %.1fs", event["event_id"], took)
            elif event["age_s"] > self.settings.capacity.provision_timeout_s:
                await db_control.update_event(
                    self.pool,
                    event["event_id"],
                    "failed",
                    f"only {ready} registered within {self.settings.capacity.provision_timeout_s:g}s",
                )

    async def _call(self, event_id: int, plan: Plan) -> None:
        assert self.provisioner is not None
        try:
            outcome = await self.provisioner.provision(plan)
        except ProvisionError as exc:
            await db_control.update_event(self.pool, event_id, "failed", str(exc))
            logger.error("provisioning %s failed: %s", event_id, exc)
            return
        await db_control.update_event(self.pool, event_id, "running", outcome)

    async def _plan_new_set(self, report: Report, reason: str) -> None:
        if await db_control.in_flight(self.pool):
            return  # one provisioning at a time; its nodes' room is not in the figures yet
        regions: dict[str, tuple[float, float]] = {}
        for n in report.nodes:
            if n.live:
                regions.setdefault(n.region, (n.lat, n.lon))
        existing = await db_control.existing_node_ids(self.pool)
        async with self.pool.connection() as conn:
            number = await db_control.next_set_number(conn)
        set_id = f"set-{number}"
        nodes = []
        for region, (lat, lon) in sorted(regions.items()):
            node_id = f"{region}-{number}"
            suffix = 1
            while node_id in existing:
                suffix += 1
                node_id = f"{region}-{number}-{suffix}"
            nodes.append(PlannedNode(node_id, region, set_id, lat, lon))
        assert self.provisioner is not None
        event_id = await db_control.new_event_id(self.pool)
        plan = Plan(event_id, "new_set", set_id, reason, tuple(nodes))
        try:
            await db_control.record_event(
                self.pool,
                "new_set",
                reason,
                state="planned",
                set_id=set_id,
                plan=plan.to_dict(),
                provisioner=self.provisioner.name,
                event_id=event_id,
            )
        except psycopg.errors.UniqueViolation:
            return  # another leader's provisioning is in flight
        logger.warning("provisioning a new set %s (%s): %s", set_id, reason, [n.node_id for n in nodes])
        await self._call(event_id, plan)

    async def plan_replacement(
        self, old_node_id: str, new_node_id: str | None, reason: str, call_provisioner: bool = True
    ) -> dict[str, Any]:
        """Mark ``old_node_id`` dead and record (and with a provisioner, start) its replacement in the
        same set and region. Its replica rows go: the new member backfills every image of the set."""
        rows = {r["node_id"]: r for r in await db_control.nodes_with_sets(self.pool)}
        old = rows[old_node_id]
        if new_node_id is None:
            n = 2
            while f"{old['region']}-r{n}" in rows:
                n += 1
            new_node_id = f"{old['region']}-r{n}"
        await db_control.retire_node(self.pool, old_node_id)
        planned = PlannedNode(new_node_id, old["region"], old["set_id"], old["lat"], old["lon"], old_node_id)
        use_provisioner = call_provisioner and self.provisioner is not None
        event_id = await db_control.new_event_id(self.pool)
        plan = Plan(event_id, "replace", old["set_id"], reason, (planned,))
        await db_control.record_event(
            self.pool,
            "replace",
            reason,
            state="planned" if use_provisioner else "running",
            set_id=old["set_id"],
            node_id=old_node_id,
            plan=plan.to_dict(),
            event_id=event_id,
            provisioner=self.provisioner.name if use_provisioner and self.provisioner else "operator",
        )
        if use_provisioner:
            await self._call(event_id, plan)
        return plan.to_dict()

    async def _auto_replace(self, report: Report) -> None:
        after = self.settings.capacity.auto_replace_after_s
        if after <= 0 or self.provisioner is None:
            return
        for node_id in await db_control.dead_unreplaced(self.pool, after):
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                await self.plan_replacement(node_id, None, f"dead for more than {after:g}s")
