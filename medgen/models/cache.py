"""A batch command's model, loaded once per process and shared by its cases.

``translate``, ``segment`` and ``segment-mr`` load their bundle once up front (a bad model is one
error, not one per case) and every case reuses it: in this process, in each pool worker (one load
per worker), or by every thread of ``--executor threads`` (one load, under a lock, so two threads
never load it twice or see it half-replaced).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["ModelCache"]


class ModelCache:
    """One cached value per process, reloaded when its key changes; thread-safe.

    Examples:
        >>> loads = []
        >>> cache = ModelCache()
        >>> cache.get("a", lambda: loads.append("a") or "model a")
        'model a'
        >>> cache.get("a", lambda: loads.append("again") or "model a")
        'model a'
        >>> cache.get("b", lambda: loads.append("b") or "model b"), loads
        ('model b', ['a', 'b'])
    """

    _EMPTY = object()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Hashable = self._EMPTY
        self._value: Any = None

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The value for ``key``: ``load()``'s result, called only when ``key`` is not the cached one."""
        with self._lock:
            if self._key is self._EMPTY or self._key != key:
                self._key, self._value = self._EMPTY, None  # a failed load leaves nothing stale behind
                self._value = load()
                self._key = key
            return self._value

    def clear(self) -> None:
        """Forget the value (the next :meth:`get` loads again: the bundle on disk may have changed)."""
        with self._lock:
            self._key, self._value = self._EMPTY, None
