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

    def durable(self, node_id: str) -> str:
        return f"replicator-{node_id}"

    @staticmethod
    def msg_id(event_name: str, image_id: str) -> str:
        return f"{event_name}:{image_id}"
