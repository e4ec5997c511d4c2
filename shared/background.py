"""The background components a process runs beside its requests (the importer; the event relay
plugs in the same way): one registry per app, read by `/health` and `/ready` (SPEC §6.4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from flask import Flask


class Problem(NamedTuple):
    """One finding of a check, as `/health` and `/ready` show it: which check, and what is wrong."""

    check: str
    detail: str


@dataclass
class ComponentReport:
    state: dict[str, Any]  # shown in `/ready` under the component's name
    warnings: list[Problem] = field(default_factory=list)  # problems on-call should see; never a 503


class BackgroundComponent(Protocol):
    """What `/health` and `/ready` ask of a background component."""

    name: str  # "importer", "relay": its key in the `/ready` body

    def death(self) -> Problem | None:
        """What has died, when the component was started in this process and no longer runs
        (the process should be restarted); None otherwise, also when it was never started here."""

    def report(self, *, database_ok: bool) -> ComponentReport:
        """Its state and warnings; `database_ok` says whether it may read its state from the database."""


def register_component(app: Flask, component: BackgroundComponent) -> None:
    """Add a component to the app's registry; `/health` and `/ready` pick it up from there."""
    app.extensions.setdefault("background_components", {})[component.name] = component


def components(app: Flask) -> list[BackgroundComponent]:
    return list(app.extensions.get("background_components", {}).values())
