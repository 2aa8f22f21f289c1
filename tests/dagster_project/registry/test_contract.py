"""The registry contract, run against both backends: the filesystem and a real MLflow server.

Everything Streamfit relies on, through the `ModelRegistry` interface only: register/versions/get,
loads that verify checksums, stale parents refused, the champion alias with its history and
rollback, decisions, halts and offset resets, and `register_batch` on top (offsets, resets, halts).
Only corrupting a stored file needs to know where a backend keeps it.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.preprocessing import StandardScaler

from dagster_project.registry.store import (
    ESTIMATOR_FILE,
    FEATURES_FILE,
    ONNX_FILE,
    ChecksumMismatch,
    FilesystemRegistry,
    ModelRegistry,
    RegistryError,
    StaleParent,
    StaleReset,
    Version,
    alias_changes,
    carried_state,
    expected_offsets,
    last_promotion,
    without_state,
)
from dagster_project.registry.versioning import already_registered, register_batch
from tests.conftest import synthetic_spec
from tests.helpers import hand_batch


def fitted_scaler(seed: int) -> StandardScaler:
    return StandardScaler().fit(np.random.default_rng(seed).normal(size=(20, 3)))


@functools.cache
def scaler_onnx(seed: int) -> bytes:
    """A real ONNX model (MLflow's onnx flavor parses it), different per seed."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(fitted_scaler(seed), initial_types=[("input", FloatTensorType([None, 3]))])
    return model.SerializeToString()


def meta(learned: dict[int, int], **extra) -> dict:
    batch = {str(p): [max(0, o - 10), o] for p, o in learned.items()}
    profile = {"features": {"x0": {"count": 10, "sample": [0.1, 0.2, 0.3]}}, "label": {"classes": {"0": 4, "1": 6}}}
    return {
        "offsets": {"topic": "t.events", "batch": batch, "learned": {str(p): o for p, o in learned.items()}},
        "metrics": {"accuracy": 0.75, "rows": 10},
        "rows": {"read": 10, "valid": 10, "trained": 10, "dlq": 0},
        "rows_learned_total": sum(learned.values()),
        "profile": profile,
        **extra,
    }


@dataclass
class Backend:
    """A registry under test, and how to damage one of its stored files."""

    name: str
    registry: ModelRegistry
    server: object | None = None

    def stored_file(self, stream: str, version: str, file_name: str) -> Path:
        if isinstance(self.registry, FilesystemRegistry):
            return self.registry.root / stream / version / file_name
        from dagster_project.registry.mlflow_store import MODEL_ARTIFACTS_TAG, RUN_ARTIFACTS_TAG

        entry = self.registry._entry(stream, version)
        uri = entry.tags[MODEL_ARTIFACTS_TAG if file_name == ONNX_FILE else RUN_ARTIFACTS_TAG]
        return self.server.artifacts / uri.removeprefix("mlflow-artifacts:/") / file_name

    def delete_version(self, stream: str, version: str) -> None:
        """What an operator cleaning up does: the version's directory, or its MLflow model version (and its aliases)."""
        if isinstance(self.registry, FilesystemRegistry):
            shutil.rmtree(self.registry.root / stream / version)
        else:
            self.registry.client.delete_model_version(stream, str(self.registry._entry(stream, version).number))

    def break_alias(self, stream: str) -> None:
        """An alias that names nothing Streamfit committed: a damaged alias file, or an MLflow alias
        moved by hand onto a model version created outside Streamfit."""
        if isinstance(self.registry, FilesystemRegistry):
            (self.registry.root / stream / "champion").write_text("{garb")
            return
        from dagster_project.registry.mlflow_store import CHAMPION_ALIAS

        client, source = self.registry.client, self.registry._entry(stream, self.registry.champion(stream)).mv
        raw = client.create_model_version(
            stream, source.source, run_id=source.run_id, model_id=source.source.removeprefix("models:/")
        )
        client.set_registered_model_alias(stream, CHAMPION_ALIAS, raw.version)

    @contextlib.contextmanager
    def history_writes_failing(self, stream: str) -> Iterator[None]:
        """Champion-history writes fail inside: an unwritable file, or MLflow going away at that call."""
        if isinstance(self.registry, FilesystemRegistry):
            history = self.registry.root / stream / "champion_history.jsonl"
            kept = history.read_bytes() if history.exists() else None
            history.unlink(missing_ok=True)
            history.mkdir()  # unwritable as a file, whoever runs the test (root ignores permission bits)
            try:
                yield
            finally:
                history.rmdir()
                if kept is not None:
                    history.write_bytes(kept)
            return
        import requests

        from dagster_project.registry.mlflow_store import HISTORY

        real_append = self.registry._append

        def append(stream: str, kind: str, record: dict, key: str | None = None) -> None:
            if kind == HISTORY:
                raise requests.exceptions.ConnectionError("injected: MLflow went away")
            real_append(stream, kind, record, key)

        self.registry._append = append
        try:
            yield
        finally:
            del self.registry._append


@pytest.fixture
def registry(backend: Backend) -> ModelRegistry:
    return backend.registry


@pytest.fixture
def stream() -> str:
    return f"c{uuid.uuid4().hex[:10]}"  # the MLflow server is shared by the session


def register(registry: ModelRegistry, stream: str, parent: str | None, learned: dict[int, int], seed: int = 0):
    return registry.register(stream, parent, scaler_onnx(seed), fitted_scaler(seed), meta(learned, seed=seed))


def test_empty_registry(registry: ModelRegistry, stream: str) -> None:
    assert registry.versions(stream) == []
    assert registry.scan(stream) == ([], [])
    assert registry.version_names(stream) == []
    assert registry.head(stream) is None
    assert registry.champion(stream) is None
    assert registry.champion_history(stream) == []
    assert registry.decisions(stream) == []
    assert registry.halt(stream) is None
    assert registry.pending_offset_reset(stream) is None
    assert expected_offsets(registry, stream) == (None, {}, None)


def test_versions_chain_parents_offsets_and_files(registry: ModelRegistry, stream: str) -> None:
    v1 = register(registry, stream, None, {0: 10, 1: 5}, seed=1)
    v2 = register(registry, stream, "v1", {0: 30, 1: 5}, seed=2)
    assert (v1.name, v1.parent, v1.number) == ("v1", None, 1)
    assert (v2.name, v2.parent, v2.number) == ("v2", "v1", 2)

    versions = registry.versions(stream)
    assert [v.name for v in versions] == registry.version_names(stream) == ["v1", "v2"]
    assert [v.learned for v in versions] == [{0: 10, 1: 5}, {0: 30, 1: 5}]
    assert [v.parent for v in versions] == [None, "v1"]
    assert registry.head(stream).name == "v2"
    assert registry.get(stream, "v1").meta["seed"] == 1
    assert registry.get(stream, "v2").meta["offsets"]["batch"] == {"0": [20, 30], "1": [0, 5]}
    for v in versions:
        assert set(v.meta["sha256"]) == {ONNX_FILE, ESTIMATOR_FILE}
        assert v.meta["stream"] == stream and v.meta["version"] == v.name and v.meta["created_at"]
        assert v.meta["metrics"] == {"accuracy": 0.75, "rows": 10}

    assert registry.load_onnx(stream, "v1") == scaler_onnx(1)  # byte for byte: what the checksum covers
    np.testing.assert_array_equal(registry.load_estimator(stream, "v2").mean_, fitted_scaler(2).mean_)
    assert registry.profile(stream, "v2")["features"]["x0"]["sample"] == [0.1, 0.2, 0.3]
    assert expected_offsets(registry, stream)[:2] == (registry.head(stream), {0: 30, 1: 5})


def test_versions_sort_numerically(registry: ModelRegistry, stream: str) -> None:
    parent = None
    for n in range(1, 12):
        parent = register(registry, stream, parent, {0: n}).name
    assert [v.number for v in registry.versions(stream)] == list(range(1, 12))
    assert registry.head(stream).name == "v11"


def test_a_version_is_numbered_past_names_given_elsewhere_and_the_chain_follows(
    registry: ModelRegistry, stream: str
) -> None:
    """A registry restored from an older backup holds v1 while v2..v4 were given (and served, and
    named in predictions): the next version is v5, the child of v1, and the one after it v6."""
    register(registry, stream, None, {0: 10})
    v5 = registry.register(stream, "v1", scaler_onnx(5), fitted_scaler(5), meta({0: 20}), number_after=4)
    assert (v5.name, v5.parent, v5.number) == ("v5", "v1", 5)
    assert [v.name for v in registry.versions(stream)] == ["v1", "v5"] and registry.head(stream).name == "v5"
    assert register(registry, stream, "v5", {0: 30}).name == "v6"
    assert registry.register(stream, "v6", scaler_onnx(7), fitted_scaler(7), meta({0: 40}), number_after=2).name == (
        "v7"
    )  # a floor behind the head changes nothing
    assert expected_offsets(registry, stream)[1] == {0: 40}


@pytest.mark.parametrize("stale", [None, "v1", "v3"])
def test_stale_parent_is_refused(registry: ModelRegistry, stream: str, stale: str | None) -> None:
    register(registry, stream, None, {0: 10})
    register(registry, stream, "v1", {0: 20})
    with pytest.raises(StaleParent, match=f"head is v2, not {stale}"):
        register(registry, stream, stale, {0: 30})
    assert [v.name for v in registry.versions(stream)] == ["v1", "v2"]
    assert registry.head(stream).learned == {0: 20}


@pytest.mark.parametrize("file_name", [ONNX_FILE, ESTIMATOR_FILE])
@pytest.mark.parametrize("garbage", [b"\x00garbage\xff", b""])
def test_a_corrupted_file_is_never_loaded(backend: Backend, stream: str, file_name: str, garbage: bytes) -> None:
    registry = backend.registry
    register(registry, stream, None, {0: 10}, seed=1)
    backend.stored_file(stream, "v1", file_name).write_bytes(garbage)
    load = registry.load_onnx if file_name == ONNX_FILE else registry.load_estimator
    with pytest.raises(ChecksumMismatch, match=f"{stream}/v1/{file_name} does not match its sha256"):
        load(stream, "v1")
    other = registry.load_estimator if file_name == ONNX_FILE else registry.load_onnx
    assert other(stream, "v1") is not None  # the other file is still fine


def test_a_valid_looking_swap_fails_its_checksum(backend: Backend, stream: str) -> None:
    registry = backend.registry
    register(registry, stream, None, {0: 10}, seed=1)
    backend.stored_file(stream, "v1", ONNX_FILE).write_bytes(scaler_onnx(2))  # another real model
    with pytest.raises(ChecksumMismatch):
        registry.load_onnx(stream, "v1")
    assert registry.load_estimator(stream, "v1").n_features_in_ == 3


def test_the_feature_state_is_part_of_the_version_and_verified(backend: Backend, stream: str) -> None:
    registry = backend.registry
    register(registry, stream, None, {0: 10})
    state = b'{"format":1,"columns":{"device":["temp"]},"partitions":{}}'
    v2 = registry.register(stream, "v1", scaler_onnx(0), fitted_scaler(0), meta({0: 20}), feature_state=state)
    assert registry.load_feature_state(stream, "v1") is None  # a version without derived features
    assert registry.load_feature_state(stream, "v2") == state
    assert set(v2.meta["sha256"]) == {ONNX_FILE, ESTIMATOR_FILE, FEATURES_FILE}
    backend.stored_file(stream, "v2", FEATURES_FILE).write_bytes(state.replace(b"temp", b"tamp"))
    with pytest.raises(ChecksumMismatch, match=f"{stream}/v2/{FEATURES_FILE} does not match its sha256"):
        registry.load_feature_state(stream, "v2")


def test_unknown_version(registry: ModelRegistry, stream: str) -> None:
    register(registry, stream, None, {0: 10})
    for call in (
        lambda: registry.load_onnx(stream, "v7"),
        lambda: registry.get(stream, "v7"),
        lambda: registry.set_champion(stream, "v7", reason="typo"),
    ):
        with pytest.raises(RegistryError, match="has no version 'v7'"):
            call()
    assert registry.champion(stream) is None


def test_champion_alias_history_and_rollback(registry: ModelRegistry, stream: str) -> None:
    register(registry, stream, None, {0: 10})
    register(registry, stream, "v1", {0: 20})
    register(registry, stream, "v2", {0: 30})
    registry.set_champion(stream, "v1", reason="first")
    registry.set_champion(stream, "v2", reason="better", evidence={"roc_auc": 0.91})
    registry.set_champion(stream, "v3", reason="better still")
    assert registry.champion(stream) == "v3"

    assert registry.rollback(stream, reason="worse live") == "v2"
    assert registry.champion(stream) == "v2"
    assert registry.rollback(stream, reason="still worse") == "v1"  # never back to v3, rolled back from
    history = registry.champion_history(stream)
    assert [(h["version"], h["previous"], h["reason"]) for h in history] == [
        ("v1", None, "first"),
        ("v2", "v1", "better"),
        ("v3", "v2", "better still"),
        ("v2", "v3", "rollback: worse live"),
        ("v1", "v2", "rollback: still worse"),
    ]
    assert history[1]["evidence"] == {"roc_auc": 0.91}
    assert "evidence" not in history[0]
    assert all(h["at"] for h in history)
    with pytest.raises(RegistryError, match="no earlier good champion"):
        registry.rollback(stream, reason="nothing left")


def test_promoting_the_champion_again_moves_nothing_and_a_rollback_still_returns_to_its_predecessor(
    registry: ModelRegistry, stream: str
) -> None:
    """A re-promotion of the champion appended a history entry naming it as its own predecessor: the
    promotion check and the drift monitor then compared the champion with itself (a comparison that
    can never fire), and the entry counted as a fresh promotion by hand."""
    register(registry, stream, None, {0: 10})
    register(registry, stream, "v1", {0: 20})
    assert registry.set_champion(stream, "v1", reason="first") is True
    assert registry.set_champion(stream, "v2", reason="better") is True
    assert registry.set_champion(stream, "v2", reason="manual: again", evidence={"by": "dana"}) is False

    assert registry.champion(stream) == "v2"
    history = registry.champion_history(stream)
    assert [(h["version"], h["previous"]) for h in history] == [("v1", None), ("v2", "v1")]
    last = registry.decisions(stream)[-1]
    assert (last["kind"], last["version"], last["reason"], last["evidence"]) == (
        "champion_unchanged",
        "v2",
        "manual: again",
        {"by": "dana"},
    )
    assert last_promotion(history, "v2")["previous"] == "v1"  # what the champion check compares it with
    assert registry.rollback(stream, reason="worse live") == "v1"


def test_rollback_after_a_manual_demotion_and_after_a_rolled_back_version_was_chosen_again(
    registry: ModelRegistry, stream: str
) -> None:
    for parent, end in ((None, 10), ("v1", 20), ("v2", 30)):
        register(registry, stream, parent, {0: end})
    for version in ("v1", "v2", "v3"):
        registry.set_champion(stream, version, reason="better")
    registry.set_champion(stream, "v2", reason="manual: demote v3")  # by hand, over v3
    assert registry.rollback(stream, reason="undo") == "v3"  # the version the demotion replaced
    assert registry.rollback(stream, reason="again") == "v1"  # never v2: rolled back from just now

    # v2, rolled back from, then chosen again by hand: a later rollback may return to it.
    registry.set_champion(stream, "v2", reason="manual: v2 is fine after all")
    registry.set_champion(stream, "v3", reason="manual: try v3")
    assert registry.rollback(stream, reason="v3 is worse") == "v2"
    assert registry.rollback(stream, reason="and v2") == "v1"
    with pytest.raises(RegistryError, match="no earlier good champion"):
        registry.rollback(stream, reason="nothing left")


def test_last_promotion_skips_records_of_a_champion_promoted_again() -> None:
    """Histories written before re-promotions became decisions name the champion as its own predecessor."""
    history = [
        {"version": "v1", "previous": None, "reason": "first"},
        {"version": "v2", "previous": "v1", "reason": "better"},
        {"version": "v2", "previous": "v2", "reason": "manual: again", "evidence": {"by": "dana"}},
    ]
    assert last_promotion(history, "v2") == history[1]
    assert last_promotion(history, "v1") is None
    assert alias_changes(history) == history[:2]


def test_a_rollback_passes_over_a_version_scorers_would_refuse(backend: Backend, stream: str) -> None:
    """Rolling back to a damaged model moved the alias while every scorer kept serving the version
    rolled back from (they refuse a file that fails its checksum): the alias and what is served disagreed."""
    registry = backend.registry
    for parent, end in ((None, 10), ("v1", 20), ("v2", 30)):
        register(registry, stream, parent, {0: end})
    for version in ("v1", "v2", "v3"):
        registry.set_champion(stream, version, reason="better")
    backend.stored_file(stream, "v2", ONNX_FILE).write_bytes(b"\x00truncated")

    assert registry.rollback(stream, reason="worse live") == "v1"
    last = registry.champion_history(stream)[-1]
    assert (last["version"], last["previous"]) == ("v1", "v3")
    assert "does not match its sha256" in last["evidence"]["passed_over"]["v2"]
    with pytest.raises(RegistryError, match="no earlier good champion.*v2 cannot be served.*models promote"):
        registry.rollback(stream, reason="again")
    assert registry.champion(stream) == "v1"


@pytest.mark.parametrize("had_champion", [True, False])
def test_a_promotion_the_history_cannot_record_changes_nothing(
    backend: Backend, stream: str, had_champion: bool
) -> None:
    """MLflow moved the alias, then failed to write the history: scorers swapped to a champion the
    audit history lacked. An error must mean nothing changed, as on the filesystem."""
    registry = backend.registry
    register(registry, stream, None, {0: 10})
    register(registry, stream, "v1", {0: 20})
    if had_champion:
        registry.set_champion(stream, "v1", reason="first")
    before = (registry.champion(stream), registry.champion_history(stream))

    with backend.history_writes_failing(stream), pytest.raises(RegistryError):  # "failed a write", RegistryUnavailable
        registry.set_champion(stream, "v2", reason="manual: by hand")
    assert (registry.champion(stream), registry.champion_history(stream)) == before


def test_an_mlflow_promotion_whose_history_write_fails_for_any_reason_changes_nothing(
    mlflow_server, streamfit_home: Path, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project.registry.mlflow_store import MlflowRegistry

    registry = MlflowRegistry(mlflow_server.uri, root=streamfit_home / "registry")
    register(registry, stream, None, {0: 10})
    register(registry, stream, "v1", {0: 20})
    registry.set_champion(stream, "v1", reason="first")

    def broken(*args, **kwargs) -> None:
        raise RuntimeError("a bug while writing the record")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="a bug while writing the record"):
        patched.setattr(registry, "_append", broken)
        registry.set_champion(stream, "v2", reason="manual: by hand")
    assert registry.champion(stream) == "v1"
    assert [(h["version"], h["previous"]) for h in registry.champion_history(stream)] == [("v1", None)]


def test_a_deleted_champion_version_is_still_the_champion_and_rollback_passes_over_it(
    backend: Backend, stream: str
) -> None:
    """Deleting a model version deletes its MLflow aliases too: `champion` said None, so `models rollback`
    refused ("has no champion") and a restarted scorer served nothing. The filesystem's alias file keeps
    naming the deleted version, which scorers refuse (falling back) and rollback passes over."""
    registry = backend.registry
    for parent, end in ((None, 10), ("v1", 20), ("v2", 30)):
        register(registry, stream, parent, {0: end})
    for version in ("v1", "v2", "v3"):
        registry.set_champion(stream, version, reason="better")
    backend.delete_version(stream, "v3")

    assert registry.champion(stream) == "v3"
    assert registry.rollback(stream, reason="v3 is gone") == "v2"
    assert registry.champion(stream) == "v2"
    last = registry.champion_history(stream)[-1]
    assert (last["version"], last["previous"], last["reason"]) == ("v2", "v3", "rollback: v3 is gone")


def test_decisions_and_halts(registry: ModelRegistry, stream: str) -> None:
    registry.record_decision(stream, {"kind": "promotion", "version": "v2", "promoted": False, "margin": 0.01})
    registry.record_decision(stream, {"kind": "quality", "evidence": "x" * 20_000})  # longer than a tag holds
    registry.set_halt(stream, {"run_id": "r1", "ranges": {"0": [0, 10]}, "reason": "data quality"})
    halt = registry.halt(stream)
    assert (halt["run_id"], halt["ranges"], halt["at"] is not None) == ("r1", {"0": [0, 10]}, True)

    registry.clear_halt(stream, {"resolution": "skipped", "by": "alice"})
    assert registry.halt(stream) is None
    registry.clear_halt(stream, {"resolution": "again"})  # not halted: nothing recorded
    decisions = registry.decisions(stream)
    assert [d["kind"] for d in decisions] == ["promotion", "quality", "halt_cleared"]
    assert decisions[1]["evidence"] == "x" * 20_000
    assert decisions[2]["halt"]["run_id"] == "r1" and decisions[2]["by"] == "alice"
    assert all(d["at"] for d in decisions)


def test_pending_offset_reset_lifecycle(registry: ModelRegistry, stream: str) -> None:
    register(registry, stream, None, {0: 10, 1: 5})
    record = registry.set_pending_offsets(stream, {1: 0, 2: 7}, reason="lost data", by="alice")
    assert record["offsets"] == {"1": 0, "2": 7}
    assert registry.pending_offset_reset(stream) == record

    head, expected, reset = expected_offsets(registry, stream)
    assert (head.name, expected, reset) == ("v1", {0: 10, 1: 0, 2: 7}, record)
    assert registry.head(stream).learned == {0: 10, 1: 5}  # the head itself is untouched

    registry.clear_offset_reset(stream, applied_by_version="v2")
    assert registry.pending_offset_reset(stream) is None
    assert expected_offsets(registry, stream)[1] == {0: 10, 1: 5}
    assert registry.applied_offset_resets(stream) == {"v2": record}
    registry.clear_offset_reset(stream, applied_by_version="v3")  # nothing pending: no-op
    assert set(registry.applied_offset_resets(stream)) == {"v2"}


def test_an_offset_reset_is_applied_only_against_the_head_it_was_computed_from(
    registry: ModelRegistry, stream: str
) -> None:
    """`offsets reset` read the head, computed the reset, then wrote it: a version registered in
    between learned rows the reset did not consider (kept healthy partitions at the stale head's
    offsets: learned again), and the next version applied it anyway."""
    register(registry, stream, None, {0: 10, 1: 5})
    head, _, _ = expected_offsets(registry, stream)  # what the command computes from
    record = registry.set_pending_offsets(stream, {0: 10, 1: 40}, reason="gap", by="alice", head=head.name)
    assert registry.pending_offset_reset(stream) == record  # against the head: pending as before
    assert registry.stale_offset_reset(stream) is None

    # A version registered after the head was read and before the write: refused, nothing written.
    register(registry, stream, "v1", {0: 30, 1: 5})
    with pytest.raises(StaleReset, match=r"computed against head v1, but v2 is the head.*Run `streamfit offsets reset"):
        registry.set_pending_offsets(stream, {0: 10, 1: 50}, reason="gap", by="alice", head="v1")

    # Registered between that check and the write (deterministically, inside the write): never applied.
    assert registry._stored_offset_reset(stream) is None  # alice's, now stale too, was dropped on the way
    real_store = registry._store_offset_reset

    def racing_store(stream_: str, stored: dict) -> None:
        register(registry, stream_, "v2", {0: 60, 1: 5})  # v3: a training run commits meanwhile
        real_store(stream_, stored)

    registry._store_offset_reset = racing_store
    try:
        registry.set_pending_offsets(stream, {0: 30, 1: 70}, reason="gap", by="bob", head="v2")
    finally:
        del registry._store_offset_reset
    stale = registry.stale_offset_reset(stream)
    assert stale is not None and "computed against head v2, but v3 is the head" in stale
    assert "it is not applied" in stale and f"streamfit offsets reset {stream}" in stale
    assert registry.pending_offset_reset(stream) is None
    assert expected_offsets(registry, stream) == (registry.head(stream), {0: 60, 1: 5}, None)  # not 30: learned again

    registry.settle_offset_reset(stream)  # what the next registration does first: dropped, on record
    assert registry._stored_offset_reset(stream) is None
    discarded = registry.decisions(stream)[-1]
    assert discarded["kind"] == "offset_reset_discarded" and discarded["reset"]["offsets"] == {"0": 30, "1": 70}
    assert "v3 is the head" in discarded["why"]


def test_a_pending_reset_carries_the_feature_state_after_the_skipped_events(
    registry: ModelRegistry, stream: str
) -> None:
    register(registry, stream, None, {0: 10})
    # Large enough that MLflow keeps the record as an artifact behind its tag.
    rows = [[f"dev-{i}", [i + 0.5], [[i + 0.25]]] for i in range(600)]
    partitions = {"0": {"newest": 1.5, "tables": {"device": rows}}}
    state = orjson.dumps({"format": 1, "columns": {"device": ["temp"]}, "partitions": partitions})
    registry.set_pending_offsets(stream, {0: 40}, reason="quarantined q-1", by="data quality", feature_state=state)

    head, expected, reset = expected_offsets(registry, stream)
    assert expected == {0: 40} and carried_state(stream, reset) == state
    assert without_state(reset) == {k: v for k, v in reset.items() if k != "feature_state"}
    registry.clear_offset_reset(stream, applied_by_version="v2")
    assert carried_state(stream, registry.applied_offset_resets(stream)["v2"]) == state

    tampered = {**reset, "feature_state": reset["feature_state"].replace("dev-1", "dev-X")}
    with pytest.raises(
        ChecksumMismatch, match="the feature state carried by .quarantined q-1. does not match its sha256"
    ):
        carried_state(stream, tampered)


def test_a_reset_before_any_version_and_a_newer_one_replacing_it(registry: ModelRegistry, stream: str) -> None:
    registry.set_pending_offsets(stream, {0: 3, 1: 4}, reason="first", by="bob")
    assert registry.versions(stream) == []
    assert expected_offsets(registry, stream)[:2] == (None, {0: 3, 1: 4})
    registry.set_pending_offsets(stream, {0: 9}, reason="second", by="bob")
    assert registry.pending_offset_reset(stream)["offsets"] == {"0": 9}


@dataclass
class Trained:
    """What `register_batch` reads from a trained model (see learning.pipeline.TrainedModel)."""

    estimator: object
    parent: str | None
    metrics: dict
    rows_trained: int
    train_seconds: float = 0.01


def test_register_batch_records_offsets_resets_and_lifts_a_matching_halt(registry: ModelRegistry) -> None:
    from dagster_project.learning.estimators import build_model, partial_fit
    from dagster_project.onnx.export import export_onnx

    spec = synthetic_spec(partitions=1)
    parity = {"max_abs_diff": 1e-7, "label_mismatches": 0, "rows": 50, "passed": True, "export_seconds": 0.02}

    def trained(batch, parent):
        model = build_model(spec)
        partial_fit(model, batch.X, batch.y, np.arange(2))
        return Trained(model, parent, {"accuracy": 0.8, "rows": batch.rows}, batch.rows), export_onnx(model, 5)

    first = hand_batch(spec, 50, start=0, seed=1)
    model, onnx_bytes = trained(first, None)
    v1 = register_batch(registry, spec, first, model, onnx_bytes, parity, "run-1")
    assert (v1.name, v1.learned, registry.champion(spec.name)) == ("v1", {0: 50}, "v1")
    assert already_registered(registry, spec.name, None, first.ranges).name == "v1"

    registry.set_pending_offsets(spec.name, {0: 80}, reason="skip a gap", by="carol")
    registry.set_halt(spec.name, {"ranges": {"0": [80, 130]}, "run_id": "run-2"})
    second = hand_batch(spec, 50, start=80, seed=2)
    model, onnx_bytes = trained(second, "v1")
    v2 = register_batch(registry, spec, second, model, onnx_bytes, parity, "run-3")
    assert (v2.name, v2.parent, v2.learned) == ("v2", "v1", {0: 130})
    assert v2.meta["offset_reset_applied"]["offsets"] == {"0": 80}
    assert v2.meta["rows_learned_total"] == 100 and v2.meta["parity"]["passed"] is True
    assert registry.pending_offset_reset(spec.name) is None
    assert set(registry.applied_offset_resets(spec.name)) == {"v2"}
    assert registry.halt(spec.name) is None
    assert registry.decisions(spec.name)[-1]["resolution"] == "the batch was learned by v2"
    assert already_registered(registry, spec.name, "v1", second.ranges).name == "v2"
    assert already_registered(registry, spec.name, "v1", first.ranges) is None
    with pytest.raises(StaleParent):
        register_batch(registry, spec, second, model, onnx_bytes, parity, "run-4")  # trained on v1, head is v2
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"]


def test_the_training_exporter_reads_either_backend(registry: ModelRegistry, stream: str) -> None:
    from dagster_project.observability.exporter import exporter_registry

    register(registry, stream, None, {0: 10})
    register(registry, stream, "v1", {0: 20})
    registry.set_champion(stream, "v1", reason="first")
    registry.set_champion(stream, "v2", reason="gate")
    registry.rollback(stream, reason="worse live")
    collectors = exporter_registry(registry, [synthetic_spec(name=stream)], None)
    assert collectors.get_sample_value("streamfit_batches_total", {"stream": stream}) == 2
    assert collectors.get_sample_value("streamfit_model_version", {"stream": stream, "alias": "head"}) == 2
    assert collectors.get_sample_value("streamfit_model_version", {"stream": stream, "alias": "champion"}) == 1
    changes = {"stream": stream, "kind": "rollback"}
    assert collectors.get_sample_value("streamfit_champion_changes_total", changes) == 1
    assert collectors.get_sample_value("streamfit_registry_broken_files", {"stream": stream}) == 0


class Crash(RuntimeError):
    """The process died here (raised instead of a real kill)."""


@pytest.mark.parametrize("where", ["clear_offset_reset", "_clear_state"])
def test_a_crash_after_a_version_applied_a_reset_never_applies_it_again_and_keeps_its_state(
    backend: Backend, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version that applied a reset is committed; the process dies before the reset is kept as
    applied (`clear_offset_reset`), or on MLflow after keeping it and before dropping it
    (`_clear_state`). The next batches continue from that version's offsets, the reset (with the
    feature state a window read back needs) is listed as applied by it, and a newer reset set
    before anything settled it does not erase that record."""
    from dagster_project.learning.estimators import build_model, partial_fit
    from dagster_project.onnx.export import export_onnx

    registry = backend.registry
    if not hasattr(registry, where):
        pytest.skip(f"{backend.name} clears a reset in one atomic step")
    spec = synthetic_spec(partitions=2)
    parity = {"max_abs_diff": 1e-7, "label_mismatches": 0, "rows": 20, "passed": True, "export_seconds": 0.02}

    def register_next(start: int, partition: int) -> Version:
        batch = hand_batch(spec, 20, start=start, seed=start, partition=partition)
        model = build_model(spec)
        partial_fit(model, batch.X, batch.y, np.arange(2))
        head = registry.head(spec.name)
        trained = Trained(model, head.name if head else None, {"accuracy": 0.8}, batch.rows)
        return register_batch(registry, spec, batch, trained, export_onnx(model, 5), parity, f"run-{start}")

    register_next(0, partition=0)
    state = b'{"format":1,"columns":{"device":["temp"]},"partitions":{}}'
    reset = registry.set_pending_offsets(spec.name, {1: 400}, reason="lost segment", by="alice", feature_state=state)
    with monkeypatch.context() as crashing:
        crashing.setattr(registry, where, lambda *a, **k: (_ for _ in ()).throw(Crash(where)))
        with pytest.raises(Crash):
            register_next(20, partition=0)
    v2 = registry.head(spec.name)
    assert (v2.name, v2.learned, v2.meta["offset_reset_applied"]) == ("v2", {0: 40, 1: 400}, without_state(reset))

    assert registry.pending_offset_reset(spec.name) is None, "v2 applied it"
    assert carried_state(spec.name, registry.applied_offset_resets(spec.name)["v2"]) == state
    newer = registry.set_pending_offsets(spec.name, {0: 60}, reason="another gap", by="bob")
    assert carried_state(spec.name, registry.applied_offset_resets(spec.name)["v2"]) == state
    v3 = register_next(400, partition=1)
    assert v3.learned == {0: 60, 1: 420} and v3.meta["offset_reset_applied"] == newer
    v4 = register_next(60, partition=0)
    assert v4.learned == {0: 80, 1: 420} and v4.meta["offset_reset_applied"] is None
    assert sorted(registry.applied_offset_resets(spec.name)) == ["v2", "v3"]


def test_an_operator_s_reset_set_while_a_version_applies_the_previous_one_stays_pending(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version applying reset R1 is committed; before R1 is cleared, an operator sets R2. Clearing
    must keep R1 as applied and leave R2 pending (it moved whatever was stored: R2 was lost)."""
    from dagster_project.learning.estimators import build_model, partial_fit
    from dagster_project.onnx.export import export_onnx

    spec = synthetic_spec(partitions=1)
    parity = {"max_abs_diff": 1e-7, "label_mismatches": 0, "rows": 20, "passed": True, "export_seconds": 0.02}
    batch = hand_batch(spec, 20, start=50, seed=1)
    model = build_model(spec)
    partial_fit(model, batch.X, batch.y, np.arange(2))
    first = registry.set_pending_offsets(spec.name, {0: 50}, reason="start late", by="alice")
    real_register = type(registry).register

    def register_then_operator_resets(self, *args, **kwargs):
        version = real_register(self, *args, **kwargs)
        self.set_pending_offsets(spec.name, {0: 500}, reason="skip a bad hour", by="bob")
        return version

    monkeypatch.setattr(type(registry), "register", register_then_operator_resets)
    v1 = register_batch(
        registry, spec, batch, Trained(model, None, {"accuracy": 0.8}, batch.rows), export_onnx(model, 5), parity, "r1"
    )

    assert v1.meta["offset_reset_applied"] == first
    assert registry.pending_offset_reset(spec.name)["reason"] == "skip a bad hour"
    assert set(registry.applied_offset_resets(spec.name)) == {"v1"}
