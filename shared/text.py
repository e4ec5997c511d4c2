"""How people's names and e-mail addresses compare: one folding rule for every identity check
(the patient duplicate rule, therapists' practice identity, appointment participants)."""
from __future__ import annotations

import unicodedata


def fold(value: str) -> str:
    """Trimmed, case-folded, NFC: how the duplicate rule compares names and e-mail addresses."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value.strip()).casefold())
