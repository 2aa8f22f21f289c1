"""Exactly-once learning: a batch is learned, skipped as already learned, or refused with its offsets."""

from __future__ import annotations

import pytest

from dagster_project.kafka.exactly_once import BatchRefused, Decision, decide

HEAD = {0: 100, 1: 40}


@pytest.mark.parametrize(
    ("expected", "ranges", "decision"),
    [
        pytest.param(HEAD, {0: (100, 150), 1: (40, 60)}, Decision.LEARN, id="starts-at-head"),
        pytest.param(HEAD, {1: (40, 41)}, Decision.LEARN, id="one-partition-only"),
        pytest.param({}, {0: (0, 10), 1: (0, 5)}, Decision.LEARN, id="first-batch-of-a-stream"),
        pytest.param({}, {0: (70, 90)}, Decision.LEARN, id="new-stream-from-log-start"),
        pytest.param(HEAD, {0: (100, 120), 2: (15, 30)}, Decision.LEARN, id="new-partition-starts-anywhere"),
        pytest.param(HEAD, {2: (0, 30)}, Decision.LEARN, id="only-a-new-partition"),
        pytest.param(HEAD, {0: (50, 100), 1: (20, 40)}, Decision.ALREADY_LEARNED, id="retry-of-the-last-batch"),
        pytest.param(HEAD, {0: (0, 10)}, Decision.ALREADY_LEARNED, id="long-ago"),
        pytest.param(HEAD, {0: (90, 100)}, Decision.ALREADY_LEARNED, id="ends-exactly-at-head"),
    ],
)
def test_decisions(expected: dict[int, int], ranges, decision: Decision) -> None:
    assert decide(expected, ranges) is decision


@pytest.mark.parametrize(
    ("ranges", "kind", "details"),
    [
        pytest.param(
            {0: (120, 150), 1: (40, 60)},
            "gap",
            ["partition 0 starts at 120 but the model's next offset is 100"],
            id="gap",
        ),
        pytest.param(
            {0: (100, 150), 1: (30, 60)},
            "overlap",
            ["partition 1 starts at 30 but the model's next offset is 40"],
            id="overlap",
        ),
        pytest.param(
            {0: (50, 100), 1: (40, 60)},
            "overlap",
            ["partition 0 starts at 50 but the model's next offset is 100"],
            id="half-learned-retry",
        ),
        pytest.param(
            {0: (101, 150), 1: (39, 60)},
            "gap",
            [
                "partition 0 starts at 101 but the model's next offset is 100",
                "partition 1 starts at 39 but the model's next offset is 40",
            ],
            id="gap-and-overlap-is-a-gap",
        ),
        pytest.param(
            {0: (99, 150), 2: (0, 10)},
            "overlap",
            ["partition 0 starts at 99 but the model's next offset is 100"],
            id="new-partition-does-not-excuse-overlap",
        ),
    ],
)
def test_refusals_name_partition_and_offsets(ranges, kind: str, details: list[str]) -> None:
    with pytest.raises(BatchRefused) as info:
        decide(HEAD, ranges)
    message = str(info.value)
    assert message.startswith(f"batch refused ({kind}): ")
    for detail in details:
        assert detail in message
    assert "streamfit offsets reset" in message


def test_partitions_that_agree_are_not_named() -> None:
    with pytest.raises(BatchRefused) as info:
        decide(HEAD, {0: (100, 150), 1: (45, 60)})
    assert "partition 1 starts at 45" in str(info.value)
    assert "partition 0" not in str(info.value)
