"""The hash chain: each entry's canonical JSON, its hash, and the check that names the first entry that no longer fits.

Each entry stores its canonical JSON (every field, its own `seq` included) and
hash = SHA-256(prev_hash + canonical JSON). Editing, removing or reordering a row breaks the
chain, and `check_chain` names the first entry that no longer fits. A hash chain held in the same
file proves nothing against someone who rewrites the whole chain; copy the head that `verify`
prints somewhere else to pin it. Secret-looking fields are dropped before anything is stored.

Pure: the log (log.py) only runs the SQL around these.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deployer.errors import AuditError
from deployer.journal import Event, utc_now

GENESIS = "0" * 64
COLUMNS = ("ts", "event", "app", "actor", "job", "outcome")
ROW_COLUMNS = ("seq", *COLUMNS, "entry", "prev_hash", "hash")

# Key names that may carry credentials or raw request data. Matched as substrings of the
# lowercased key, so `X-Hub-Signature-256`, `api_token` and `raw_headers` all go.
SECRET_KEY_PARTS = ("signature", "secret", "token", "password", "passwd", "authorization", "headers", "cookie")


# --- canonical form and hashing (pure) -----------------------------------------------------------


def canonical_json(value: Any) -> str:
    """One spelling per value, so the same record always hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def chain_hash(prev_hash: str, entry_json: str) -> str:
    return hashlib.sha256((prev_hash + entry_json).encode("utf-8")).hexdigest()


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def scrubbed(value: Any) -> Any:
    """Drop secret-looking keys at any depth and make every value plain JSON."""
    if isinstance(value, Mapping):
        return {str(k): scrubbed(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [scrubbed(v) for v in items]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def format_ts(moment: datetime) -> str:
    """The journal's spelling (`2024-05-01T12:00:00.123Z`): stored times compare as plain strings."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_for(event: Event, *, now: str | None = None) -> dict[str, Any]:
    """The fields an event is stored with: scrubbed, without `_durable`, with a normalised `ts`."""
    record = scrubbed({k: v for k, v in event.items() if k not in ("_durable", "_required", "seq") and v is not None})
    if not record.get("event"):
        raise AuditError("an audit event needs an `event` name", field="event")
    record["event"] = str(record["event"])
    given = record.get("ts")
    try:
        record["ts"] = format_ts(datetime.fromisoformat(str(given))) if given else (now or utc_now())
    except ValueError:
        record["ts"], record["ts_given"] = now or utc_now(), str(given)
    return record


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else canonical_json(value)


def columns_for(record: Mapping[str, Any]) -> tuple[str | None, ...]:
    """The indexed columns, derived from the hashed record (so verify can recompute them).

    A delivery or manual request has a `verdict` rather than an `outcome`: it fills the outcome
    column, so `--outcome rejected` finds what was refused.
    """
    return tuple(
        _text(record.get(c) if c != "outcome" else record.get("outcome", record.get("verdict"))) for c in COLUMNS
    )


def row_for(seq: int, prev_hash: str, record: Mapping[str, Any]) -> tuple:
    """The row to insert for `record` as entry `seq`, chained to `prev_hash`."""
    entry_json = canonical_json({**record, "seq": seq})
    return (seq, *columns_for(record), entry_json, prev_hash, chain_hash(prev_hash, entry_json))


# --- checking the chain (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: ok, or the first entry that no longer fits and why."""

    ok: bool
    checked: int
    start_seq: int  # the checkpoint the check started from (0: the log was never pruned)
    head_seq: int
    head_hash: str
    first_bad: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "checkpoint_seq": self.start_seq,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad": self.first_bad,
            "problem": self.problem,
        }


def check_chain(
    rows: Iterable[Sequence[Any]], *, start: tuple[int, str] = (0, GENESIS), head: tuple[int, str] | None = None
) -> Verdict:
    """Walk rows (ROW_COLUMNS, in seq order) from a checkpoint; name the first entry that does not fit.

    `head` is the (seq, hash) the log last appended; it reveals entries removed from the end.
    """
    start_seq, prev = start
    expected = start_seq + 1
    checked = 0

    def bad(seq: int, problem: str) -> Verdict:
        head_seq, head_hash = head or (expected - 1, prev)
        return Verdict(False, checked, start_seq, head_seq, head_hash, seq, problem)

    for row in rows:
        seq, *columns, entry_json, prev_hash, digest = row
        if seq < expected:
            return bad(
                seq,
                f"entry {seq} lies at or before the checkpoint (entry {start_seq}): "
                f"it was inserted, or the checkpoint was edited",
            )
        if seq > expected:
            missing = f"entry {expected}" if seq == expected + 1 else f"entries {expected}-{seq - 1}"
            return bad(expected, f"{missing} removed: the chain jumps from entry {expected - 1} to entry {seq}")
        if chain_hash(prev_hash, entry_json) != digest:
            return bad(seq, f"entry {seq} was edited: its content no longer matches its hash")
        try:
            record = json.loads(entry_json)
        except ValueError:
            return bad(seq, f"entry {seq} was edited: its content is not JSON")
        if not isinstance(record, dict) or record.get("seq") != seq:
            held = record.get("seq") if isinstance(record, dict) else None
            return bad(seq, f"entry {seq} is out of order: its row holds entry {held} (rows were reordered)")
        if prev_hash != prev:
            if seq == start_seq + 1 and start_seq:
                return bad(
                    seq,
                    f"entry {seq} does not follow the checkpoint at entry {start_seq}: it or the checkpoint was edited",
                )
            return bad(seq - 1, f"entry {seq - 1} was rewritten with a new hash: entry {seq} no longer links to it")
        for name, column, derived in zip(COLUMNS, columns, columns_for(record)):
            if column != derived:
                return bad(
                    seq,
                    f"entry {seq} was edited: its {name} column says {column!r}, its hashed content says {derived!r}",
                )
        prev = digest
        expected += 1
        checked += 1

    last = expected - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > last:
            missing = f"entry {expected}" if head_seq == expected else f"entries {expected}-{head_seq}"
            return bad(expected, f"{missing} removed from the end: the log's head is entry {head_seq}")
        if head_seq < last:
            return bad(head_seq + 1, f"entry {head_seq + 1} was added outside the log: the head is entry {head_seq}")
        if head_hash != prev:
            return bad(last, f"entry {last} was rewritten with a new hash: the head records another hash")
    return Verdict(True, checked, start_seq, last, prev)


# --- entries as read back (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    seq: int
    fields: dict[str, Any]  # everything recorded, seq included
    prev_hash: str
    hash: str

    @property
    def event(self) -> str:
        return self.fields["event"]

    @property
    def ts(self) -> str:
        return self.fields["ts"]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def as_dict(self) -> dict[str, Any]:
        return {**self.fields, "seq": self.seq, "prev_hash": self.prev_hash, "hash": self.hash}


def entry_from_row(row: Sequence[Any]) -> Entry:
    seq, *_, entry_json, prev_hash, digest = row
    return Entry(seq, json.loads(entry_json), prev_hash, digest)
