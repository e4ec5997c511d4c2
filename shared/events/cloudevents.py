"""CloudEvents 1.0 in structured JSON mode (SPEC §9.2): the one shape every event has, and its topic."""
from __future__ import annotations

from datetime import datetime
from typing import Any

SPECVERSION = "1.0"
TYPE_PREFIX = "de.curavani."
CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"  # the Kafka header of structured mode


def event_type(aggregate: str, kind: str) -> str:
    return f"{TYPE_PREFIX}{aggregate}.{kind}"


def topic_for(prefix: str, aggregate: str) -> str:
    """The Kafka topic of an aggregate's events (`EVENTS_TOPIC_PREFIX` + aggregate): the relay
    publishes there, `events tail` reads there."""
    return f"{prefix}{aggregate}"


def cloud_event(*, event_id: str, service: str, aggregate: str, kind: str, subject: str, sequence: int,
                origin: str, actor: str, time: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """`sequence` is the record's version (an integer, so consumers compare it as a number)."""
    return {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": f"/{service}",
        "type": event_type(aggregate, kind),
        "subject": subject,
        "time": time.isoformat(),
        "datacontenttype": "application/json",
        "sequence": sequence,
        "origin": origin,
        "actor": actor,
        "data": data,
    }
