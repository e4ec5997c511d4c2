"""Helpers for the event tests: a real Kafka consumer (partitions assigned, no group wait) and
what the outbox holds."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from helpers import TIMEOUT
from sqlalchemy import text


@dataclass
class Received:
    topic: str
    key: bytes
    value: bytes
    headers: dict[str, bytes]

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.value)


class EventReader:
    """Reads a topic from its beginning with `assign()` (a group member would wait for its
    partitions), every time afresh, so each call sees everything the broker holds."""

    def __init__(self, bootstrap: str, prefix: str):
        self.bootstrap = bootstrap
        self.prefix = prefix

    def read(self, aggregate: str, count: int, *, timeout: float = TIMEOUT, settle: float = 0.5) -> list[Received]:
        """At least `count` messages of `<prefix><aggregate>` in partition order (waits up to
        `timeout`), then `settle` seconds more to catch any extra (duplicates, stray events)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        topic = f"{self.prefix}{aggregate}"
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "tests", "enable.auto.commit": False})
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        try:
            partitions = None
            while partitions is None:
                metadata = consumer.list_topics(topic, timeout=2).topics.get(topic)
                if metadata is not None and metadata.error is None and metadata.partitions:
                    partitions = list(metadata.partitions)
                elif time.monotonic() > deadline:
                    if count == 0:
                        return []
                    raise AssertionError(f"topic {topic} never appeared")
                else:
                    time.sleep(0.1)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            settle_until = None
            while True:
                now = time.monotonic()
                if len(received) >= count and settle_until is None:
                    settle_until = now + settle
                if settle_until is not None and now > settle_until:
                    break
                if now > deadline and settle_until is None:
                    raise AssertionError(f"{len(received)} of {count} events arrived on {topic}")
                message = consumer.poll(0.1)
                if message is None or message.error():
                    continue
                received.append(Received(message.topic(), message.key(), message.value(),
                                         dict(message.headers() or [])))
        finally:
            consumer.close()
        return received


def outbox_rows(admin_engine, service: str) -> list[dict[str, Any]]:
    with admin_engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(
            f"SELECT id, aggregate, record_id, sequence, type, document, published_at "
            f"FROM {service}.event_outbox ORDER BY id"))]


def outbox_events(admin_engine, service: str) -> list[dict[str, Any]]:
    return [json.loads(row["document"]) for row in outbox_rows(admin_engine, service)]
