"""SIGKILL of a command's main process leaves no lrmil process behind (its worker processes
die with it), and the next run removes the temporary files it left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from runner_helpers import lrmil_command, marked_env, marked_processes, wait_for


def _kill_once_workers_run(args: list[object], workers: int) -> None:
    env, mark = marked_env()
    main = subprocess.Popen(lrmil_command(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # the main process, its workers (and multiprocessing's resource tracker)
        wait_for(lambda: len(marked_processes(mark)) > workers, 120, "the worker processes")
        os.kill(main.pid, signal.SIGKILL)
        main.wait(timeout=30)
        wait_for(lambda: not marked_processes(mark), 30,
                 "the worker processes to end after their parent was killed")
    finally:
        for pid in marked_processes(mark):  # never leave them to the rest of the suite
            os.kill(pid, signal.SIGKILL)


def test_sigkill_of_tile_leaves_no_process(tmp_path, synth_slide_path):
    src = tmp_path / "slides"
    src.mkdir()
    for i in range(6):
        shutil.copy(synth_slide_path, src / f"s{i}.svs")
    _kill_once_workers_run(["tile", src, "--out", tmp_path / "out", "--workers", 2], 2)


def test_sigkill_of_synth_leaves_no_process_and_rerun_cleans_up(tmp_path):
    out = tmp_path / "cohort"
    _kill_once_workers_run(["synth", out, "--slides", 4, "--size", 4096, "--workers", 2], 2)
    leftovers = [p for p in (out / "slides").iterdir() if ".tmp-" in p.name]
    from lrmil.synth.cohort import make_cohort

    make_cohort(out, n_slides=1, seed=0, width=256, height=256)
    assert not [p for p in (out / "slides").iterdir() if ".tmp-" in p.name], leftovers


def test_dataloader_workers_die_with_their_parent(tmp_path):
    """A process iterating a DataLoader with lrmil's worker_init_fn, SIGKILLed: its loader
    workers end (torch's own watchdog never looks while a worker is busy reading)."""
    workers = 2
    script = tmp_path / "loader.py"
    script.write_text(
        "import time, torch\n"
        "from torch.utils.data import DataLoader, Dataset\n"
        "from lrmil.utils.processes import dataloader_worker_init\n"
        "class Slow(Dataset):\n"
        "    def __len__(self): return 10**6\n"
        "    def __getitem__(self, i): time.sleep(3600); return i\n"
        f"loader = DataLoader(Slow(), num_workers={workers}, "
        "worker_init_fn=dataloader_worker_init())\n"
        "next(iter(loader))\n"
    )
    env, mark = marked_env()
    main = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        wait_for(lambda: len(marked_processes(mark)) > workers, 120, "the loader workers")
        os.kill(main.pid, signal.SIGKILL)
        main.wait(timeout=30)
        wait_for(lambda: not marked_processes(mark), 30, "the loader workers to end")
    finally:
        for pid in marked_processes(mark):
            os.kill(pid, signal.SIGKILL)
