"""The rich progress bar of the per-slide commands (embed, infer), or nothing."""

from __future__ import annotations

import time


class SlideProgress:
    """A bar over slides with the run's patches/s and, once `start_slide` names a slide, a bar
    over that slide's patches. Every method is a no-op when disabled (rich is not imported)."""

    def __init__(self, enabled: bool, n_slides: int, title: str = "slides") -> None:
        self.enabled, self.n_slides, self.title = enabled, n_slides, title

    def __enter__(self) -> SlideProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn())
            self._slides = self._bar.add_task(self.title, total=self.n_slides, rate="")
            self._slide = None
            self._bar.start()
            self._run = self._since_slide = (0, time.perf_counter())
        return self

    def start_slide(self, label: str, n_patches: int) -> None:
        if self.enabled:
            if self._slide is not None:
                self._bar.remove_task(self._slide)
            self._slide = self._bar.add_task(label, total=n_patches, rate="")
            self._since_slide = (0, time.perf_counter())

    def patches(self, n: int) -> None:
        """`n` more patches done (of the current slide, when one was started)."""
        if self.enabled:
            self._run = self._rate(self._slides, self._run, n, advance=False)
            if self._slide is not None:
                self._since_slide = self._rate(self._slide, self._since_slide, n, advance=True)

    def slide_done(self) -> None:
        if self.enabled:
            self._bar.advance(self._slides)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()

    def _rate(self, task: int, count: tuple[int, float], n: int, advance: bool
              ) -> tuple[int, float]:
        done, start = count[0] + n, count[1]
        rate = f"{done / max(time.perf_counter() - start, 1e-9):.0f} patches/s"
        self._bar.update(task, advance=n if advance else 0, rate=rate)
        return done, start
