"""`flask --app <service> events tail`: print the events arriving on the topics, one JSON per line."""
from __future__ import annotations

import time
import uuid

import click
from flask import current_app
from flask.cli import AppGroup

from shared.events.cloudevents import topic_for
from shared.events.outbox import AGGREGATES

events_cli = AppGroup("events", help="Domain events: watch what the relay publishes.")


@events_cli.command("tail")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest event the broker still has.")
@click.option("--count", type=int, default=0, help="Stop after this many events (0: run until Ctrl-C).")
@click.option("--timeout", type=float, default=0, help="Stop after this many seconds (0: no limit).")
def tail(from_beginning: bool, count: int, timeout: float) -> None:
    """Print every event on the service's topics as it arrives (a consumer of its own, no commits)."""
    from confluent_kafka import Consumer

    settings = current_app.extensions["settings"]
    if not settings.EVENTS_KAFKA_BOOTSTRAP:
        raise click.ClickException("EVENTS_KAFKA_BOOTSTRAP is unset: there is no broker to watch")
    consumer = Consumer({"bootstrap.servers": settings.EVENTS_KAFKA_BOOTSTRAP,
                         "group.id": f"events-tail-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest" if from_beginning else "latest",
                         "session.timeout.ms": 6000, "topic.metadata.refresh.interval.ms": 2000})
    consumer.subscribe([topic_for(settings.EVENTS_TOPIC_PREFIX, aggregate) for aggregate in AGGREGATES])
    deadline = time.monotonic() + timeout if timeout else None
    seen = 0
    try:
        while (not count or seen < count) and (deadline is None or time.monotonic() < deadline):
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            click.echo((message.value() or b"").decode())
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
