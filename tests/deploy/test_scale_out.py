"""Scale-out proof, CI-sized (the full run with figures is ``python -m bench.scale``; same implementation).

Two receiver processes and four worker processes on one Redis, fake vendors as processes, callbacks
arriving on both receivers plus a copy of every one re-posted to the other receiver, one worker SIGKILLed
while it runs a job. ``bench.scale.run`` raises ``ScaleCheckFailed`` (with the failed checks) unless every
acknowledged callback was processed, each approved execution has exactly one Kompliant business
application and the others none, and the event stream is complete with no duplicate effect event. No
timing is asserted: the throughput figures of this small run are only printed.
"""

from __future__ import annotations

from bench.scale import APPROVED, SCENARIO_MIX, ScaleConfig, ScaleReport, print_report, run


def test_two_receivers_four_workers_duplicates_and_a_killed_worker() -> None:
    config = ScaleConfig(
        worker_counts=(1, 2, 4), apps_per_worker=2, proof_apps=40, phase_timeout=60, log=print
    )
    report: ScaleReport = run(config)  # raises ScaleCheckFailed listing every failed check
    print_report(report, config)
    assert report.ok and report.failures == []
    assert report.applications == 2 * (1 + 2 + 4) + 40
    expected_approved = sum(
        SCENARIO_MIX[n % len(SCENARIO_MIX)] in APPROVED for n in range(report.applications)
    )
    assert report.business_applications == report.approved == expected_approved > 0
    # both receivers acknowledged callbacks, and each saw the other's callbacks again as duplicates
    assert min(report.accepted_by_receiver.values()) > 0
    assert min(report.duplicate_by_receiver.values()) > 0
    # every callback the fake sent was copied to the other receiver; the proof phase doubled them (knob)
    assert report.cross_copies == report.fake_deliveries > report.accepted_callbacks > 0
    # the killed worker was running a job, and another worker finished it
    assert report.killed_worker is not None and report.killed_job is not None
    assert report.killed_job_status is not None and report.killed_job_status.endswith("FINISHED")
    assert [p.workers for p in report.phases if p.name.startswith("throughput")] == [1, 2, 4]
