"""The one slide runner of tile, embed and infer: slide list -> claim -> work -> atomic write ->
result, with a run record per process, one errors.csv format, torchrun ranks and shards."""

from lrmil.runner.core import (
    Done,
    Existing,
    SlideItem,
    SlideJob,
    check_out_dir,
    run_slides,
    slide_items,
    worker_pool,
)
from lrmil.runner.identity import FileIdentity, resolve
from lrmil.runner.record import RunSummary, SlideResult

__all__ = [
    "Done",
    "Existing",
    "FileIdentity",
    "RunSummary",
    "SlideItem",
    "SlideJob",
    "SlideResult",
    "check_out_dir",
    "resolve",
    "run_slides",
    "slide_items",
    "worker_pool",
]
