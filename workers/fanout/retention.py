"""Retention of the event stream and the timelines: trimmed by length and age, never past what a consumer
group still needs, and loudly when the hard cap forces it.

The publisher's ``XADD`` is bounded only by ``Settings.events_stream_bound`` (a tenth above the hard cap,
a backstop). ``trim_events``, run every ``bridge_events_retention_interval_seconds`` by RQ's cron
scheduler (``retain_events``), does the trimming in one Lua call per batch:

1. **hard cap**: above ``bridge_events_stream_hard_maxlen`` entries, the oldest ones go whatever the
   groups did;
2. **losses**: per group, entries it never acknowledged that are gone (trimmed in step 1, earlier by the
   backstop or an operator): undelivered ones (counted exactly for step 1, from Redis's read counters
   for earlier trims) and pending ones (``XPENDING`` below the first entry, then acknowledged). Each loss
   is logged (``events.trimmed_unacked``), added to the ``keys.stream_trimmed_unacked`` counter and
   written to the group's dead-letter stream as one entry naming the lost id range; the group is moved
   to just before the first entry with a matching read counter, so ``XINFO`` lag is right again;
3. **group floor**: the smallest id some group still needs, ``min(oldest pending, last delivered + 1)``
   over every group;
4. **soft trim**: entries older than ``bridge_events_retention_seconds`` and those beyond
   ``events_stream_maxlen`` go, but only below the floor (``XTRIM MINID``).

``trim_timelines`` drops timeline envelopes older than ``events_timeline_ttl_seconds`` (the key's own TTL
covers a whole idle timeline) unless they may still be in the stream for a group (same floor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from rq.job import get_current_job

from workers.core import keys
from workers.core.log import get_logger
from workers.core.settings import Settings, get_settings
from workers.core.timeline import MAX_TIMELINE_EVENTS

log = get_logger(__name__)

BATCH = 2_000
"""Entries trimmed (and lost pending ids acknowledged) per Lua call: a few ms of Redis's time."""

MAX_BATCHES = 500
"""Lua calls per run (a million entries); the next run goes on where this one stopped."""

TIMELINE_SCAN_BUDGET = 10_000
"""Timeline keys looked at per run (a ``SCAN`` cursor kept in Redis resumes the sweep)."""

PUBLISH_SLACK_MS = 60_000
"""How long before its stream entry an event may have been created (``occurred_at``): timeline entries
this much younger than the group floor are kept."""

# KEYS: 1 stream, 2 lost counter hash, 3 default dead-letter stream, then the other dead-letter streams.
# ARGV: 1 now ms, 2 retention ms, 3 maxlen, 4 hard cap, 5 batch, 6 dead-letter maxlen,
#       7 number of groups with a known dead-letter stream (n), then n pairs (group, KEYS index).
# Returns {removed, more (0/1), losses: {group, undelivered, pending, lost_after, lost_before,
#          pending_first, pending_last}...}.
_RETAIN_LUA = """
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function nextid(id)
  local m, s = parse(id)
  if s >= 9007199254740991 then return string.format('%.0f-0', m + 1) end
  return string.format('%.0f-%.0f', m, s + 1)
end
local function previd(id)
  local m, s = parse(id)
  if s > 0 then return string.format('%.0f-%.0f', m, s - 1) end
  return string.format('%.0f', m - 1) .. '-18446744073709551615'
end
local function tomap(flat)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end
local function head(stream, last_generated)
  local rows = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #rows > 0 then return rows[1][1] end
  return nextid(last_generated)
end

local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then return {0, 0, {}} end
local now_ms = tonumber(ARGV[1])
local retention_ms = tonumber(ARGV[2])
local maxlen = tonumber(ARGV[3])
local hard = tonumber(ARGV[4])
local batch = tonumber(ARGV[5])
local dead_maxlen = ARGV[6]
local dead = {}
for i = 0, tonumber(ARGV[7]) - 1 do dead[ARGV[8 + 2 * i]] = KEYS[tonumber(ARGV[9 + 2 * i])] end

local info = tomap(redis.call('XINFO', 'STREAM', stream))
local added = info['entries-added']
local length_before = info['length']
local last_generated = info['last-generated-id']
local first_before = head(stream, last_generated)
local tombstones = less(first_before, info['max-deleted-entry-id'])
local more = 0
local removed = 0

-- 1. the hard cap
local trimmed = {}
if length_before > hard then
  local excess = length_before - hard
  if excess > batch then excess = batch; more = 1 end
  local rows = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
  for i, row in ipairs(rows) do trimmed[i] = row[1] end
  removed = removed + redis.call('XTRIM', stream, 'MINID', nextid(trimmed[#trimmed]))
end
local length = length_before - removed
local first = head(stream, last_generated)

-- 2. what each group lost, reported once; the group then resumes at the first entry left
local losses = {}
for _, raw in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local group = tomap(raw)
  local name = group['name']
  local last = group['last-delivered-id']
  local read = group['entries-read']
  local undelivered = 0
  if less(last, first_before) and read and not tombstones then
    local earlier = added - length_before - read
    if earlier > 0 then undelivered = earlier end
  end
  for _, id in ipairs(trimmed) do
    if less(last, id) then undelivered = undelivered + 1 end
  end
  local rows = redis.call('XPENDING', stream, name, '-', '(' .. first, batch)
  if #rows >= batch then more = 1 end
  local ids = {}
  for i, row in ipairs(rows) do ids[i] = row[1] end
  if #ids > 0 then redis.call('XACK', stream, name, unpack(ids)) end
  if undelivered + #ids > 0 then
    local record = {'reason', 'trimmed_unacked', 'original_stream', stream, 'group', name,
      'undelivered', undelivered, 'lost_after', last, 'lost_before', first, 'pending', #ids}
    if #ids > 0 then
      table.insert(record, 'pending_first'); table.insert(record, ids[1])
      table.insert(record, 'pending_last'); table.insert(record, ids[#ids])
    end
    redis.call('XADD', dead[name] or KEYS[3], 'MAXLEN', '~', dead_maxlen, '*', unpack(record))
    redis.call('HINCRBY', KEYS[2], name, undelivered + #ids)
    table.insert(losses, {name, undelivered, #ids, last, first, ids[1] or '', ids[#ids] or ''})
  end
  if less(last, first) then
    redis.call('XGROUP', 'SETID', stream, name, previd(first), 'ENTRIESREAD', added - length)
  end
end

-- 3. the group floor: the smallest id some group still needs (none when every group is caught up)
local floor = nil
for _, raw in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local group = tomap(raw)
  local need = nextid(group['last-delivered-id'])
  if group['pending'] > 0 then
    local oldest = redis.call('XPENDING', stream, group['name'])[2]
    if less(oldest, need) then need = oldest end
  end
  if floor == nil or less(need, floor) then floor = need end
end
if floor and less(last_generated, floor) then floor = nil end

-- 4. age and length, below the floor, at most one batch per call
local target = string.format('%.0f-0', math.max(0, now_ms - retention_ms))
if length > maxlen then
  local excess = length - maxlen
  if excess > batch then excess = batch end
  -- only entries below the floor can go: never look further
  local rows = redis.call('XRANGE', stream, '-', floor and ('(' .. floor) or '+', 'COUNT', excess)
  if #rows > 0 then
    local cut = nextid(rows[#rows][1])
    if less(target, cut) then target = cut end
  end
end
if floor and less(floor, target) then target = floor end
if less(first, target) then
  local rows = redis.call('XRANGE', stream, '-', '(' .. target, 'COUNT', batch)
  if #rows == batch then target = nextid(rows[batch][1]); more = 1 end
  local soft = 0
  if #rows > 0 then soft = redis.call('XTRIM', stream, 'MINID', target) end
  removed = removed + soft
  length = length - soft
  first = head(stream, last_generated)
  for _, raw in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local group = tomap(raw)
    if less(group['last-delivered-id'], first) then
      redis.call('XGROUP', 'SETID', stream, group['name'], previd(first), 'ENTRIESREAD', added - length)
    end
  end
end
return {removed, more, losses}
"""


@dataclass
class RetentionReport:
    """What one ``trim_events`` run did: entries removed, and per group the unacknowledged ones lost."""

    removed: int = 0
    lost: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupPosition:
    """One consumer group as ``status`` shows it, its lag counted against what is really in the stream."""

    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    lag: int | None
    trimmed_unacked: int


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _less(a: str, b: str) -> bool:
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    return (int(a_ms), int(a_seq or 0)) < (int(b_ms), int(b_seq or 0))


def _id_time(entry_id: Any) -> str:
    """The time part of a stream id, as RFC 3339 UTC with milliseconds."""
    moment = datetime.fromtimestamp(_ms(_text(entry_id)) / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def trim_events(client: redis.Redis, settings: Settings, *, now_ms: int | None = None) -> RetentionReport:
    """Trim the event stream (see the module docstring); ``now_ms`` defaults to Redis's own clock."""
    stream = settings.events_stream
    now = _redis_now_ms(client) if now_ms is None else now_ms
    registered: dict[bytes, bytes] = client.hgetall(keys.stream_groups(stream))  # type: ignore[assignment]
    dead_streams = sorted({_text(v) for v in registered.values()} - {keys.DEAD_LETTER_STREAM})
    keys_ = [stream, keys.stream_trimmed_unacked(stream), keys.DEAD_LETTER_STREAM, *dead_streams]
    args: list[Any] = [
        now,
        settings.bridge_events_retention_seconds * 1000,
        settings.events_stream_maxlen,
        settings.bridge_events_stream_hard_maxlen,
        BATCH,
        settings.events_stream_maxlen,
        len(registered),
    ]
    for registered_group, dead in registered.items():
        dead_key = _text(dead)
        index = 3 if dead_key == keys.DEAD_LETTER_STREAM else 4 + dead_streams.index(dead_key)
        args.extend((_text(registered_group), index))
    script = client.register_script(_RETAIN_LUA)
    report = RetentionReport()
    runs: dict[str, dict[str, Any]] = {}  # per group, this run's losses: one log line each
    for _ in range(MAX_BATCHES):
        removed, more, losses = script(keys=keys_, args=args)
        report.removed += int(removed)
        for raw_name, undelivered, pending, lost_after, lost_before, pending_first, pending_last in losses:
            group = _text(raw_name)
            report.lost[group] = report.lost.get(group, 0) + int(undelivered) + int(pending)
            # Stream ids look like phone numbers to the log redactor: the log names the lost range by
            # time, the dead-letter entries by id.
            seen = runs.setdefault(
                group,
                {"undelivered": 0, "pending": 0, "lost_after_at": _id_time(lost_after), "dead_letters": 0},
            )
            seen["undelivered"] += int(undelivered)
            seen["pending"] += int(pending)
            seen["lost_before_at"] = _id_time(lost_before)
            seen["dead_letters"] += 1
            if pending_first:
                seen.setdefault("pending_first_at", _id_time(pending_first))
                seen["pending_last_at"] = _id_time(pending_last)
        if not int(more):
            break
    for group, seen in runs.items():
        log.warning(
            "events.trimmed_unacked",
            stream=stream,
            group=group,
            hard_maxlen=settings.bridge_events_stream_hard_maxlen,
            **seen,
        )
    if report.removed:
        log.info("events.trimmed", stream=stream, removed=report.removed)
    _forget_destroyed_groups(client, stream, registered)
    return report


def _forget_destroyed_groups(client: redis.Redis, stream: str, registered: dict[bytes, bytes]) -> None:
    """Drop registry fields of groups that no longer exist, so the registry holds live groups only."""
    try:
        live = {_text(g["name"]) for g in client.xinfo_groups(stream)}
    except redis.ResponseError:  # no stream
        return
    gone = [name for name in registered if _text(name) not in live]
    if gone:
        client.hdel(keys.stream_groups(stream), *gone)


def group_floor(client: redis.Redis, settings: Settings) -> str | None:
    """The smallest stream id some consumer group still needs, or None when every group is caught up."""
    stream = settings.events_stream
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(stream)
        last_generated = _text(client.xinfo_stream(stream)["last-generated-id"])
    except redis.ResponseError:  # no stream yet
        return None
    floor: str | None = None
    for group in groups:
        last = _text(group["last-delivered-id"])
        ms, _, seq = last.partition("-")
        need = f"{ms}-{int(seq) + 1}"
        if int(group["pending"]) > 0:
            summary: Any = client.xpending(stream, group["name"])
            oldest = _text(summary["min"])
            if _less(oldest, need):
                need = oldest
        if floor is None or _less(need, floor):
            floor = need
    if floor is not None and _less(last_generated, floor):
        return None
    return floor


def trim_timelines(client: redis.Redis, settings: Settings, *, now_ms: int | None = None) -> int:
    """Drop timeline envelopes older than ``events_timeline_ttl_seconds`` and older than the group floor
    (less ``PUBLISH_SLACK_MS``); looks at up to ``TIMELINE_SCAN_BUDGET`` keys, resuming where the last
    run stopped. Returns how many envelopes went."""
    now = _redis_now_ms(client) if now_ms is None else now_ms
    cutoff = now - settings.events_timeline_ttl_seconds * 1000
    floor = group_floor(client, settings)
    if floor is not None:
        cutoff = min(cutoff, _ms(floor) - PUBLISH_SLACK_MS)
    raw_cursor = client.get(keys.TIMELINE_SWEEP_CURSOR)
    cursor = int(raw_cursor) if raw_cursor else 0
    seen = 0
    removed = 0
    while True:
        cursor, names = client.scan(cursor, match=keys.timeline("*"), count=500)
        for name in names:
            removed += _trim_timeline(client, _text(name), cutoff)
        seen += len(names)
        if cursor == 0 or seen >= TIMELINE_SCAN_BUDGET:
            break
    client.set(keys.TIMELINE_SWEEP_CURSOR, cursor, ex=24 * 3600)
    return removed


def _trim_timeline(client: redis.Redis, name: str, cutoff_ms: int) -> int:
    raw: list[bytes] = client.lrange(name, 0, MAX_TIMELINE_EVENTS - 1)  # type: ignore[assignment]
    old = 0
    for item in raw:  # publish order: the old ones come first
        try:
            occurred = orjson.loads(item).get("occurred_at")
            at_ms = _iso_ms(occurred)
        except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
            break
        if at_ms >= cutoff_ms:
            break
        old += 1
    if old:
        client.ltrim(name, old, -1)  # appends at the tail do not move the head: safe without a lock
    return old


def _iso_ms(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def lost_counts(client: redis.Redis, settings: Settings) -> dict[str, int]:
    """Per group, entries it never acknowledged that were trimmed or deleted (since the counter began)."""
    raw: dict[bytes, bytes] = client.hgetall(keys.stream_trimmed_unacked(settings.events_stream))  # type: ignore[assignment]
    return {_text(k): int(v) for k, v in raw.items()}


def group_positions(client: redis.Redis, settings: Settings) -> list[GroupPosition]:
    """Every consumer group of the stream, with a lag that counts only entries still in the stream.

    A group whose last delivered id is below the stream's first entry has every entry left to read
    (Redis's own lag would still count the trimmed ones); otherwise Redis's lag, bounded by the length.
    """
    stream = settings.events_stream
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(stream)
    except redis.ResponseError:  # no stream yet
        return []
    length = int(client.xlen(stream))
    head: Any = client.xrange(stream, count=1)
    first = _text(head[0][0]) if head else None
    lost = lost_counts(client, settings)
    positions = []
    for group in groups:
        name = _text(group["name"])
        last = _text(group["last-delivered-id"])
        lag: int | None
        if first is None:
            lag = 0
        elif _less(last, first):
            lag = length
        else:
            raw_lag = group.get("lag")
            lag = None if raw_lag is None else min(int(raw_lag), length)
        positions.append(
            GroupPosition(
                name=name,
                consumers=int(group["consumers"]),
                pending=int(group["pending"]),
                last_delivered_id=last,
                lag=lag,
                trimmed_unacked=lost.get(name, 0),
            )
        )
    return positions


def retain_events() -> dict[str, Any]:
    """The cron job (``workfloo-bridge scheduler``): ``trim_events`` then ``trim_timelines``."""
    settings = get_settings()
    job = get_current_job()
    if job is not None:
        client: redis.Redis = job.connection
    else:  # run by hand
        from workers.core.redis_client import redis_from_url

        client = redis_from_url(settings.redis_url or "", settings=settings)
    report = trim_events(client, settings)
    timeline_entries = trim_timelines(client, settings)
    return {"removed": report.removed, "lost": report.lost, "timeline_entries_removed": timeline_entries}
