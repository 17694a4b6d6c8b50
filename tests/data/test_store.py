import os
import time

import h5py
import numpy as np
import pytest

from lrmil.data import Features, write_features
from lrmil.data.store import FeatureStore, default_cache_bytes
from lrmil.errors import FileFormatError


@pytest.fixture
def files(tmp_path):
    """Four features files of 100 x 8 float16 (1,600 bytes each), values = slide index."""
    paths = []
    for i in range(4):
        path = tmp_path / f"s{i}.h5"
        coords = np.zeros((100, 2), np.int64)
        write_features(path, Features(np.full((100, 8), i, np.float32), coords,
                                      attrs={"encoder": "toy"}), dtype="float16")
        paths.append(str(path))
    return paths


def key(path):
    return (path, "features")


def test_reads_lazily_as_stored(files):
    store = FeatureStore(cache_bytes=10**6)
    info = store.inspect(files[2])
    assert info.shapes["features"] == (100, 8) and info.dtypes["features"] == np.float16
    assert info.attrs["encoder"] == "toy" and store.reads == 0  # metadata only
    values = store.read(key(files[2]))
    assert values.dtype == np.float16 and values.shape == (100, 8) and (values == 2).all()
    assert store.reads == 1
    store.read(key(files[2]))
    assert store.reads == 1 and store.cached_bytes == 1600  # from the cache


def test_evicts_the_least_recently_used_within_the_budget(files):
    store = FeatureStore(cache_bytes=2 * 1600)
    for path in (files[0], files[1], files[0], files[2]):  # s1 is the least recently used
        store.read(key(path))
    assert store.cached_bytes == 3200 and store.reads == 3
    store.read(key(files[0]))
    store.read(key(files[2]))
    assert store.reads == 3  # both cached
    store.read(key(files[1]))
    assert store.reads == 4 and store.cached_bytes <= 3200


def test_no_cache_reads_every_time(files):
    store = FeatureStore(cache_bytes=0)
    for _ in range(3):
        store.read(key(files[0]))
    assert store.reads == 3 and store.cached_bytes == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_yields_in_order_and_never_evicts_what_it_is_about_to_use(files, workers):
    store = FeatureStore(cache_bytes=2 * 1600, workers=workers)
    store.read(key(files[0]))
    store.read(key(files[1]))
    # s0 and s1 are cached and pinned for this stream: reading s2 and s3 first cannot evict them
    order = [files[2], files[3], files[0], files[1]]
    got = [arrays[0][0, 0] for arrays in store.stream([[key(p)] for p in order])]
    assert got == [2, 3, 0, 1]
    assert store.reads == 4 and store.cached_bytes <= 3200
    assert not store._pins  # released once consumed


def test_a_stream_left_early_releases_its_pins(files):
    store = FeatureStore(cache_bytes=4 * 1600)
    for path in files:
        store.read(key(path))
    stream = store.stream([[key(p)] for p in files])
    next(stream)
    stream.close()
    assert not store._pins


def test_a_file_changed_under_a_run_is_detected(files):
    store = FeatureStore(cache_bytes=10**6)
    store.read(key(files[1]))
    with h5py.File(files[1], "a") as fh:
        fh.attrs["touched"] = 1
    stat = os.stat(files[1])
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(FileFormatError, match=r"s1.h5 changed while this run was using it"):
        store.read(key(files[1]))  # even from the cache


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_values_name_the_file_and_row_in_one_line(files, workers):
    with h5py.File(files[3], "a") as fh:
        fh["features"][7, 2] = np.inf
    store = FeatureStore(workers=workers)
    with pytest.raises(FileFormatError) as info:
        list(store.stream([[key(p)] for p in files]))
    assert str(info.value) == (f"features file {files[3]}: 'features' contains NaN/inf in 1 "
                               "row(s), first at row 7")


def test_missing_dataset_and_file(files, tmp_path):
    store = FeatureStore()
    with pytest.raises(FileFormatError, match="has no dataset 'layers/x'"):
        store.read((files[0], "layers/x"))
    with pytest.raises(FileFormatError, match="does not exist"):
        store.read((str(tmp_path / "nope.h5"), "features"))


def test_default_budget():
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_cache_bytes() == min(ram // 4, 8 << 30)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_freed_slide_arrays_return_to_the_os():
    """After a store exists, a freed slide-sized array is unmapped even once a larger one was
    freed (glibc would otherwise have raised its mmap threshold and kept it in the heap); in a
    fresh interpreter, so that no earlier allocation shapes the heap."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from lrmil.data.store import FeatureStore\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "FeatureStore()\n"
        "big = np.ones(16 << 20, np.uint8); del big\n"
        "a = np.ones(4 << 20, np.uint8); before = rss(); del a\n"
        "print(before - rss())\n"
    )
    freed = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert freed >= 4 << 20


def _reader_pids() -> set[int]:
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children()}


def test_reader_processes_start_once_and_serve_every_stream(files):
    """Forked once (module doc: a worker forked per stream keeps the parent's batch alive)."""
    store = FeatureStore(cache_bytes=0, workers=2)
    before = _reader_pids()
    assert [a[0][0, 0] for a in store.stream([[key(p)] for p in files])] == [0, 1, 2, 3]
    readers = _reader_pids() - before
    assert len(readers) == 2
    for order in ([3, 1], [2, 0, 1]):
        got = [a[0][0, 0] for a in store.stream([[key(files[i])] for i in order])]
        assert got == order and _reader_pids() - before == readers
    store.close()
    import gc

    gc.collect()
    deadline = time.monotonic() + 10
    while _reader_pids() & readers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _reader_pids() & readers


def test_a_stream_left_early_or_nested_reads_the_right_arrays(files):
    store = FeatureStore(cache_bytes=0, workers=2)
    first = store.stream([[key(p)] for p in files])
    assert next(first)[0][0, 0] == 0
    # Nested: the readers serve `first`; this one reads in the training process.
    assert [a[0][0, 0] for a in store.stream([[key(files[3])], [key(files[2])]])] == [3, 2]
    assert next(first)[0][0, 0] == 1
    first.close()  # left with items read ahead: the next stream must not get them
    assert [a[0][0, 0] for a in store.stream([[key(files[2])], [key(files[0])]])] == [2, 0]
    store.close()
