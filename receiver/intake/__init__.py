"""Durable, idempotent intake: the dedupe key and an ordinary RQ job written by one Lua call (``rqjob``),
the calls of concurrent requests sharing one pipelined round trip (``batching``) over raw RESP
(``resp``). The only part of the receiver that talks to Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final

from receiver.intake.batching import GroupCommitter
from receiver.intake.resp import bulk, intake_client
from receiver.intake.rqjob import JOB_KEY_PREFIX, Framing, JobRecorder, JobScript
from workers.core import keys
from workers.core.errors import IntakeUnavailableError
from workers.core.settings import Settings

__all__ = ["Intake", "IntakeUnavailableError"]

_JOB_KEY_PREFIX: Final = JOB_KEY_PREFIX.encode()
# Where each per-job script argument sits in the values ``Intake.enqueue`` frames; where it goes in the
# command is rqjob's SCRIPT_KEYS/SCRIPT_ARGV. The job's created_at and enqueued_at are the stamp.
_PER_JOB: Final = {
    "dedupe": 0,
    "job_key": 1,
    "stamp": 2,
    "created_at": 2,
    "enqueued_at": 2,
    "job_id": 3,
    "data": 4,
    "description": 5,
}


class Intake:
    """``enqueue()``: write a dedupe key and an RQ job atomically, sharing round trips with other requests;
    ``call()``: any other Redis command on the same path, with the same timeout and failure.

    Also the extension point for other receiver endpoints (``receiver.endpoints.commands``) that enqueue
    jobs idempotently: ``await request.app.state.intake.enqueue(job_id, "pkg.module.func", payload, ...)``.
    """

    def __init__(
        self, settings: Settings, recorder: JobRecorder | None = None, scripts: Sequence[JobScript] = ()
    ) -> None:
        self.client = intake_client(settings)
        self.recorder = recorder or JobRecorder.from_settings(settings)
        self._sources: list[str] = []
        self.committer = GroupCommitter(
            self.client,
            timeout=settings.bridge_intake_timeout_seconds,
            max_batch=settings.bridge_intake_max_batch,
            max_in_flight=settings.bridge_intake_max_in_flight,
            scripts=self._sources,
            batched=settings.bridge_intake_group_commit,
            transport=settings.bridge_intake_transport,
        )
        self.queue_key = self.recorder.queue.key
        self.queue_keys = {  # every queue of the bridge, for the depth gauge
            name: self.recorder.queue.redis_queue_namespace_prefix + name
            for name in (settings.bridge_queue, settings.bridge_http_subscribers_queue)
        }
        self._ttl = str(settings.bridge_dedupe_ttl_seconds).encode()
        self._scripts: dict[str, JobScript] = {}
        self._commands: dict[str, Framing] = {}
        for script in scripts:
            self._add(script)

    def _add(self, script: JobScript) -> JobScript:
        self._scripts[script.func] = script
        self._commands[script.func] = script.evalsha({"ttl": self._ttl}, _PER_JOB)
        self._sources.append(script.source)
        return script

    def script(self, func: str) -> JobScript:
        """The job script of ``func`` (built and verified against RQ on first use)."""
        script = self._scripts.get(func)
        return script if script is not None else self._add(self.recorder.script(func))

    async def start(self) -> None:
        self.committer.start()
        try:  # best effort: Redis may be down at start-up; NOSCRIPT is handled per batch anyway
            async with asyncio.timeout(self.committer.timeout):
                await self.committer.load_scripts()
        except Exception:  # noqa: S110
            pass

    async def stop(self) -> None:
        await self.committer.stop()
        await self.client.aclose()

    async def enqueue(
        self, job_id: str, func: str, payload: Mapping[str, Any], *, description: str, stamp: str
    ) -> bool:
        """True when the job was written, False when ``job_id`` was seen within the dedupe TTL.
        ``stamp`` (``rqjob.utc_stamp()``) is the job's created_at/enqueued_at and the dedupe value.
        Raises ``IntakeUnavailableError`` when Redis did not confirm either way."""
        script = self.script(func)
        job = job_id.encode()
        command = self._commands[func](
            (  # in _PER_JOB order
                bulk(keys.dedupe(job_id).encode()),
                bulk(_JOB_KEY_PREFIX + job),
                bulk(stamp.encode()),
                bulk(job),
                bulk(script.data(payload)),
                bulk(description.encode()),
            )
        )
        result = await self.committer.submit_packed(command)
        return bool(result == 1)

    async def call(self, *command: Any) -> Any:
        """Any other Redis command through the shared pipeline (same timeout and 503 semantics)."""
        return await self.committer.submit(*command)
