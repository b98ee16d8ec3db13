"""Outbound callbacks of the fakes, sent from one background thread with its own ``httpx.Client``.

Request handling never waits for a callback target: handlers enqueue and return. One thread keeps the
deliveries in order (PENDING before SENT before SUCCESS), each attempt bounded by ``timeout``. Every
attempt is recorded (``records``) so tests can assert what was sent, dropped or duplicated.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from workers.sandbox.fakes.faults import Faults


@dataclass
class Delivery:
    kind: str  # "status" | "nip" | "finished"
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    execution_id: str | None = None
    on_result: Callable[[int | None], None] | None = None


@dataclass
class DeliveryRecord:
    kind: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    execution_id: str | None
    copy: int  # 1-based; 0 when dropped
    dropped: bool = False
    status_code: int | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        """JSON view for ``/_fake/deliveries`` (header values of keys are masked)."""
        return {
            "kind": self.kind,
            "url": self.url,
            "headers": mask_headers(self.headers),
            "body": self.body,
            "execution_id": self.execution_id,
            "copy": self.copy,
            "dropped": self.dropped,
            "status_code": self.status_code,
            "error": self.error,
        }


_STOP = object()


class CallbackSender:
    def __init__(self, faults: Faults, *, timeout: float = 2.0) -> None:
        self.faults = faults
        self.timeout = timeout
        self.records: list[DeliveryRecord] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending = 0

    def submit(self, delivery: Delivery) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fake-callbacks", daemon=True)
                self._thread.start()
        self._queue.put(delivery)

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._pending == 0

    def snapshot(self) -> list[DeliveryRecord]:
        with self._lock:
            return list(self.records)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()

    def close(self, timeout: float = 5.0) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        limit = httpx.Timeout(self.timeout)
        with httpx.Client(timeout=limit) as client:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                try:
                    self._deliver(client, item)
                finally:
                    with self._lock:
                        self._pending -= 1

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        copies = self.faults.callback_copies()

        def record_of(copy: int, dropped: bool = False) -> DeliveryRecord:
            return DeliveryRecord(
                kind=delivery.kind,
                url=delivery.url,
                headers=delivery.headers,
                body=delivery.body,
                execution_id=delivery.execution_id,
                copy=copy,
                dropped=dropped,
            )

        if copies == 0:
            with self._lock:
                self.records.append(record_of(0, dropped=True))
            if delivery.on_result:
                delivery.on_result(None)
            return
        first_status: int | None = None
        for copy in range(1, copies + 1):
            record = record_of(copy)
            try:
                response = client.post(delivery.url, json=delivery.body, headers=delivery.headers)
                record.status_code = response.status_code
            except httpx.HTTPError as exc:
                record.error = type(exc).__name__
            if copy == 1:
                first_status = record.status_code
            with self._lock:
                self.records.append(record)
        if delivery.on_result:
            delivery.on_result(first_status)


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if "key" in k.lower() else v) for k, v in headers.items()}
