"""Send appointment participants to the therapist service in batches, as the upstream job does
(SPEC §6.6), and generate realistic test data. Standard library only: copy it and run it.

    python scripts/send_participants.py send participants.json --url http://localhost:5002 \\
        --token "$TOKEN" --batch-size 200
    python scripts/send_participants.py generate --count 1000 --mid-ratio 0.7 > participants.json

The token needs the scope `participants:write` and nothing else (least privilege, SPEC §11):
`flask --app therapist_service auth add-client participants-upstream --scope participants:write`.

`send` reads a JSON file (a list of participants, or `{"batchId", "source", "participants"}`),
posts it in batches of `--batch-size`, each with an `Idempotency-Key` made from the batch's
content (so running the same file again after a crash replays what was already applied instead of
applying it twice), retries a batch on a network error, a timeout, 409 (still running) or a 5xx,
prints one line per batch and a summary. Error lines name item positions in the file, pointers
and reasons; never names or addresses. What went wrong decides what to do, and the exit status:

- 0: every batch was applied (or replayed);
- 1: a batch was **refused — fix the data** (400: an item failed validation, the lines say which
  and why; nothing of that batch was written) or the credential (401, 403); the other batches
  were still sent;
- 75 (`EX_TEMPFAIL`): the service **failed or did not answer — try again** (a 5xx, 409 still
  running, a timeout or a network error, after the retries). Sending stops there; running the
  same file again is safe: the batches applied already are replayed, not applied twice.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

PATH = "/api/appointments/participants"
RETRY_STATUSES = {409, 500, 502, 503, 504}
REFUSED_EXIT, TRY_AGAIN_EXIT = 1, 75  # 75: sysexits' EX_TEMPFAIL, "try again later"
COUNTED = ("created", "updated", "unchanged")

FIRST_NAMES = ("Anna", "Lukas", "Marie", "Jonas", "Sophie", "Leon", "Emma", "Paul", "Mia", "Felix", "Lea",
               "Jürgen", "Zoë", "Ömer", "Chloé", "John", "Alice", "Fatma", "Piotr", "Ingrid")
LAST_NAMES = ("Müller", "Schmidt", "Schneider", "Fischer", "Weiß", "Meyer", "Wagner", "Becker", "Schulz",
              "Hoffmann", "Doe", "Smith", "Yılmaz", "Nowak", "Kowalski", "Jansen", "de Vries", "Okafor")
STATUSES = ("Registered", "Attended", "Cancelled", "NoShow")
MID_KEYS = ("mid", "MID", "mId")  # the upstream spells it all three ways


# ---- generating ---------------------------------------------------------------------------------

def generate(count: int, *, mid_ratio: float, seed: int = 0, events: int = 20) -> dict[str, Any]:
    """`count` distinct participants; `mid_ratio` of them already carry their MID (and an id made
    from it), the rest a temporary id. Names come in varied case and spacing, as upstream sends them."""
    rng = random.Random(seed)
    participants = []
    for number in range(count):
        serial = seed * 1_000_000 + number  # another seed, other people
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        with_mid = rng.random() < mid_ratio
        item: dict[str, Any] = {
            "participantId": f"mid-{serial}" if with_mid else f"temp-{serial:07d}",
            "firstName": rng.choice((first, first.upper(), f" {first} ")),
            "lastName": rng.choice((last, last.lower(), f"{last} ")),
            "email": f"{_ascii(first)}.{_ascii(last)}.{serial}@example.org",
            "phone": f"+49 241 {rng.randrange(100000, 999999)}",
            "username": f"{_ascii(first)[:3]}{_ascii(last)[:3]}{serial}",
            "attendanceStatus": rng.choice(STATUSES),
            "metadata": {"eventId": f"event-{rng.randrange(events):04d}"},
        }
        item[rng.choice(MID_KEYS)] = f"MID-{serial}" if with_mid else None
        participants.append(item)
    return {"batchId": f"generated-{seed}", "source": "send_participants.py generate", "participants": participants}


def _ascii(name: str) -> str:
    """`Yılmaz` → `ylmaz`, `de Vries` → `devries`: a plausible local part of an address."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().replace(" ", "").lower()


# ---- sending ------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


Post = Callable[[str, bytes, dict[str, str]], Reply]


def http_post(base_url: str, timeout: float = 60.0) -> Post:
    """POST with urllib; a status ≥ 400 is a reply too, not an exception."""
    def post(path: str, data: bytes, headers: dict[str, str]) -> Reply:
        request = urllib.request.Request(base_url.rstrip("/") + path, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Reply(response.status, _json(response.read()), dict(response.headers))
        except urllib.error.HTTPError as error:
            return Reply(error.code, _json(error.read()), dict(error.headers))
    return post


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def batches(document: Any, size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset in the file, request body) for each batch of `size`."""
    if isinstance(document, list):
        document = {"participants": document}
    envelope = {key: document[key] for key in ("batchId", "source") if document.get(key) is not None}
    participants = document["participants"]
    for offset in range(0, len(participants), size):
        yield offset, {**envelope, "participants": participants[offset:offset + size]}


def idempotency_key(body: dict[str, Any]) -> str:
    """The same batch, the same key: a re-run replays instead of applying twice."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"participants-{digest[:40]}"


@dataclass
class Summary:
    batches: int = 0
    refused: int = 0
    failed: int = 0  # not applied for a reason that passes: a 5xx or no answer, after the retries
    replayed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))


def send(document: Any, post: Post, *, token: str, batch_size: int, attempts: int = 4, backoff: float = 1.0,
         out: TextIO | None = None) -> Summary:
    out = out or sys.stdout
    summary = Summary()
    chunks = list(batches(document, batch_size))
    for number, (offset, body) in enumerate(chunks, 1):
        data = json.dumps(body, ensure_ascii=False).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "Prefer": "return=representation", "Idempotency-Key": idempotency_key(body)}
        label = f"batch {number}/{len(chunks)} (items {offset + 1}-{offset + len(body['participants'])})"
        try:
            reply = _post_with_retries(post, data, headers, attempts=attempts, backoff=backoff)
        except (urllib.error.URLError, OSError) as error:  # a timeout is an OSError too
            reply = Reply(0, None, {})
            reason = f"no answer ({type(error).__name__})"
        else:
            reason = f"{reply.status} {(reply.body or {}).get('title', '') if isinstance(reply.body, dict) else ''}"
        summary.batches += 1
        if reply.status == 0 or reply.status in RETRY_STATUSES:
            summary.failed += 1
            not_sent = len(chunks) - number
            print(f"{label}: {reason.strip()} after {attempts} attempts: try again later (the service failed; "
                  f"running the same file again replays what was applied)"
                  + (f"; the {not_sent} batches after it were not sent" if not_sent else ""), file=out)
            break
        replayed = " replayed" if reply.headers.get("Idempotent-Replayed") == "true" else ""
        summary.replayed += bool(replayed)
        if reply.status in (200, 201):
            counts = {name: (reply.body or {}).get("summary", {}).get(name, 0) for name in COUNTED}
            for name, value in counts.items():
                summary.counts[name] += value
            print(f"{label}: {reply.status}{replayed} " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=out)
            continue
        summary.refused += 1
        problem = reply.body if isinstance(reply.body, dict) else {}
        what_to_do = ("check the token (it needs participants:write)" if reply.status in (401, 403)
                      else "fix the data")
        print(f"{label}: {reply.status}{replayed} {problem.get('title', 'refused')}: {problem.get('detail', '')}"
              f" — {what_to_do}", file=out)
        for error in problem.get("errors") or []:
            where = error.get("pointer") or error.get("parameter", "")
            if "index" in error:  # /participants/<i>/<field> → the item's position in the file, and the field
                field_pointer = where.split("/", 3)[3] if where.count("/") >= 3 else ""
                where = f"item {offset + error['index'] + 1}" + (f" /{field_pointer}" if field_pointer else "")
            print(f"    {where}: {error.get('detail', '')} ({error.get('type', 'validation-error')})", file=out)
    total = len(chunks)
    accepted = summary.batches - summary.refused - summary.failed
    print(f"{total} batches: {accepted} accepted ({summary.replayed} replayed), {summary.refused} refused"
          + (f", {summary.failed} failed (try again), {total - summary.batches} not sent" if summary.failed else "")
          + "; " + ", ".join(f"{v} {k}" for k, v in summary.counts.items()), file=out)
    return summary


def _post_with_retries(post: Post, data: bytes, headers: dict[str, str], *, attempts: int, backoff: float) -> Reply:
    for attempt in range(1, attempts + 1):
        try:
            reply = post(PATH, data, headers)
        except (urllib.error.URLError, OSError):
            if attempt == attempts:
                raise
        else:
            if reply.status not in RETRY_STATUSES or attempt == attempts:
                return reply
        time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


# ---- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None, post: Post | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sending = commands.add_parser("send", help="post a JSON file of participants in batches")
    sending.add_argument("file", type=argparse.FileType("r", encoding="utf-8"))
    sending.add_argument("--url", default="http://localhost:5002", help="the therapist service")
    sending.add_argument("--token", required=True,
                         help="a service client's token holding only participants:write (SPEC §11), e.g. from "
                              "`flask --app therapist_service auth add-client participants-upstream "
                              "--scope participants:write`")
    sending.add_argument("--batch-size", type=int, default=200)
    generating = commands.add_parser("generate", help="print generated participants as JSON")
    generating.add_argument("--count", type=int, default=1000)
    generating.add_argument("--mid-ratio", type=float, default=0.7, help="share sent with their MID (0-1)")
    generating.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "generate":
        if not 0 <= args.mid_ratio <= 1:
            parser.error("--mid-ratio must lie between 0 and 1")
        json.dump(generate(args.count, mid_ratio=args.mid_ratio, seed=args.seed), sys.stdout, ensure_ascii=False,
                  indent=1)
        print()
        return 0
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    with args.file:
        document = json.load(args.file)
    summary = send(document, post or http_post(args.url), token=args.token, batch_size=args.batch_size)
    return exit_status(summary)


def exit_status(summary: Summary) -> int:
    """1 when the data (or the token) must be fixed, 75 when trying again later will do, else 0."""
    if summary.refused:
        return REFUSED_EXIT
    return TRY_AGAIN_EXIT if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
