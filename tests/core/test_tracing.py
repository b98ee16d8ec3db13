"""Tracing: off, nothing is built or carried; on (the SDK's in-memory exporter), one trace runs from the
receiver's callback through the worker's job to Kiban, Kompliant and the publish."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rq.job import Job

from tests.receiver.conftest import KEY
from tests.support.vendor_rigs import KIBAN_KEY, KibanRig, KompliantRig
from workers.core import tracing
from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import get_settings, load_settings
from workers.sandbox.fakes import kompliant as fake_kompliant
from workers.sandbox.serving import ServerThread

DEFINITION = "def-tracing"
INTERNAL_KEY = "in-74ddd3f76bd2e02188f50fdfe99558f7ede8e15b"
FORM = {"email": "ana@example.com", "first_name": "Ana", "last_name_1": "López"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)


def test_off_nothing_is_built_or_carried(redis_url: str) -> None:
    assert not tracing.active() and not tracing.configure(load_settings(redis_url=redis_url), "worker")
    with tracing.span("anything") as span:
        assert span is None and tracing.traceparent() is None
    assert tracing.job_meta({"a": 1}) == {"a": 1}


def test_one_trace_from_the_callback_to_kiban_kompliant_and_the_publish(
    spans: InMemorySpanExporter,
    kiban: KibanRig,
    kompliant: KompliantRig,
    redis_url: str,
    redis_client: redis.Redis,
    serve_receiver: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "REDIS_URL": redis_url,
        "BRIDGE_KIBAN_BASE_URL": kiban.url,
        "BRIDGE_KIBAN_API_KEY": KIBAN_KEY,
        "BRIDGE_KIBAN_WORKFLOO_DEFINITION_ID": DEFINITION,
        "BRIDGE_KOMPLIANT_BASE_URL": kompliant.server.url,
        "BRIDGE_KOMPLIANT_API_KEY": fake_kompliant.DEFAULT_API_KEY,
        "BRIDGE_KOMPLIANT_SECRET_KEY": fake_kompliant.DEFAULT_SECRET_KEY,
        "BRIDGE_KOMPLIANT_AUTH_TOKEN": fake_kompliant.DEFAULT_AUTH_TOKEN,
        "BRIDGE_KOMPLIANT_ACCOUNT_ID": fake_kompliant.DEFAULT_ACCOUNT_ID,
        "BRIDGE_CALLBACK_KEYS": KEY,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        # An approved execution, finished at the fake Kiban (made without tracing's help: no spans yet).
        client = kiban.make_client()
        tracing.install(None)
        execution_id = client.execute(DEFINITION, scenario_id="approved")
        client.submit_form(execution_id, FORM)
        fake = kiban.state.execution(execution_id)
        kiban.state.finish(fake)
        assert fake.is_terminal
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        tracing.install(provider)

        receiver = serve_receiver(get_settings())
        answer = httpx.post(
            f"{receiver.url}/v1/kiban/status",
            json={"id": execution_id, "status": fake.status},
            headers={"x-api-key": KEY},
        )
        assert answer.status_code == 200, answer.text
        job = Job.fetch(answer.json()["event_id"], connection=redis_client, serializer=JOB_SERIALIZER)
        assert job.args[0]["traceparent"].startswith("00-")
        from workers.runtime.worker import build_worker

        build_worker(redis_client, get_settings(), cls="workers.runtime.worker.BridgeSimpleWorker").work(
            burst=True
        )
        assert job.get_status(refresh=True) == "finished", job.latest_result()
    finally:
        get_settings.cache_clear()

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    names = [span.name for span in finished]
    [callback] = [span for span in finished if span.name == "callback status"]
    assert callback.context is not None
    trace_id = callback.context.trace_id
    by_trace = [span for span in finished if span.context is not None and span.context.trace_id == trace_id]
    assert len(by_trace) == len(finished), names  # one trace, nothing outside it
    [job_span] = [span for span in by_trace if span.name == "job handle_status"]
    assert job_span.parent is not None and job_span.parent.span_id == callback.context.span_id
    vendors = {str(span.attributes.get("workfloo.vendor")) for span in by_trace if span.attributes}
    assert {"kiban", "kompliant"} <= vendors, names
    assert "publish workfloo.completed" in names and any(n.startswith("kompliant POST") for n in names)
    for span in by_trace:  # ids and codes only
        assert "ana@example.com" not in repr(span.attributes) and "López" not in repr(span.attributes)


def test_an_endpoint_turns_tracing_on_with_the_otlp_exporter(redis_url: str) -> None:
    settings = load_settings(redis_url=redis_url, bridge_otlp_endpoint="http://127.0.0.1:9/v1/traces")
    try:
        assert tracing.configure(settings, "worker") and tracing.active()
        assert tracing.configured_endpoint(settings) == "http://127.0.0.1:9/v1/traces"
    finally:
        tracing.install(None)  # no span was made: nothing to export


def test_commands_and_jobs_the_workers_enqueue_carry_the_context(
    spans: InMemorySpanExporter,
    redis_url: str,
    redis_client: redis.Redis,
    serve_receiver: Callable[..., ServerThread],
) -> None:
    from workers.jobs import api

    settings = load_settings(redis_url=redis_url, bridge_internal_keys=INTERNAL_KEY, bridge_callback_keys=KEY)
    receiver = serve_receiver(settings)
    answer = httpx.post(
        f"{receiver.internal_url}/v1/applications", json={"form": {"email": "a@b.co"}},
        headers={"x-api-key": INTERNAL_KEY},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    job = Job.fetch(answer.json()["command_id"], connection=redis_client, serializer=JOB_SERIALIZER)
    [command_span] = [span for span in spans.get_finished_spans() if span.name == "command start_application"]
    assert command_span.context is not None
    assert job.args[0]["traceparent"].split("-")[1] == format(command_span.context.trace_id, "032x")

    with tracing.span("caller") as caller:  # a worker (or a service using the Python API) enqueueing
        assert caller is not None
        enqueued = api.resend_nip(redis_client, "exec-1", settings=settings)
    meta = Job.fetch(enqueued, connection=redis_client, serializer=JOB_SERIALIZER).meta
    assert meta["traceparent"].split("-")[1] == format(caller.get_span_context().trace_id, "032x")


def test_a_failed_job_is_a_failed_span(spans: InMemorySpanExporter, redis_client: redis.Redis) -> None:
    from opentelemetry.trace import StatusCode
    from rq import Queue

    from workers.runtime.worker import build_worker

    queue = Queue("workfloo", connection=redis_client, serializer=JOB_SERIALIZER)
    queue.enqueue("tests.jobs.test_retry.permanent_problem", job_id="probe-traced-failure")
    build_worker(redis_client, load_settings(), cls="workers.runtime.worker.BridgeSimpleWorker").work(
        burst=True
    )
    [job_span] = [span for span in spans.get_finished_spans() if span.name == "job permanent_problem"]
    assert job_span.status.status_code == StatusCode.ERROR and job_span.parent is None  # a trace of its own
    assert {"publish action.failed", "publish job.dead_lettered"} <= {
        s.name for s in spans.get_finished_spans()
    }
