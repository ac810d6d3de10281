"""Moving a journal to a new machine: export and import, in the spirit of EIP-3076.

A journal is what stops an appliance from signing two checkpoints on one coin, so it
never moves by accident: `appliance init` binds a journal's identity into the config,
and the appliance refuses to start without that very file. Moving it is a deliberate
act: export the old appliance's journal to one JSON file, `appliance init` the new
one, import. The file carries every checkpoint the old appliance signed or adopted
(what the per-coin rule is decided from) and a watermark, the highest (epoch, round)
signed. Import merges (a union: it can only forbid more), never replaces, and refuses
a file whose history conflicts with what the journal already holds; the watermark
never moves back.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from appliance.journal import Candidate, Journal, JournalError, JournalRefusal
from appliance.policy import trusted_records
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.template import Outpoint

FORMAT = "bft-anchor.journal-interchange"
VERSION = 1
FIELDS = ("txid", "epoch", "round", "payload", "input", "input_value", "coin_value",
          "dest_epoch", "fee", "handover")


class InterchangeError(ValueError):
    """An interchange file that cannot be read as one; the message names why."""


class InterchangeConflict(InterchangeError):
    """A well-formed export whose history the journal must refuse (another genesis, or a
    checkpoint that conflicts with one the journal holds)."""


def export_journal(journal: Journal) -> dict[str, Any]:
    state = journal.state()
    g = journal.genesis
    highest = max(((e.epoch, e.round) for e in state.signed), default=None)
    mark = _watermark(journal)
    if highest is not None and (mark is None or highest > mark):
        mark = highest
    return {
        "format": FORMAT,
        "version": VERSION,
        "journal_id": journal.get_meta("journal_id"),
        "genesis": {"outpoint": str(g.outpoint), "value": g.value, "epoch": g.epoch},
        "watermark": None if mark is None else {"epoch": mark[0], "round": mark[1]},
        "checkpoints": [
            {**{f: _plain(getattr(e, f)) for f in FIELDS}, "kind": e.kind,
             "proven": state.is_proven(e)}
            for e in state.entries
        ],
        "records": [r.to_json() for r in journal.records()],
        # Payloads released on a coin (docs/protocol.md, "Release"): without them the
        # own signatures on two payloads of one coin would be refused on import.
        "released": journal.released_rows(),
    }


def import_journal(
    journal: Journal, data: Any, epoch0: EpochRecord | None = None
) -> dict[str, int]:
    """Merge an export into this journal in one transaction; raise InterchangeError.

    The export's epoch records are trusted only as far as their certificates go back to
    a record this appliance holds (`epoch0`, the deployment's): a file is carried by
    hand between machines, and one uncertified record would let the appliance hand the
    coin over to whoever wrote it."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InterchangeError(f"not a journal interchange file (expected format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise InterchangeError(f"interchange version {data.get('version')!r}, expected "
                               f"{VERSION}")
    g = data.get("genesis")
    if not isinstance(g, dict) or g.get("outpoint") != str(journal.genesis.outpoint):
        found = g.get("outpoint") if isinstance(g, dict) else g
        raise InterchangeConflict(f"the export belongs to genesis {found}, this "
                               f"appliance's is {journal.genesis.outpoint}")
    try:
        if not isinstance(data.get("checkpoints") or [], list) or not isinstance(
                data.get("records") or [], list):
            raise ValueError("checkpoints and records must be lists")
        rows = [_candidate(c) for c in data.get("checkpoints") or []]
        released = _released(data.get("released") or [], rows)
        records = [EpochRecord.from_json(r) for r in data.get("records") or []]
        mark = data.get("watermark")
        mark_t = None if mark is None else (int(mark["epoch"]), int(mark["round"]))
    except (KeyError, TypeError, ValueError, AttributeError, CheckpointError) as exc:
        raise InterchangeError(f"the export is malformed: {exc!r}") from exc
    held = {r.epoch: r for r in journal.records()}
    if epoch0 is not None:
        held.setdefault(epoch0.epoch, epoch0)
    for r in records:
        if r.epoch in held and held[r.epoch].body_json() != r.body_json():
            raise InterchangeConflict(f"the export's epoch {r.epoch} record differs from the "
                                   "one this appliance holds")
    _, problems = trusted_records(held, records)
    if problems:
        raise InterchangeConflict(f"the export's epoch records do not verify back to epoch "
                                  f"{min(held, default=0)}: {'; '.join(problems)}")
    try:
        added = journal.import_rows(rows, records, mark_t, released)
    except JournalRefusal as exc:
        raise InterchangeConflict(f"the export conflicts with this journal: {exc}") from exc
    except sqlite3.Error as exc:
        raise JournalError(f"journal {journal.path}: {exc}") from exc
    return {"checkpoints": len(rows), "added": added}


def _watermark(journal: Journal) -> tuple[int, int] | None:
    raw = journal.get_meta("watermark")
    if raw is None:
        return None
    e, r = json.loads(raw)
    return int(e), int(r)


def _candidate(c: dict[str, Any]) -> tuple[Candidate, str, bool]:
    kind = c["kind"]
    if kind not in ("signed", "adopted"):
        raise ValueError(f"checkpoint kind {kind!r}")
    cand = Candidate(
        txid=str(c["txid"]), epoch=int(c["epoch"]), round=int(c["round"]),
        payload=str(c["payload"]), input=Outpoint.parse(str(c["input"])),
        input_value=int(c["input_value"]), coin_value=int(c["coin_value"]),
        dest_epoch=int(c["dest_epoch"]), fee=int(c["fee"]), handover=bool(c["handover"]),
    )
    return cand, kind, bool(c.get("proven"))


def _released(
    items: Any, rows: list[tuple[Candidate, str, bool]]
) -> list[tuple[str, str, str]]:
    """The export's releases: (input, payload, evidence JSON). Import may only forbid
    more, so a release is taken only where it was used: the file holds an own signature
    on that coin with another payload, which the release allowed."""
    if not isinstance(items, list):
        raise ValueError("released must be a list")
    out = []
    for r in items:
        op, payload, evidence = str(Outpoint.parse(str(r["input"]))), str(r["payload"]), r[
            "evidence"]
        used = any(kind == "signed" and str(c.input) == op and c.payload != payload
                   for c, kind, _ in rows)
        if not used:
            raise ValueError(f"release of a payload on {op} that no own signature used")
        out.append((op, payload, json.dumps(evidence, sort_keys=True)))
    return out


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Outpoint) else value


def load_file(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise InterchangeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to read
        raise InterchangeError(f"{path} is not JSON: {exc}") from exc
