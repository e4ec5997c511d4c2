"""Helpers for the operations tests: sample files in a folder, and Prometheus text parsed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import ROOT, SAMPLES
from helpers import wait_until  # noqa: F401  (re-exported for the tests here)
from prometheus_client.parser import text_string_to_metric_families

THERAPIST_SAMPLE = SAMPLES / "therapist-folder" / "52074.json"
PATIENT_SAMPLES = sorted((SAMPLES / "patient-bucket").glob("*.json"))


def copy_samples(samples: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(sample, folder / sample.name)) for sample in samples]


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: dict, name: str, **labels: str) -> float:
    """The value of one series (0 when it does not exist yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: dict, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


def image_command() -> list[str]:
    """The start command of the Docker image: the Dockerfile's CMD, in exec form."""
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    commands = [json.loads(line.removeprefix("CMD")) for line in lines if line.startswith("CMD ")]
    assert len(commands) == 1, "the Dockerfile has one CMD, in exec form"
    return commands[0]
