"""The bags of a MIL model (teacher, baseline, student), read slide by slide through the
feature store and packed into batches with offsets: the cohort is never held."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lrmil.data.store import ArrayKey, FeatureStore
from lrmil.distill.cohort import Cohort
from lrmil.mil import Bag, Batch, InputStats, collate


def as_float(values: np.ndarray) -> torch.Tensor:
    """Stored features (float16 or float32) as a float32 tensor."""
    return torch.from_numpy(values).float()


@dataclass
class BagSet:
    """Some slides' bags: the arrays each reads (`keys`), how they become a bag (`make`) and
    how bags are packed (`collate`)."""

    store: FeatureStore
    names: list[str]
    labels: list[int]
    keys: Callable[[str], list[ArrayKey]]
    make: Callable[[str, int, list[np.ndarray]], Bag]
    collate: Callable[[Sequence[Bag]], Batch] = collate

    def __len__(self) -> int:
        return len(self.names)

    def bags(self, order: Sequence[int] | None = None) -> Iterator[Bag]:
        order = range(len(self.names)) if order is None else order
        arrays = self.store.stream([self.keys(self.names[i]) for i in order])
        for i, values in zip(order, arrays, strict=True):
            yield self.make(self.names[i], self.labels[i], values)

    def batches(self, size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Bags in `size`-bag packed batches, shuffled when a generator is given."""
        order = (torch.randperm(len(self), generator=generator).tolist() if generator is not None
                 else list(range(len(self))))
        batch: list[Bag] = []
        for bag in self.bags(order):
            batch.append(bag)
            if len(batch) == size:
                yield self.collate(batch)
                batch = []
        if batch:
            yield self.collate(batch)

    def input_stats(self) -> InputStats:
        """Mean / std of every instance of the set, one bag at a time."""
        stats = InputStats()
        for bag in self.bags():
            stats.add(bag.features)
        return stats


def _plain(name: str, label: int, values: list[np.ndarray]) -> Bag:
    return Bag(name, torch.from_numpy(values[0]), label)  # as stored: `pack` widens it


def feature_bags(cohort: Cohort, names: list[str], key: Callable[[str], ArrayKey]) -> BagSet:
    """Bags of one features array per slide (`cohort.hr`, `cohort.lr`, ...) and the labels."""
    return BagSet(cohort.store, list(names), [cohort.slide(n).label for n in names],
                  lambda n: [key(n)], _plain)
