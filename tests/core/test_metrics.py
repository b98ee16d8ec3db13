"""The worker metrics' journal: what a forked work-horse counts is replayed in its worker, bounded, and a
malformed hand-back is ignored."""

from __future__ import annotations

from workers.core import metrics


def _runs(function: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "bridge_job_runs_total", {"function": function, "outcome": outcome}
    )
    return value or 0.0


def test_journal_replays_what_was_counted_and_is_bounded() -> None:
    metrics.start_journal()
    for _ in range(metrics.JOURNAL_MAX + 10):
        metrics.observe_job_run("tests.journal", "succeeded", 0.01)
    metrics.observe_vendor_call("kiban", "getWorkflooStatus", 200, 0.02)
    payload = metrics.take_journal()
    before = _runs("tests.journal", "succeeded")
    assert metrics.replay(payload) == metrics.JOURNAL_MAX
    assert _runs("tests.journal", "succeeded") == before + metrics.JOURNAL_MAX
    assert metrics.take_journal() == b"[]"  # journaling stopped


def test_replay_skips_what_it_does_not_understand() -> None:
    assert metrics.replay(b"not json") == 0
    assert metrics.replay(b'{"a": 1}') == 0
    assert metrics.replay(b'[["no_such_kind", 1], ["retry"], ["retry", "tests.fn"]]') == 1
