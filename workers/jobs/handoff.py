"""Hand an approved execution to Kompliant: exactly one BUSINESS_APPLICATION per execution.

Each anchor (subject record, then workflow id) is written to the execution hash and made durable
(``workers.jobs.durability``) before the next vendor call, and a re-run adopts what an earlier run
created, once the listing proves it its own; the lock only saves vendor calls. Rule and configuration
violations are a business outcome (``kompliant.workflow.rejected``), not a retry; a conflict the bridge
cannot attribute (``DUPLICATE_EMAIL``, or another execution's application under the anchored subject
record) is ``kompliant.workflow.conflict``, since the other application may be this execution's own
whose anchors Redis lost. The whole argument is in docs/workers.md, "Exactly one Kompliant business
application".
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from workers.core import keys
from workers.core.errors import KompliantError, PermanentError, TransientError
from workers.core.events import Event, EventType, Source
from workers.core.log import get_logger
from workers.core.settings import Settings
from workers.fanout.publisher import Publisher
from workers.jobs import durability, lease, state
from workers.jobs.outcome import Applicant
from workers.vendors.kompliant.client import KompliantClient

log = get_logger(__name__)

BUSINESS_APPLICATION = "BUSINESS_APPLICATION"
REJECTION_CODES = frozenset({"SYSTEM_RULE_VIOLATION", "ACCOUNT_CONFIGURATION_VIOLATION"})
TYPE_LIMIT = "SUBJECT_RECORD_WORKFLOW_TYPE_LIMIT"
DUPLICATE_EMAIL = "DUPLICATE_EMAIL"
REFERRER_MAX = 100
ALREADY_STARTED = ("WORKFLOW_STARTED", "WORKFLOW_ENDED")


@dataclass(frozen=True)
class HandoffResult:
    outcome: str  # "started" | "rejected" | "conflict"
    workflow_id: str | None = None
    subject_record_id: str | None = None
    adopted: bool = False
    reason: str | None = None


def _sub_code_is(exc: KompliantError, sub_code: str) -> bool:
    return bool(exc.has_sub_code(sub_code))


def _is_rejection(exc: KompliantError) -> bool:
    return (exc.code or "").upper() in REJECTION_CODES and not exc.retryable


class Handoff:
    def __init__(
        self,
        connection: redis.Redis,
        settings: Settings,
        kompliant: KompliantClient,
        publisher: Publisher,
    ) -> None:
        self.redis = connection
        self.settings = settings
        self.kompliant = kompliant
        self.publisher = publisher

    # --- events ----------------------------------------------------------------------------
    def _publish(
        self,
        execution_id: str,
        type_: EventType,
        once: str,
        data: dict[str, object],
        state_fields: dict[str, str] | None = None,
    ) -> None:
        self.publisher.publish(
            Event(type=type_, execution_id=execution_id, source=Source.KOMPLIANT, data=dict(data)),
            once_key=f"{once}:{execution_id}",
            state_key=keys.execution(execution_id) if state_fields else None,
            state_fields=state_fields,
        )

    def _rejected(self, execution_id: str, exc: KompliantError) -> HandoffResult:
        reason = (exc.sub_code or exc.code or "REJECTED").upper()
        # The rejected flag and its event in one step: a re-run sees the flag and stops, so the event
        # must already be in the stream by then (a crash between two calls would have lost it).
        self._publish(
            execution_id,
            EventType.KOMPLIANT_WORKFLOW_REJECTED,
            "kompliant-rejected",
            {
                "code": exc.code,
                "sub_code": exc.sub_code,
                "entity_type": exc.entity_type,
                "trace_id": exc.trace_id,
            },
            state_fields={state.KOMPLIANT_REJECTED: reason},
        )
        log.info("kompliant_rejected", execution_id=execution_id, code=exc.code, sub_code=exc.sub_code)
        return HandoffResult(outcome="rejected", reason=reason)

    def _conflict(self, execution_id: str, exc: KompliantError) -> HandoffResult:
        reason = (exc.sub_code or exc.code or "CONFLICT").upper()
        # Flag and event in one step, as for a rejection; an operator resolves it (docs/operations.md).
        self._publish(
            execution_id,
            EventType.KOMPLIANT_WORKFLOW_CONFLICT,
            "kompliant-conflict",
            {
                "code": exc.code,
                "sub_code": exc.sub_code,
                "entity_type": exc.entity_type,
                "trace_id": exc.trace_id,
            },
            state_fields={state.KOMPLIANT_CONFLICT: reason},
        )
        log.warning("kompliant_conflict", execution_id=execution_id, code=exc.code, sub_code=exc.sub_code)
        return HandoffResult(outcome="conflict", reason=reason)

    # --- steps -----------------------------------------------------------------------------
    def _subject_record(self, execution_id: str, known: dict[str, str]) -> tuple[str, bool]:
        existing = known.get(state.KOMPLIANT_SUBJECT_RECORD)
        if existing:
            return existing, False
        lease.check(self.redis, "kompliant.subject_record.create")
        created = self.kompliant.create_subject_record("BUSINESS")
        winner = state.set_once(self.redis, execution_id, state.KOMPLIANT_SUBJECT_RECORD, created)
        return winner, winner == created

    def _adopt(self, execution_id: str, subject_record_id: str) -> tuple[str | None, bool]:
        """(this execution's business application under the subject record, whether another one is
        there). Its own: the referrer the bridge sets names this execution; a listing without referrer
        counts as its own, since the bridge creates each subject record for one execution."""
        foreign = False
        for workflow in self.kompliant.list_workflows(subject_record_id):
            if (workflow.type or "").upper() != BUSINESS_APPLICATION:
                continue
            if workflow.referrer_value in (None, execution_id[:REFERRER_MAX]):
                return str(workflow.workflow_id), foreign
            foreign = True
        return None, foreign

    def _workflow(
        self, execution_id: str, subject_record_id: str, fresh_record: bool, applicant: Applicant
    ) -> tuple[str | None, bool, HandoffResult | None]:
        """(workflow id, adopted, rejection)."""
        if not fresh_record:
            adopted, _ = self._adopt(execution_id, subject_record_id)
            if adopted:
                return adopted, True, None
        if not applicant.email:
            raise PermanentError(
                "no applicant e-mail in the execution's FORM nodes (check BRIDGE_APPLICANT_EMAIL_FIELDS)"
            )
        durability.ensure(self.redis, self.settings, before="workflow.create")
        try:
            lease.check(self.redis, "kompliant.workflow.create")
            created = self.kompliant.create_business_application(
                email=applicant.email,
                first_name=applicant.first_name,
                last_name=applicant.last_name,
                referrer_value=execution_id[:REFERRER_MAX],
                subject_record_id=subject_record_id,
                state="CREATED",
            )
        except KompliantError as exc:
            if _sub_code_is(exc, TYPE_LIMIT) or _sub_code_is(exc, DUPLICATE_EMAIL):
                # Look for this execution's own application (a listing that lagged the create); the
                # API lists by subject record only, so one whose anchor Redis lost cannot be found.
                adopted, foreign = self._adopt(execution_id, subject_record_id)
                if adopted:
                    return adopted, True, None
                if foreign or _sub_code_is(exc, DUPLICATE_EMAIL):
                    return None, False, self._conflict(execution_id, exc)
                raise TransientError("workflow limit reported but workflow.list shows none yet") from exc
            if _is_rejection(exc):
                return None, False, self._rejected(execution_id, exc)
            raise
        return created.workflow_id, False, None

    def _start(self, workflow_id: str) -> None:
        try:
            lease.check(self.redis, "kompliant.workflow.start")
            self.kompliant.start_workflow(workflow_id)
        except KompliantError as exc:
            if any(_sub_code_is(exc, code) for code in ALREADY_STARTED):
                return
            raise

    def run(self, execution_id: str, applicant: Applicant) -> HandoffResult:
        lock = state.Lock(self.redis, keys.handoff_lock(execution_id), self.settings.handoff_lock_ttl_seconds)
        if not lock.acquire(wait_seconds=self.settings.handoff_lock_ttl_seconds):
            raise TransientError("another hand-off of this execution is in progress")
        try:
            return self._run_locked(execution_id, applicant)
        finally:
            lock.release()

    def _run_locked(self, execution_id: str, applicant: Applicant) -> HandoffResult:
        known = state.load(self.redis, execution_id)
        rejected = known.get(state.KOMPLIANT_REJECTED)
        if rejected:
            return HandoffResult(outcome="rejected", reason=rejected)
        conflict = known.get(state.KOMPLIANT_CONFLICT)
        if conflict:
            return HandoffResult(outcome="conflict", reason=conflict)

        subject_record_id, fresh = self._subject_record(execution_id, known)
        workflow_id = known.get(state.KOMPLIANT_WORKFLOW)
        adopted = False
        if not workflow_id:
            workflow_id, adopted, rejection = self._workflow(
                execution_id, subject_record_id, fresh, applicant
            )
            if rejection is not None:
                return rejection
            assert workflow_id is not None
            state.set_fields(self.redis, execution_id, {state.KOMPLIANT_WORKFLOW: workflow_id})
        self._publish(
            execution_id,
            EventType.KOMPLIANT_WORKFLOW_CREATED,
            "kompliant-created",
            {"workflow_id": workflow_id, "subject_record_id": subject_record_id, "adopted": adopted},
        )
        if known.get(state.KOMPLIANT_STARTED) != "1":
            durability.ensure(self.redis, self.settings, before="workflow.start")
            self._start(workflow_id)
            state.set_fields(self.redis, execution_id, {state.KOMPLIANT_STARTED: "1"})
        self._publish(
            execution_id,
            EventType.KOMPLIANT_WORKFLOW_STARTED,
            "kompliant-started",
            {"workflow_id": workflow_id, "subject_record_id": subject_record_id},
        )
        log.info("kompliant_handoff_done", execution_id=execution_id, adopted=adopted)
        return HandoffResult(
            outcome="started", workflow_id=workflow_id, subject_record_id=subject_record_id, adopted=adopted
        )
