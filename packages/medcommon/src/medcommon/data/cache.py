"""Caching decoded images: decoding DICOM/NIfTI each epoch dominates small-model training."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medcommon.fs import atomic_path


class ArrayCache:
    """An LRU of decoded arrays in memory, optionally backed by ``.npy`` files on disk.

    Keys are ``(path, size, mtime)`` so an edited file is decoded again. The disk
    tier stores plain ``.npy`` arrays read with ``allow_pickle=False``.

    Args:
        loader: ``path -> np.ndarray`` (e.g. ``lambda p: read_image(p).array``).
        max_items: entries kept in memory (0 disables the memory tier).
        cache_dir: a folder for the disk tier, or None.
    """

    def __init__(
        self,
        loader: Callable[[Path], np.ndarray],
        max_items: int = 1024,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.loader = loader
        self.max_items = max_items
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _key(self, path: Path) -> tuple[Any, ...]:
        st = os.stat(path)
        return (str(path.resolve()), st.st_size, st.st_mtime_ns)

    def __call__(self, path: str | Path) -> np.ndarray:
        path = Path(path)
        key = self._key(path)
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        arr = None
        disk = None
        if self.cache_dir is not None:
            digest = hashlib.sha1(repr(key).encode()).hexdigest()
            disk = self.cache_dir / f"{digest}.npy"
            if disk.is_file():
                arr = np.load(disk, allow_pickle=False)
                self.hits += 1
        if arr is None:
            self.misses += 1
            arr = np.asarray(self.loader(path))
            if disk is not None:
                with atomic_path(disk) as tmp:
                    np.save(tmp, arr, allow_pickle=False)
        if self.max_items > 0:
            self._memory[key] = arr
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)
        return arr
