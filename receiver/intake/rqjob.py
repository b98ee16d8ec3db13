"""Ordinary RQ jobs written by one Lua call, without RQ's per-job cost on the request path.

At start-up (per queue and job function) RQ's own ``Queue.create_job`` + ``Queue.enqueue_job`` run twice
against a *recording* pipeline whose connection can never connect. Comparing the two recorded command
stacks gives a template: the commands RQ sends to enqueue a job (``SADD rq:queues``, ``HSET rq:job:<id>
status``, ``HSET rq:job:<id> <fields>``, ``RPUSH rq:queue:<name> <id>``) with the per-job values (job
id, ``created_at``, ``enqueued_at``, ``data``, ``description``) as slots. The template becomes a Lua
script that checks the dedupe key, runs those commands and sets the dedupe key — so the dedupe key and
the job are written together or not at all.

The template is verified at build time: rendering it for a third RQ-recorded job must give exactly
RQ's bytes (timestamps taken from RQ), else start-up fails; an RQ upgrade that changes how jobs are
enqueued cannot silently produce jobs RQ would not understand. Per request only the job ``data``
(RQ's serializer + zlib, as ``Job.to_dict`` does) and one timestamp are computed.
"""

from __future__ import annotations

import hashlib
import operator
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import redis
from redis._parsers.encoders import Encoder
from rq import Queue
from rq.job import Job, Retry

from receiver.intake.resp import bulk
from workers.core.contract import JOB_SERIALIZER, abandoned_job_retry
from workers.core.settings import Settings

ALLOWED_COMMANDS: Final = frozenset({"SADD", "HSET", "RPUSH", "LPUSH", "EXPIRE"})
DYNAMIC_FIELDS: Final = (b"created_at", b"enqueued_at", b"data", b"description")
JOB_KEY_PREFIX: Final[str] = Job.redis_job_namespace_prefix  # "rq:job:"
TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"  # rq.utils._TIMESTAMP_FORMAT

_ENCODER: Final = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]

# KEYS and ARGV of every generated script, in order: the Lua (``_lua``), its verification and the EVALSHA
# framing (``JobScript.evalsha``, filled per request by ``Intake.enqueue``) all follow this one table.
# STATIC_KEYS stands for the script's fixed RQ keys (``JobScript.static_keys``) and comes last.
STATIC_KEYS: Final = "static_keys"
SCRIPT_KEYS: Final = ("dedupe", "job_key", STATIC_KEYS)
SCRIPT_ARGV: Final = ("ttl", "stamp", "job_id", "created_at", "enqueued_at", "data", "description")
_KEY: Final = {name: n for n, name in enumerate(SCRIPT_KEYS, 1)}
_ARG: Final = {name: n for n, name in enumerate(SCRIPT_ARGV, 1)}
# HSET fields of RQ's job hash that take a per-job value, and the ARGV slot carrying it.
_FIELD_SLOTS: Final = {field: _ARG[field.decode()] for field in DYNAMIC_FIELDS}


JOB_VIEW_FIELDS: Final = (b"status", b"meta", b"data")
"""The fields of RQ's job hash ``job_view`` reads (``HMGET``), in its argument order."""


def job_view(status: bytes | None, meta: bytes | None, data: bytes | None) -> dict[str, Any] | None:
    """A job hash's status, meta and first argument as RQ stores them (``Job.to_dict``: the serializer,
    data zlib-compressed); None when the hash has no status (no such job). An unreadable part is empty."""
    if status is None:
        return None
    view: dict[str, Any] = {"status": status.decode(errors="replace"), "meta": {}, "argument": {}}
    try:
        loaded = JOB_SERIALIZER.loads(meta) if meta else {}  # type: ignore[no-untyped-call]
        view["meta"] = loaded if isinstance(loaded, dict) else {}
    except ValueError:
        pass
    try:
        stored: Any = JOB_SERIALIZER.loads(zlib.decompress(data)) if data else ()  # type: ignore[no-untyped-call]
        args = stored[2] if len(stored) == 4 else ()  # (func, instance, args, kwargs)
        view["argument"] = args[0] if args and isinstance(args[0], dict) else {}
    except (ValueError, TypeError, IndexError, zlib.error):
        pass
    return view


def utc_stamp() -> str:
    """Now, formatted as RQ formats its timestamps (``TIMESTAMP_FORMAT``; isoformat is faster)."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class _NeverConnect(redis.Connection):
    """Connection class of the recording client: RQ must only queue commands on it, never send them."""

    def connect(self) -> None:
        raise RuntimeError("the RQ recording client must never connect")


def _encode(value: Any) -> bytes:
    encoded: bytes = _ENCODER.encode(value)  # type: ignore[no-untyped-call]
    return encoded


_LUA_PLAIN: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:.-")


def _lua_string(value: bytes) -> str:
    """A Lua literal of any bytes (three-digit decimal escapes, so a following digit cannot join in)."""
    return '"' + "".join(chr(b) if b in _LUA_PLAIN else f"\\{b:03d}" for b in value) + '"'


# Frames one EVALSHA from the per-job arguments (``JobScript.evalsha``).
Framing = Callable[[Sequence[bytes]], bytes]

# A command argument in a template: static bytes, a KEYS index ("k", n) or an ARGV index ("a", n).
Slot = bytes | tuple[str, int]


@dataclass(frozen=True)
class JobScript:
    """The enqueue commands of one (queue, function) as a Lua script plus its static KEYS."""

    func: str
    source: str
    sha: str
    static_keys: tuple[bytes, ...]
    serialize: Callable[[Any], bytes]

    def evalsha(self, fixed: Mapping[str, bytes], positions: Mapping[str, int]) -> Framing:
        """This script's EVALSHA command builder, arguments in ``SCRIPT_KEYS``/``SCRIPT_ARGV`` order. The
        static keys and the arguments in ``fixed`` are framed once; every other argument ``name`` is
        taken, already framed (``resp.bulk``), from ``values[positions[name]]`` of each call."""
        numkeys = len(SCRIPT_KEYS) - 1 + len(self.static_keys)
        parts = [bulk(b"EVALSHA"), bulk(self.sha.encode()), bulk(b"%d" % numkeys)]
        order: list[int] = []

        def add(name: str) -> None:
            if name in fixed:
                parts.append(_literal(fixed[name]))
            else:
                parts.append(b"%b")
                order.append(positions[name])

        for name in SCRIPT_KEYS[:-1]:
            add(name)
        parts += [_literal(key) for key in self.static_keys]
        for name in SCRIPT_ARGV:
            add(name)
        template = b"*%d\r\n" % len(parts) + b"".join(parts)
        pick = operator.itemgetter(*order)  # C-level reordering: this runs per request

        def frame(values: Sequence[bytes]) -> bytes:
            command: bytes = template % pick(values)
            return command

        return frame

    def data(self, payload: Mapping[str, Any]) -> bytes:
        """``Job.data`` as ``Job.to_dict`` stores it: serializer((func, None, args, kwargs)) in a zlib
        stream (RQ reads it with ``zlib.decompress``; see ``zlib_stored``)."""
        return zlib_stored(self.serialize((self.func, None, (payload,), {})))


def _literal(value: bytes) -> bytes:
    """A bulk string inside a ``%``-template."""
    return bulk(value).replace(b"%", b"%%")


def zlib_stored(raw: bytes) -> bytes:
    """A valid zlib stream (RFC 1950) holding ``raw`` in uncompressed deflate blocks (RFC 1951 §3.2.4).

    ``zlib.compress`` costs ~20 us per call here even for a few hundred bytes (it sets up a 256 KiB
    deflate state); callback payloads are small, so storing them uncompressed costs a few bytes and
    saves a fifth of the request's CPU. Any ``zlib.decompress`` (RQ's) reads it.
    """
    out = [b"\x78\x01"]
    blocks = [raw[i : i + 65535] for i in range(0, len(raw), 65535)] or [b""]
    for n, block in enumerate(blocks):
        size = len(block)
        out.append(struct.pack("<BHH", 1 if n == len(blocks) - 1 else 0, size, size ^ 0xFFFF))
        out.append(block)
    out.append(struct.pack(">I", zlib.adler32(raw)))
    return b"".join(out)


class JobRecorder:
    """Builds ``JobScript``s with RQ's own API (``Queue.create_job`` + ``Queue.enqueue_job``).

    ``timeout``, ``result_ttl``, ``failure_ttl`` and ``retry`` go through ``create_job`` like any RQ job
    option, so they become static fields of the template (and of the verification against RQ's bytes).
    With the TTLs RQ expires the job hash and its ``rq:results:<id>`` record once the job finished or
    failed; without them a failed job would be kept a year and its failure record forever. With the retry
    fields (``contract.abandoned_job_retry``) RQ's own abandoned-job cleanup re-queues a job whose worker
    died instead of failing it."""

    def __init__(
        self,
        queue_name: str,
        *,
        timeout: int | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        retry: Retry | None = None,
    ) -> None:
        self._client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=_NeverConnect))
        self.queue = Queue(queue_name, connection=self._client, serializer=JOB_SERIALIZER)
        # Only used to pick command variants; avoids an INFO round trip (never persisted on the job).
        self.queue.redis_server_version = (7, 0, 0)
        self.timeout, self.result_ttl, self.failure_ttl = timeout, result_ttl, failure_ttl
        self.retry = retry

    @classmethod
    def from_settings(cls, settings: Settings) -> JobRecorder:
        """The recorder of ``BRIDGE_QUEUE`` with the job options every bridge job carries."""
        return cls(
            settings.bridge_queue,
            timeout=settings.job_timeout_seconds,
            result_ttl=settings.job_result_ttl_seconds,
            failure_ttl=settings.job_failure_ttl_seconds,
            retry=abandoned_job_retry(settings),
        )

    def record(self, func: str, payload: Any, job_id: str, description: str) -> list[list[bytes]]:
        """The commands RQ would send to enqueue this job, encoded as redis-py would send them."""
        pipe = self._client.pipeline(transaction=False)
        job = self.queue.create_job(
            func, args=(payload,), job_id=job_id, description=description, timeout=self.timeout,
            result_ttl=self.result_ttl, failure_ttl=self.failure_ttl, retry=self.retry,
        )  # fmt: skip
        self.queue.enqueue_job(job, pipeline=pipe)
        return [[_encode(arg) for arg in args] for args, _options in pipe.command_stack]

    def script(self, func: str) -> JobScript:
        first = self.record(func, {"probe": 1}, "probe-job-a", "probe a")
        second = self.record(func, {"probe": [2, "two"]}, "probe-job-b", "probe b")
        used = {command[0].decode().upper() for command in first}
        if not used <= ALLOWED_COMMANDS or "RPUSH" not in used or len(first) != len(second):
            raise RuntimeError(
                f"RQ enqueue issues unexpected commands {sorted(used)}; review receiver.intake.rqjob"
            )
        job_key_a = (JOB_KEY_PREFIX + "probe-job-a").encode()
        job_key_b = (JOB_KEY_PREFIX + "probe-job-b").encode()
        static_keys: list[bytes] = []
        template: list[list[Slot]] = []
        for a, b in zip(first, second, strict=True):
            if len(a) != len(b) or a[0] != b[0]:
                raise RuntimeError("RQ enqueue commands differ between jobs; review receiver.intake.rqjob")
            key: Slot
            if (a[1], b[1]) == (job_key_a, job_key_b):
                key = ("k", _KEY["job_key"])
            elif a[1] == b[1]:
                if a[1] not in static_keys:
                    static_keys.append(a[1])
                key = ("k", _KEY[STATIC_KEYS] + static_keys.index(a[1]))
            else:
                raise RuntimeError(f"unexpected per-job key in {a[0]!r}; review receiver.intake.rqjob")
            row: list[Slot] = [a[0], key]
            for i in range(2, len(a)):
                if a[0].upper() == b"HSET" and i % 2 == 1 and a[i - 1] in _FIELD_SLOTS:
                    row.append(("a", _FIELD_SLOTS[a[i - 1]]))
                elif (a[i], b[i]) == (b"probe-job-a", b"probe-job-b"):
                    row.append(("a", _ARG["job_id"]))
                elif a[i] == b[i]:
                    row.append(a[i])
                else:
                    raise RuntimeError(f"unexpected per-job value in {a[0]!r}; review receiver.intake.rqjob")
            template.append(row)
        source = _lua(template)
        script = JobScript(
            func=func,
            source=source,
            sha=hashlib.sha1(source.encode()).hexdigest(),  # noqa: S324 - Redis' script id
            static_keys=tuple(static_keys),
            serialize=self.queue.serializer.dumps,
        )
        self._verify(script, template)
        return script

    def _verify(self, script: JobScript, template: list[list[Slot]]) -> None:
        """Rendering the template must reproduce RQ's own bytes for a fresh job."""
        payload = {"event_id": "verify", "body": {"nested": [1, 2.5, None, "ü"]}}
        expected = self.record(script.func, payload, "verify-job", "verify description")
        fields = {c[i - 1]: c[i] for c in expected if c[0].upper() == b"HSET" for i in range(3, len(c), 2)}
        values = {
            "dedupe": b"dedupe",
            "job_key": (JOB_KEY_PREFIX + "verify-job").encode(),
            "ttl": b"ttl",
            "stamp": b"stamp",
            "job_id": b"verify-job",
            "created_at": fields[b"created_at"],
            "enqueued_at": fields[b"enqueued_at"],
            "data": script.data(payload),
            "description": b"verify description",
        }
        keys = [values[name] for name in SCRIPT_KEYS[:-1]] + list(script.static_keys)
        argv = [values[name] for name in SCRIPT_ARGV]

        def value(slot: Slot) -> bytes:
            if isinstance(slot, bytes):
                return slot
            return keys[slot[1] - 1] if slot[0] == "k" else argv[slot[1] - 1]

        rendered = [[value(slot) for slot in row] for row in template]
        for commands in (rendered, expected):  # compare job data uncompressed (compression may differ)
            for command in commands:
                for i in range(3, len(command), 2):
                    if command[0].upper() == b"HSET" and command[i - 1] == b"data":
                        command[i] = zlib.decompress(command[i])
        if rendered != expected:
            raise RuntimeError(
                "RQ job template does not reproduce RQ's enqueue; review receiver.intake.rqjob"
            )


def _lua(template: list[list[Slot]]) -> str:
    def arg(slot: Slot) -> str:
        if isinstance(slot, bytes):
            return _lua_string(slot)
        return f"{'KEYS' if slot[0] == 'k' else 'ARGV'}[{slot[1]}]"

    dedupe, stamp, ttl = f"KEYS[{_KEY['dedupe']}]", f"ARGV[{_ARG['stamp']}]", f"ARGV[{_ARG['ttl']}]"
    lines = [
        f"-- KEYS: {', '.join(SCRIPT_KEYS)}. ARGV: {', '.join(SCRIPT_ARGV)}",
        # Dedupe key checked first and written LAST: a command failing half-way (only possible with a
        # corrupted key type) leaves no dedupe key, so the delivery can be retried. Under maxmemory
        # Redis refuses the script at its first write, so an OOM writes nothing.
        f"if redis.call('EXISTS', {dedupe}) == 1 then return 0 end",
    ]
    lines += [f"redis.call({', '.join(arg(slot) for slot in row)})" for row in template]
    lines += [f"redis.call('SET', {dedupe}, {stamp}, 'EX', {ttl})", "return 1"]
    return "\n".join(lines) + "\n"
