"""Fixtures for the event tests: a real Kafka-protocol broker (Tansu) on loopback, a consumer
that reads what the relay published, and service apps whose relay publishes to that broker.

This folder is a package (`__init__.py`) so this conftest is imported as `events.conftest`
and does not replace the top-level `conftest` module.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from helpers import free_port, wait_until

from shared.events.broker import EmbeddedBroker

from .support import EventReader


@pytest.fixture
def broker(tmp_path):
    server = EmbeddedBroker(free_port(), tmp_path / "broker.log").start()
    yield server
    server.stop()


@pytest.fixture
def topic_prefix() -> str:
    return f"test{uuid.uuid4().hex[:8]}."


@pytest.fixture
def event_settings(broker, topic_prefix) -> dict[str, Any]:
    return {"EVENTS_KAFKA_BOOTSTRAP": broker.bootstrap, "EVENTS_TOPIC_PREFIX": topic_prefix}


@pytest.fixture
def reader(broker, topic_prefix) -> EventReader:
    return EventReader(broker.bootstrap, topic_prefix)


@pytest.fixture
def start_relay() -> Callable[..., Any]:
    """`start_relay(app)` starts the app's relay (as `create_app` does where importing is on) and
    waits until it leads; every relay started here is stopped at teardown."""
    started = []

    def start(app, *, wait_for_lead: bool = True):
        relay = app.extensions["relay"]
        relay.start()
        started.append(relay)
        if wait_for_lead:
            wait_until(lambda: relay.is_leader, what="the relay to take its lock")
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def patient_events_app(make_app, event_settings):
    return make_app("patient", **event_settings)


@pytest.fixture
def therapist_events_app(make_app, event_settings):
    return make_app("therapist", **event_settings)
