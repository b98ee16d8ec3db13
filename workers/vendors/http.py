"""Objects that own sockets (pooled HTTP clients), shared within one process and never across a fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ProcessLocal(Generic[T]):
    """``get(key, factory)``: one object per key for the current process.

    A forked RQ work-horse must not reuse its parent's sockets, so entries made by another pid are
    dropped (without closing: the parent still owns them) the first time the child asks.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[int, Hashable], T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        pid = os.getpid()
        with self._lock:
            item = self._items.get((pid, key))
            if item is None:
                for stale in [k for k in self._items if k[0] != pid]:
                    del self._items[stale]
                item = factory()
                self._items[(pid, key)] = item
            return item
