"""The streaming path: image files decoded and augmented in DataLoader workers (DESIGN §2).

For sets too large to hold decoded (Clothing1M, WebVision, big folders). Workers decode each file
(`dmx.data.decode`), augment it with `torchvision.transforms.v2` (shorter side resized, then
RandomCrop or RandomResizedCrop, then a horizontal flip) and hand uint8 batches to the main
process, which copies them to the device (pinned, non-blocking on CUDA) and normalises there.

Reproducibility. Every random draw of a view comes from a seed derived from (run seed, key,
position of the sample in this call's stream, view): `augment_seed`. The worker seeds torch's
default CPU generator with it right before the view's transforms run, so a view does not depend
on which worker made it, in what order, or how many workers there are (0, 1, 2, ... give
bit-identical views), and a resumed run (same seed, same key) sees the same views as the run that
never stopped. In the main process (num_workers=0) the draws happen under
`torch.random.fork_rng`: the training loop's global RNG is left exactly as it was. The loop's
generator (`gen`) is not used by this path. The position, not the sample index: the unlabelled
stream of an epoch cycles, and a sample drawn twice gets two augmentations (as from the
reference's loader), not the same one twice.

Workers. A DataLoader over a static dataset of every split's files takes one request per batch
(which split, which rows, the key and the position of the batch's first sample) from a batch
sampler that is refilled for each pass; so its workers are started once and kept
(persistent_workers) across the many passes of a run (two or four view streams and several eval
passes per epoch). The loop consumes two view streams in lockstep (labelled and unlabelled
batches), so the pool holds as many loaders as there are streams open at once (two).

A file that cannot be decoded comes back from the worker as data (path and reason), and the main
process raises `BadImageError` naming it: one line, never a worker's traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from dmx.data import Split, Transforms
from dmx.data.decode import BadImageError, decode_image, eval_image
from dmx.data.views import TRAIN, LoopSplits

PREFETCH_FACTOR = 2  # batches in flight per worker: enough to hide decode jitter, bounded memory
_AUGMENT_TAG = 0xA06  # seed-stream tag: the augmentation seeds never equal another use of run.seed


def augment_seed(seed: int, key: Sequence[int], position: int, view: int) -> int:
    """The 64-bit seed of view `view` of the sample at `position` of the stream `key` (e.g.
    (epoch, role, net_id)) of a run seeded `seed`. A hash (numpy's SeedSequence), so nearby
    positions, views and keys get unrelated streams."""
    entropy = [seed % 2**64, _AUGMENT_TAG, len(key), *(int(k) % 2**64 for k in key), position, view]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class _Request(NamedTuple):
    """One batch of work for a worker: rows `indices` of `split`; with a `key`, `n_views`
    augmented views each (the batch's first sample at `start` of the stream), else the eval
    image."""

    split: str
    indices: np.ndarray  # (B,) int64
    key: tuple[int, ...] | None
    start: int
    n_views: int


class _BadFile(NamedTuple):
    path: str
    reason: str


def _collate(data: list[torch.Tensor] | _BadFile) -> torch.Tensor | _BadFile:
    # default_collate stacks straight into shared memory inside a worker (no extra copy).
    return data if isinstance(data, _BadFile) else default_collate(data)


class _FileImages(Dataset):
    """Every split's files; `__getitems__` turns one `_Request` into uint8 images: (B, V, C, crop,
    crop) views or (B, C, crop, crop) eval images. Static, so persistent workers can keep it."""

    def __init__(
        self,
        files: Mapping[str, Sequence[str]],
        *,
        channels: int,
        transforms: Transforms,
        seed: int,
    ) -> None:
        from torchvision.transforms import v2  # only the streaming path needs torchvision

        self.files = {name: tuple(f) for name, f in files.items()}
        self.channels, self.seed = channels, seed
        self.resize, self.crop = transforms.resize, transforms.crop
        # Deterministic, so applied once per sample; the random part runs once per view.
        self.train_resize = (
            v2.Resize(transforms.resize, antialias=True) if transforms.resize else None
        )
        crop = (
            v2.RandomResizedCrop(transforms.crop, antialias=True)
            if transforms.random_resized_crop
            else v2.RandomCrop(transforms.crop, pad_if_needed=True)
        )
        flip = [v2.RandomHorizontalFlip(p=0.5)] if transforms.hflip else []
        self.augment = v2.Compose([crop, *flip])

    def __len__(self) -> int:
        return sum(len(f) for f in self.files.values())

    def __getitem__(self, item: int) -> Any:
        raise TypeError("_FileImages is read a batch at a time (__getitems__).")

    def __getitems__(self, request: _Request) -> list[torch.Tensor] | _BadFile:
        files = self.files[request.split]
        out = []
        for offset, i in enumerate(request.indices.tolist()):
            path = files[i]
            try:
                image = decode_image(path, channels=self.channels)  # (C, H, W) uint8
            except BadImageError as exc:
                return _BadFile(exc.path, exc.reason)
            if request.key is None:
                out.append(eval_image(image, resize=self.resize, crop=self.crop))
            else:
                out.append(self._views(image, request, request.start + offset))
        return out

    def _views(self, image: torch.Tensor, request: _Request, position: int) -> torch.Tensor:
        """(V, C, crop, crop) augmented views of one decoded image."""
        if self.train_resize is not None:
            image = self.train_resize(image)
        views = []
        for view in range(request.n_views):
            seed = augment_seed(self.seed, request.key, position, view)
            # v2 transforms draw from torch's default CPU generator: seed it for this view only,
            # and in the main process put it back afterwards (the loop's RNG stays untouched).
            # Not torch.manual_seed: that would reseed CUDA's generators too.
            if get_worker_info() is None:
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    views.append(self.augment(image))
            else:
                torch.default_generator.manual_seed(seed)
                views.append(self.augment(image))
        return torch.stack(views)


class _Requests:
    """The batch sampler of one loader: the requests of the current pass, refilled per pass."""

    def __init__(self) -> None:
        self.batches: list[_Request] = []

    def __iter__(self) -> Iterator[_Request]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Slot:
    """A loader of the pool, its batch sampler, and whether a pass is reading from it."""

    def __init__(self, loader: DataLoader, requests: _Requests) -> None:
        self.loader, self.requests, self.busy = loader, requests, False


class _Stream:
    """One pass of a loader: yields converted batches, hands the loader back to the pool when
    exhausted, closed, or garbage-collected (the loop may stop reading before the end)."""

    def __init__(self, slot: _Slot, requests: list[_Request], convert: Any) -> None:
        slot.busy = True
        slot.requests.batches = requests
        self._slot, self._convert = slot, convert
        # Iterating starts the workers on the first batches now, before the first `next`.
        self._it: Iterator[Any] | None = iter(slot.loader)

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            raise StopIteration
        try:
            batch = next(self._it)
        except BaseException:
            self.close()
            raise
        if isinstance(batch, _BadFile):
            self.close()
            raise BadImageError(batch.path, batch.reason) from None
        return self._convert(batch)

    def close(self) -> None:
        if self._it is not None:
            self._it = None
            self._slot.busy = False  # the next pass resets the loader (in-flight work dropped)

    def __del__(self) -> None:
        self.close()


class StreamData:
    """`dmx.data.views.TrainData` over splits of image files (see the module docstring)."""

    def __init__(
        self,
        splits: LoopSplits,
        *,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        transforms: Transforms,
        device: torch.device,
        channels_last: bool = False,
        channels: int = 3,
        num_workers: int = 0,
        seed: int = 0,
        skip_bad_images: bool = False,
    ) -> None:
        if transforms.crop <= 0:
            raise ValueError(
                "a streaming dataset needs Transforms.crop (the network input size) > 0; the "
                "dataset's loader sets it from data.image_size or the model's input size."
            )
        all_splits: dict[str, Split] = {TRAIN: splits.train, **dict(splits.evals)}
        for name, split in all_splits.items():
            if split.images is not None:
                raise ValueError(f"StreamData needs file splits; split {name!r} is in memory.")
        self.device = torch.device(device)
        self.num_classes = num_classes
        self.channels, self.channels_last = channels, channels_last
        self.num_workers, self.seed = num_workers, seed
        # skip_bad_images: the loader already left undecodable files out; a file that breaks
        # later still stops the run with BadImageError naming it.
        self.skip_bad_images = skip_bad_images
        self.transforms = transforms
        self.noisy_y = splits.train.labels.to(self.device)  # (N,)
        self.true_y = splits.true_y  # (N,) numpy, metrics only
        self._y = {name: s.labels.to(self.device) for name, s in splits.evals.items()}
        c = len(mean)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._dataset = _FileImages(
            {name: s.files for name, s in all_splits.items()},
            channels=channels,
            transforms=transforms,
            seed=seed,
        )
        self._pool: list[_Slot] = []

    # ---- TrainData ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.noisy_y)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return tuple(self._y)

    def views(
        self,
        batches: Sequence[torch.Tensor],
        *,
        n_views: int,
        gen: torch.Generator | None = None,
        key: tuple[int, ...] = (),
    ) -> Iterator[list[torch.Tensor]]:
        """Per batch of training indices (B,), `n_views` augmented views (B, C, crop, crop) float
        on the device. Workers start on the first batches at once (before the first `next`)."""
        requests, start = [], 0
        for idx in batches:
            indices = idx.cpu().numpy().astype(np.int64)
            requests.append(_Request(TRAIN, indices, tuple(int(k) for k in key), start, n_views))
            start += len(indices)

        def convert(batch_u8: torch.Tensor) -> list[torch.Tensor]:  # (B, V, C, H, W) uint8
            x = self._to_device(batch_u8)
            return [self._normalize(x[:, v]) for v in range(n_views)]

        return self._stream(requests, convert)

    def eval_batches(
        self, split: str, *, batch_size: int, idx: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """Un-augmented inputs of `split` (rows `idx`, default all), in order: each file's
        `eval_image` (resize, centre crop), normalised on the device."""
        n = len(self.noisy_y) if split == TRAIN else len(self._y[split])
        rows = np.arange(n, dtype=np.int64) if idx is None else idx.cpu().numpy().astype(np.int64)
        requests = [
            _Request(split, rows[i : i + batch_size], None, i, 0)
            for i in range(0, len(rows), batch_size)
        ]
        return self._stream(requests, lambda b: self._normalize(self._to_device(b)))

    def eval_labels(self, split: str) -> torch.Tensor:
        return self.noisy_y if split == TRAIN else self._y[split]

    def probe(self) -> torch.Tensor:
        """(1, C, crop, crop): the first training file, un-augmented (read here, no workers)."""
        request = _Request(TRAIN, np.zeros(1, dtype=np.int64), None, 0, 0)
        out = self._dataset.__getitems__(request)
        if isinstance(out, _BadFile):
            raise BadImageError(out.path, out.reason)
        return self._normalize(out[0][None].to(self.device))

    def close(self) -> None:
        """Stop the worker processes now (they also stop when this object is collected)."""
        self._pool = []

    # ---- internals ---------------------------------------------------------------------------
    def _normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 -> float32 `(x / 255 - mean) / std`, as dmx.data.augment.normalize
        (the same operations in the same order: bit-identical), mean/std kept on the device."""
        x = (x_u8.float() / 255.0 - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _to_device(self, batch_u8: torch.Tensor) -> torch.Tensor:
        # Pinned by the DataLoader on CUDA: the copy overlaps with compute.
        return batch_u8.to(self.device, non_blocking=self.device.type == "cuda")

    def _stream(self, requests: list[_Request], convert: Any) -> Iterator[Any]:
        slot = next((s for s in self._pool if not s.busy), None)
        if slot is None:  # one loader per pass open at once: two while the loop reads x and u
            slot = self._new_slot()
            self._pool.append(slot)
        return _Stream(slot, requests, convert)

    def _new_slot(self) -> _Slot:
        requests, workers = _Requests(), self.num_workers
        loader = DataLoader(
            self._dataset,
            batch_sampler=requests,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,  # started once per run, not once per pass
            prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
            # Its own generator: creating an iterator draws a base seed from it, which would
            # otherwise come from (and advance) the main process's global RNG.
            generator=torch.Generator().manual_seed(0),
        )
        return _Slot(loader, requests)


__all__ = ["PREFETCH_FACTOR", "StreamData", "augment_seed"]
