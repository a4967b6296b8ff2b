"""One cache of loaded weights for every kind (cell classifier, tumor-mask model, nuclei U-Net), keyed on the
file's identity: a file rewritten at the same path (retraining into the same checkpoint) is
another model and is loaded again, never served from the cache of that path."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, TypeVar

from .checkpoint import file_identity

T = TypeVar("T")


class WeightsCache:
    """Least-recently-used loaded models, keyed on (kind, path, device, file identity).

    Loading failures are not cached (the next call tries again and raises the same clear error);
    a loader may return an error object instead of raising when a failure must be remembered
    (the nuclei U-Net: ``auto`` asks on every call whether the shipped weights fit the network).
    """

    def __init__(self, maxsize: int = 6):
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, path, device: str, load: Callable[[], T]) -> T:
        key = (kind, str(path), device, file_identity(path))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model = load()  # outside the lock: loading takes seconds and may raise
        with self._lock:
            self._items[key] = model
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return model

    def size(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for k in self._items if kind is None or k[0] == kind)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: The process's cache, shared by the dock, the command line and every tile.
weights_cache = WeightsCache()
