"""Quarantined batches: stored with their validation result so nothing is lost and a person can
inspect them and, once satisfied, train them exactly once."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.settings import streamfit_home


class QuarantineError(RuntimeError):
    """A quarantine operation was refused; the message says why."""


@dataclass(frozen=True)
class QuarantinedBatch:
    id: str
    meta: dict[str, Any]
    batch: MicroBatch | None = None


class QuarantineStore:
    """`<root>/<stream>/<id>/{batch.npz, meta.json}`; meta.json says whether it was replayed."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else streamfit_home() / "quarantine"

    def save(self, batch: MicroBatch, validation: dict[str, Any], run_id: str) -> str:
        """Keep the batch's rows; the id of the entry that holds them.

        A batch already held and not replayed, with the same rows (a run that died between saving it
        and recording the skip, then retried) is not saved twice: two entries of the same rows could
        both be replayed, and the rows learned twice. The same offsets with other rows (read again
        under a changed spec) are a new entry.
        """
        # The rows it holds: a batch's tail is not quarantined with it (the next batch learns it).
        held = {str(p): [s, e] for p, (s, e) in sorted(batch.learned_ranges.items())}
        digest = _rows_sha256(batch)
        for entry in self.list(batch.stream):
            same = entry.meta["ranges"] == held and entry.meta.get("rows_sha256") == digest
            if same and not entry.meta.get("replayed_by"):
                return entry.id
        ranges = "_".join(f"p{p}-{s}-{e}" for p, (s, e) in sorted(batch.learned_ranges.items()))
        qid = f"q-{ranges}-{uuid.uuid4().hex[:6]}"
        directory = self.root / batch.stream
        tmp = directory / f".tmp-{qid}"
        tmp.mkdir(parents=True)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, X=batch.X, y=batch.y, partitions=batch.partitions, offsets=batch.offsets, ids=np.array(batch.ids)
        )
        (tmp / "batch.npz").write_bytes(buffer.getvalue())
        meta = {
            "id": qid,
            "stream": batch.stream,
            "ranges": {str(p): [s, e] for p, (s, e) in sorted(batch.learned_ranges.items())},
            "rows": batch.rows,
            "dlq": batch.dlq,
            "validation": validation,
            "rows_sha256": digest,
            "run_id": run_id,
            "quarantined_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "replayed_by": None,
            "filling": list(batch.filling),  # derived windows still filling (features.warmup): kept for its replay
            # the raw values of unseen categories: the stored rows hold only codes, and a replay's check quotes these
            "unseen_examples": batch.unseen_examples,
        }
        (tmp / "meta.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        os.rename(tmp, directory / qid)
        return qid

    def list(self, stream: str) -> list[QuarantinedBatch]:
        directory = self.root / stream
        if not directory.is_dir():
            return []
        entries = [p for p in directory.iterdir() if p.name.startswith("q-")]
        found = [QuarantinedBatch(p.name, orjson.loads((p / "meta.json").read_bytes())) for p in entries]
        return sorted(found, key=lambda q: q.meta["quarantined_at"])

    def get(self, stream: str, qid: str) -> QuarantinedBatch:
        path = self.root / stream / qid
        if not (path / "meta.json").exists():
            raise QuarantineError(f"{stream} has no quarantined batch {qid!r}; `streamfit quarantine list {stream}`")
        meta = orjson.loads((path / "meta.json").read_bytes())
        data = np.load(io.BytesIO((path / "batch.npz").read_bytes()))
        batch = MicroBatch(
            stream=stream,
            ranges={int(p): (int(s), int(e)) for p, (s, e) in meta["ranges"].items()},
            X=data["X"],
            y=data["y"],
            ids=[str(i) for i in data["ids"]],
            partitions=data["partitions"],
            offsets=data["offsets"],
            filling=tuple(meta.get("filling", ())),
            unseen_examples=meta.get("unseen_examples", []),
        )
        return QuarantinedBatch(qid, meta, batch)

    def mark_replayed(self, stream: str, qid: str, version: str, by: str) -> None:
        path = self.root / stream / qid / "meta.json"
        meta = orjson.loads(path.read_bytes())
        meta["replayed_by"] = {"version": version, "by": by, "at": datetime.now(UTC).isoformat(timespec="milliseconds")}
        tmp = path.with_name(f".meta.{uuid.uuid4().hex}")
        tmp.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)


def _rows_sha256(batch: MicroBatch) -> str:
    """What identifies the rows a batch holds: their values, labels, ids and positions."""
    digest = hashlib.sha256()
    for array in (batch.X, batch.y, batch.partitions, batch.offsets):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("\n".join(batch.ids).encode())
    return digest.hexdigest()
