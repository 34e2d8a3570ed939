"""How the loop cuts index sets into batches: consecutive slices as the reference's DataLoader
(no drop_last), an endless reshuffled cycle for the unlabelled set, the class-balanced subsets of
the reference's Clothing1M loader, and the one place that handles a batch of ONE sample for nets
that cannot take a train-mode pass on it."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from dmx.data.views import TrainData


def cycle_batches(
    indices: torch.Tensor, batch_size: int, gen: torch.Generator, merge_single: bool
) -> Iterator[torch.Tensor | None]:
    """Endless batches of `indices`, reshuffled (from `gen`) each time they run out, as the
    reference's unlabelled loader restarts; yields None forever when `indices` is empty. The
    shuffle is drawn lazily, at the batch that needs it, as the reference's iterator does."""
    if len(indices) == 0:
        while True:
            yield None
    while True:
        order = indices[torch.randperm(len(indices), generator=gen)]
        yield from index_batches(order, batch_size, merge_single)


def index_batches(
    perm: torch.Tensor, batch_size: int, merge_single: bool = False
) -> list[torch.Tensor]:
    """Consecutive slices of `perm`; the last may be short (a DataLoader without drop_last, as the
    reference). With `merge_single`, a final batch of ONE sample joins the previous batch: for
    nets that cannot take a train-mode pass on one sample (see `trains_on_one_sample`)."""
    batches = list(torch.split(perm, batch_size))
    if merge_single and len(batches) > 1 and len(batches[-1]) == 1:
        lone = batches.pop()  # (the pop first: `batches[-2] = cat([batches[-2], batches.pop()])`
        batches[-1] = torch.cat([batches[-1], lone])  # would overwrite the FIRST of two batches)
    return batches


def balanced_subset(
    labels: torch.Tensor, size: int, num_classes: int, gen: torch.Generator
) -> torch.Tensor:
    """(M,) indices of a class-balanced random subset of `labels` (N,), M <= `size`, in random
    order: the reference's Clothing1M loader, which walks a shuffled list and keeps a sample while
    its class has fewer than size / num_classes and the subset fewer than `size` (a class with
    fewer samples gives all it has)."""
    order = torch.randperm(len(labels), generator=gen)  # (N,)
    y = labels.cpu()[order]
    onehot = torch.nn.functional.one_hot(y, num_classes)  # (N, C)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # (N,) how many of its class came before
    return order[rank < size / num_classes][:size]


def trains_on_one_sample(net: nn.Module, data: TrainData) -> bool:
    """Whether `net` can run in train mode on a batch of ONE sample. BatchNorm in train mode needs
    more than one value per channel: the reference's PreAct ResNet-18 ends at 4x4 maps on 32 px
    images and trains on such a batch (so dmx does too, as the reference), while small_cnn's last
    stage on 8x8 digits is 1x1 and would crash. Probed once, on a copy, with every random stream
    forked: the real net, its BatchNorm statistics and the run's randomness are untouched."""
    if len(data) == 0:
        return True
    probe = copy.deepcopy(net).train()
    cuda = [data.device.index or 0] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        try:
            probe(data.probe())
        except ValueError as exc:
            if "more than 1 value per channel" in str(exc):
                return False
            raise
    return True


def two_views(
    net: nn.Module, a: torch.Tensor, b: torch.Tensor, *, single_ok: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`net(a)`, `net(b)` as two passes, as the reference orders them (BatchNorm sees each view
    alone). A lone sample of a net in train mode that cannot normalise one sample (a labelled or
    unlabelled set of exactly one) goes through as ONE pass of both views instead of crashing."""
    if len(a) == 1 and net.training and not single_ok:
        out = net(torch.cat([a, b])).float()
        return out[:1], out[1:]
    return net(a).float(), net(b).float()


__all__ = [
    "balanced_subset",
    "cycle_batches",
    "index_batches",
    "trains_on_one_sample",
    "two_views",
]
