"""Arrays of features files read lazily, behind one in-RAM cache bounded in bytes.

A real cohort (1,000 slides, 10-30k HR patches of 768-d each) does not fit in RAM, so nothing
holds it: the store reads a dataset (`features`, `parent`, `layers/<name>`, a group of a run's
own files...) from its HDF5 file when it is asked for, and keeps what it read in a least-
recently-used cache of at most `cache_bytes` (0: no cache; the OS page cache still helps).

Every file's identity (size, mtime) is recorded the first time the store opens it and checked
at every access: a features file replaced under a running job is refused, instead of training
on two versions of a slide. Files are opened per read, so no HDF5 handle crosses a fork into a
DataLoader worker (each worker opens its own).

`stream(items)` yields the arrays of many items in order: cached ones from RAM, the others read
ahead by `workers` DataLoader processes (`prefetch` items each). What an item reads from the
cache is pinned until it is yielded, so reading ahead never evicts what is about to be used and
the cache never grows past its budget.

The reader processes are started once, by the store's first stream, and serve every later one
(`close()` ends them). A worker forked per stream would be forked from a process holding a
training batch, and keep that batch's pages alive after the parent freed them: two such
workers were 300 MB of a 160-slide run's 830 MB (bench/results/memory.md).

A store also fixes glibc's mmap threshold (`release_freed_arrays`): without it a run's RSS grew
with the number of slides it had streamed (bench/results/memory.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lrmil.data.features import attr_value
from lrmil.errors import FileFormatError, LrmilError

ArrayKey = tuple[str, str]  # (file path, dataset path inside the file)

GIB = 1 << 30
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_malloc_fixed = False


def release_freed_arrays() -> None:
    """Give every allocation of 1 MiB or more its own mapping, returned to the OS when freed.

    glibc raises its mmap threshold to the largest block freed (up to 32 MiB), so once the
    first slide's arrays are freed the next slides' come from the heap, which fragments and is
    not trimmed: the process grew by ~2 MB per slide streamed (160 slides: 855 MB of RSS
    against 545 MB for 10; fixed, 567 MB). Idempotent; forked DataLoader workers inherit it;
    a no-op where the C library has no mallopt (not glibc)."""
    global _malloc_fixed
    if _malloc_fixed:
        return
    _malloc_fixed = True
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def default_cache_bytes() -> int:
    """The smaller of 25% of the machine's RAM and 8 GiB."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(ram // 4, 8 * GIB)


@dataclass(frozen=True)
class FileIdentity:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise FileFormatError(f"features file {path} does not exist") from None
        return cls(stat.st_size, stat.st_mtime_ns)


@dataclass
class FileInfo:
    """What a file says without reading its data: attrs and each dataset's shape and dtype."""

    path: str
    attrs: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]


def _open(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FileFormatError(f"features file {path} is not a readable HDF5 file ({exc})") from None


def _check_identity(path: str, expected: FileIdentity) -> None:
    now = FileIdentity.of(path)
    if now != expected:
        raise FileFormatError(
            f"features file {path} changed while this run was using it (size {expected.size} "
            f"-> {now.size}, mtime {expected.mtime_ns / 1e9:.0f} -> {now.mtime_ns / 1e9:.0f}): "
            "do not rewrite a cohort's features during a run; start it again")


def read_array(key: ArrayKey, identity: FileIdentity) -> np.ndarray:
    """One dataset, as stored (float16 stays float16), checked: the file is the one the run
    first opened, and floating values are finite (the row of the first bad value is named)."""
    path, name = key
    _check_identity(path, identity)
    with _open(path) as fh:
        if name not in fh:
            raise FileFormatError(f"features file {path} has no dataset {name!r}")
        values = np.asarray(fh[name][()])
    _check_identity(path, identity)  # not rewritten while it was read
    if name == "features" and values.ndim == 3 and values.shape[0] == 1:
        values = values[0]  # some extractors keep a batch axis
    if values.dtype.kind == "f" and values.size:
        bad = ~np.isfinite(values)
        if bad.any():
            rows = np.unique(np.nonzero(bad.reshape(len(values), -1))[0])
            raise FileFormatError(f"features file {path}: {name!r} contains NaN/inf in "
                                  f"{len(rows)} row(s), first at row {rows[0]}")
    return values


class _Failure:
    """A known error raised in a worker, carried back whole (the DataLoader would otherwise
    re-raise it wrapped in a worker traceback)."""

    def __init__(self, error: LrmilError) -> None:
        self.error = error


Request = tuple[list[ArrayKey], dict[str, FileIdentity]]  # the keys of an item, their files


class _Reads(Dataset):
    """`reads[request]`: the arrays of one item, read in a reader process."""

    def __getitem__(self, request: Request) -> list[np.ndarray] | _Failure:
        keys, identities = request
        try:
            return [read_array(key, identities[key[0]]) for key in keys]
        except LrmilError as exc:
            return _Failure(exc)


class _Requests(Sampler):
    """The items the readers read next: the current stream's, set before it starts."""

    def __init__(self) -> None:
        self.items: list[Request] = []

    def __iter__(self) -> Iterator[Request]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _as_numpy(value: Any) -> np.ndarray:
    """Worker results arrive as tensors in shared memory: copy them out, so the cache does not
    hold one shared-memory file descriptor per array."""
    if isinstance(value, torch.Tensor):
        return value.numpy().copy()
    return value


class FeatureStore:
    """Lazy, checked reads of HDF5 datasets behind a byte-bounded LRU cache (module doc)."""

    def __init__(self, cache_bytes: int = 0, workers: int = 0, prefetch: int = 2) -> None:
        if cache_bytes < 0 or workers < 0 or prefetch < 1:
            raise ValueError("cache_bytes and workers must be >= 0 and prefetch >= 1")
        release_freed_arrays()
        self.cache_bytes, self.workers, self.prefetch = cache_bytes, workers, prefetch
        self._identities: dict[str, FileIdentity] = {}
        self._cache: OrderedDict[ArrayKey, np.ndarray] = OrderedDict()
        self._pins: Counter[ArrayKey] = Counter()
        self.cached_bytes = 0
        self.reads = 0  # arrays read from disk (tests, benchmarks)
        self._requests = _Requests()
        self._readers: DataLoader | None = None  # started by the first stream (module doc)
        self._streaming = False  # the readers serve one stream at a time

    def close(self) -> None:
        """End the reader processes (a later stream starts them again)."""
        self._readers = None  # its iterator's finaliser shuts the workers down

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def identity(self, path: str | Path) -> FileIdentity:
        """The file's identity, recorded at its first use by this store."""
        path = str(path)
        if path not in self._identities:
            self._identities[path] = FileIdentity.of(path)
        return self._identities[path]

    def forget(self, path: str | Path) -> None:
        """Drop a file the run itself rewrites (its cached arrays and recorded identity)."""
        path = str(path)
        self._identities.pop(path, None)
        for key in [k for k in self._cache if k[0] == path]:
            self.cached_bytes -= self._cache.pop(key).nbytes

    def inspect(self, path: str | Path) -> FileInfo:
        """Attrs (the root's over the datasets', as TRIDENT and CLAM keep them on `coords` and
        `features`) and the shape and dtype of every dataset, without reading any data."""
        path = str(path)
        identity = self.identity(path)
        with _open(path) as fh:
            attrs: dict[str, Any] = {}
            for name in ("coords", "features"):
                if isinstance(fh.get(name), h5py.Dataset):
                    attrs.update({k: attr_value(v) for k, v in fh[name].attrs.items()})
            attrs.update({k: attr_value(v) for k, v in fh.attrs.items()})
            shapes, dtypes = {}, {}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    shapes[name], dtypes[name] = tuple(obj.shape), obj.dtype

            fh.visititems(visit)
        _check_identity(path, identity)
        return FileInfo(path, attrs, shapes, dtypes)

    def read(self, key: ArrayKey) -> np.ndarray:
        """One dataset (as stored), from the cache or the file."""
        (found,) = list(self.stream([[key]], workers=0))
        return found[0]

    def stream(self, items: Sequence[Sequence[ArrayKey]], workers: int | None = None
               ) -> Iterator[list[np.ndarray]]:
        """The arrays of every item, in order (module doc). `workers` overrides the store's."""
        workers = self.workers if workers is None else workers
        items = [[(str(p), n) for p, n in keys] for keys in items]
        missing: list[list[ArrayKey]] = []
        for keys in items:
            missing.append([k for k in keys if k not in self._cache])
            self._pins.update(k for k in keys if k in self._cache)
        to_read = [m for m in missing if m]
        for keys in to_read:
            for path, _ in keys:
                self.identity(path)
        requests = [(keys, {p: self._identities[p] for p, _ in keys}) for keys in to_read]
        # A stream started inside another (its consumer reading something else meanwhile)
        # reads in this process: the readers serve the outer one.
        use_readers = bool(to_read) and workers > 0 and not self._streaming
        loader: Iterator[list[np.ndarray] | _Failure]
        if use_readers:
            self._streaming = True
            loader = self._read_ahead(requests, workers)
        else:  # read in this process, one item at a time as they are needed
            reads = _Reads()
            loader = (reads[request] for request in requests)
        done = 0  # items before this one have released their pins
        try:
            for i, (keys, need) in enumerate(zip(items, missing, strict=True)):
                done = i
                fresh: dict[ArrayKey, np.ndarray] = {}
                if need:
                    got = next(loader)
                    if isinstance(got, _Failure):
                        raise got.error
                    fresh = dict(zip(need, map(_as_numpy, got), strict=True))
                    self.reads += len(fresh)
                arrays = [fresh[key] if key in fresh else self._hit(key) for key in keys]
                self._release(keys, need)
                done = i + 1
                for key, value in fresh.items():
                    self._insert(key, value)
                yield arrays
        except Exception:
            if use_readers:
                self.close()  # a reader that died leaves the loader unusable: start afresh
            raise
        finally:
            for keys, need in zip(items[done:], missing[done:], strict=True):
                self._release(keys, need)
            if use_readers:
                self._streaming = False

    def _read_ahead(self, requests: list[Request], workers: int
                    ) -> Iterator[list[np.ndarray] | _Failure]:
        """The requests read by the reader processes, in order (started here the first time;
        a store asked for another number of workers restarts them)."""
        if self._readers is None or self._readers.num_workers != workers:
            self._readers = DataLoader(_Reads(), batch_size=None, sampler=self._requests,
                                       num_workers=workers, prefetch_factor=self.prefetch,
                                       persistent_workers=True)
        self._requests.items = requests
        return iter(self._readers)

    def _hit(self, key: ArrayKey) -> np.ndarray:
        _check_identity(key[0], self._identities[key[0]])
        self._cache.move_to_end(key)
        return self._cache[key]

    def _release(self, keys: list[ArrayKey], need: list[ArrayKey]) -> None:
        """Unpin what an item took from the cache."""
        for key in keys:
            if key not in need:
                self._pins[key] -= 1
                if self._pins[key] <= 0:
                    del self._pins[key]

    def _insert(self, key: ArrayKey, value: np.ndarray) -> None:
        """Cache `value` if it fits in the budget after evicting least-recently-used arrays
        that no running stream has pinned."""
        if key in self._cache or value.nbytes > self.cache_bytes:
            return
        victims, freed = [], 0
        for old, array in self._cache.items():
            if self.cached_bytes - freed + value.nbytes <= self.cache_bytes:
                break
            if old not in self._pins:
                victims.append(old)
                freed += array.nbytes
        if self.cached_bytes - freed + value.nbytes > self.cache_bytes:
            return
        for old in victims:
            del self._cache[old]
        self.cached_bytes += value.nbytes - freed
        self._cache[key] = value
