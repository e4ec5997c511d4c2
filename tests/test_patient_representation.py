"""A patient's version data is built directly (`services.representation`), not by marshmallow's
dump (issue 14): it must be exactly what `PatientSchema` dumps, whatever the patient holds."""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from patient_service.models import Patient
from patient_service.schemas import PatientSchema
from patient_service.services import representation

NOW = datetime(2026, 11, 29, 22, 30, 5, 123456, tzinfo=UTC)
FULL = {"anrede": "Frau", "geschlecht": "weiblich", "vorname": "Ayşe", "nachname": "Yılmaz",
        "geburtsdatum": date(1987, 11, 30), "email": "ayse@example.org", "telefon": "+49 241 123456",
        "strasse": "Pontstraße 1", "plz": "52062", "ort": "Aachen", "krankenkasse": "AOK",
        "symptome": ["Schlafstörungen", "Niedergeschlagenheit"], "erfahrung_mit_psychotherapie": False,
        "offen_fuer_gruppentherapie": True, "bevorzugtes_therapieverfahren": ["Verhaltenstherapie"],
        "bevorzugtes_therapeutengeschlecht": "egal",
        # days out of the schema's order, and not all of them: the dump lists present days in its order
        "zeitliche_verfuegbarkeit": {"mittwoch": ["14:00-18:00"], "montag": ["09:00-12:00", "13:00-14:00"]},
        "raeumliche_verfuegbarkeit": {"max_km": 15}, "verkehrsmittel": "ÖPNV"}
MINIMAL = {"vorname": "Max", "nachname": "Mustermann", "geburtsdatum": date(1990, 5, 17),
           "email": "max@example.de"}
EMPTY_GROUPS = {**MINIMAL, "symptome": [], "zeitliche_verfuegbarkeit": {}, "bevorzugtes_therapieverfahren": []}


@pytest.mark.parametrize("values", [FULL, MINIMAL, EMPTY_GROUPS], ids=["full", "minimal", "empty-groups"])
def test_representation_is_what_the_schema_dumps(values):
    patient = Patient(id=42, version=3, created_at=NOW, updated_at=NOW, **values)

    assert representation(patient) == PatientSchema().dump(patient)
    assert list(representation(patient)) == list(PatientSchema().dump(patient))  # the same members, in order
