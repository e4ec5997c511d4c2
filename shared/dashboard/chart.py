"""Imports per day by status as stacked bars: the geometry of an SVG drawn server-side.

The template turns these numbers into `<rect>`s; colours come from the stylesheet's status
classes, so the page needs no script and no inline style.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.imports.dashboard import DayCounts
from shared.imports.models import FAILED, PARTIAL, PENDING, PROCESSING, QUARANTINED, SUCCEEDED

# Bottom to top: the good news at the base, what needs a look stacked above it.
STACK_ORDER = (SUCCEEDED, PARTIAL, PROCESSING, PENDING, FAILED, QUARANTINED)


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    status: str
    count: int
    day: str


@dataclass(frozen=True)
class Tick:
    y: float
    value: int


@dataclass(frozen=True)
class DayLabel:
    x: float
    text: str
    total: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    segments: list[Segment]
    ticks: list[Tick]
    labels: list[DayLabel]
    statuses: tuple[str, ...]
    total: int


def nice_step(maximum: int, max_ticks: int = 5) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50… that needs at most `max_ticks` steps to reach `maximum`."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if step * max_ticks >= maximum:
                return step
        magnitude *= 10


def stacked_bars(days: Iterable[DayCounts], *, width: int = 720, height: int = 230,
                 statuses: tuple[str, ...] = STACK_ORDER) -> Chart:
    days = list(days)
    left, right, top, bottom = 40.0, width - 8.0, 12.0, height - 34.0
    step = nice_step(max([day.total for day in days] + [1]))
    top_value = step * max(1, -(-max([day.total for day in days] + [1]) // step))
    scale = (bottom - top) / top_value
    slot = (right - left) / max(1, len(days))
    bar_width = slot * 0.64

    segments, labels = [], []
    for position, day in enumerate(days):
        x = left + position * slot + (slot - bar_width) / 2
        y = bottom
        for status in statuses:
            count = day.by_status.get(status, 0)
            if not count:
                continue
            bar_height = count * scale
            y -= bar_height
            segments.append(Segment(x=round(x, 1), y=round(y, 1), width=round(bar_width, 1),
                                    height=round(bar_height, 1), status=status, count=count,
                                    day=day.day.isoformat()))
        labels.append(DayLabel(x=round(x + bar_width / 2, 1), text=day.day.strftime("%d.%m"), total=day.total))
    ticks = [Tick(y=round(bottom - value * scale, 1), value=value) for value in range(0, top_value + 1, step)]
    return Chart(width=width, height=height, plot_left=left, plot_right=right, plot_top=top,
                 plot_bottom=bottom, segments=segments, ticks=ticks, labels=labels, statuses=statuses,
                 total=sum(day.total for day in days))
