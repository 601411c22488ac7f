"""Every NATS subject, stream and durable-consumer name, built in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subjects:
    prefix: str = "minicdn"
    stream: str = "MINICDN"

    def stream_subjects(self) -> list[str]:
        return [f"{self.prefix}.set.>"]

    def set_event(self, set_id: str, name: str) -> str:
        return f"{self.prefix}.set.{set_id}.{name}"

    def set_all(self, set_id: str) -> str:
        return f"{self.prefix}.set.{set_id}.>"

    def heartbeat(self, node_id: str) -> str:
        return f"{self.prefix}.node.{node_id}.heartbeat"

    def all_heartbeats(self) -> str:
        return f"{self.prefix}.node.*.heartbeat"

    def set_events_named(self, name: str) -> str:
        """Every set's ``name`` events (a core-NATS subscription sees the JetStream publishes too)."""
        return f"{self.prefix}.set.*.{name}"

    # Outside the stream's `set.>`: core NATS only, nothing stored (the receivers reconcile from Postgres).
    def image_event(self, name: str) -> str:
        return f"{self.prefix}.image.{name}"

    def image_events(self) -> str:
        return f"{self.prefix}.image.*"

    def access_event(self, name: str) -> str:
        return f"{self.prefix}.access.{name}"

    def access_events(self) -> str:
        return f"{self.prefix}.access.*"

    # A node's own processes (`node.workers`) among themselves: core NATS, nothing stored.
    def node_report(self, node_id: str) -> str:
        return f"{self.prefix}.node.{node_id}.workers.report"

    def node_files_changed(self, node_id: str) -> str:
        return f"{self.prefix}.node.{node_id}.workers.changed"

    def durable(self, node_id: str) -> str:
        return f"replicator-{node_id}"

    @staticmethod
    def msg_id(event_name: str, image_id: str) -> str:
        return f"{event_name}:{image_id}"
