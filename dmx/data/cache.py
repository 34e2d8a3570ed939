"""Decoding image files in worker processes, and the on-disk caches that make it happen once.

- `load_or_decode`: the memory path. Every file of every split is decoded, its shorter side
  resized and centre-cropped to a fixed square (`dmx.data.decode.eval_image`), into one uint8
  tensor per split. The result is cached at CACHE_DIR/<name>-r<R>-c<S>-<key16>.pt, keyed by the
  file list of each split (paths in order), every file's size and mtime, R, S and the cache format:
  change, add or remove a file and the key changes; a second run with the same files loads the
  tensors in seconds. Written atomically (`dmx.files.atomic_write_bytes`), read with
  `torch.load(weights_only=True)` (tensors, lists, strings: no code); older caches of the same
  dataset and sizes are removed once the new one is written.
- `check_files`: every file decoded once to see whether it can be (`data.skip_bad_images` on the
  streaming path); the verdicts are cached in CACHE_DIR/image_checks.parquet by path + size +
  mtime, so only new or changed files are decoded again.
- `stream_stats`: mean / std of a seeded sample of training files at the eval-time preprocessing
  (the streaming path without fixed statistics), cached in CACHE_DIR/<name>-stats-<key16>.json.

The workers are a `torch.utils.data.DataLoader` over the file list (its workers, ordering and
shutdown): a file that cannot be decoded comes back as its reason, never as a worker traceback.
A cache folder that cannot be written (a read-only dataset disk) costs a warning, not the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dmx.data.decode import BadImageError, decode_image, eval_image
from dmx.files import atomic_write_bytes

CACHE_FORMAT = 2  # bump when the decoded content for the same files and sizes would change
CHECKS_FILE = "image_checks.parquet"
_CHUNK = 64  # files per worker task: amortises the inter-process hop


def file_stats(paths: Sequence[str]) -> list[tuple[int, int]]:
    """(size, mtime_ns) of each path; (-1, -1) for a file that cannot be stat'ed (missing)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((-1, -1))
    return out


def _key(parts: Sequence[Any], splits: Mapping[str, Sequence[str]]) -> str:
    """sha256 over `parts` and, per split in order, its name, length and every file's path,
    size and mtime."""
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, *parts]).encode())
    for name, files in splits.items():
        h.update(f"\0split\0{name}\0{len(files)}\n".encode())
        for path, (size, mtime) in zip(files, file_stats(files)):
            h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- the workers


class _Files(Dataset):
    """Item i: (i, result, reason). `mode` decode -> result (3, S, S) uint8 or None; check ->
    None; stats -> (per-channel sum, sum of squares, pixel count) or None. reason "" = decoded."""

    def __init__(self, files: Sequence[str], mode: str, resize: int = 0, crop: int = 0) -> None:
        self.files, self.mode, self.resize, self.crop = list(files), mode, resize, crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        try:
            image = decode_image(self.files[i], channels=3)
        except BadImageError as exc:
            return i, None, exc.reason
        if self.mode == "check":
            return i, None, ""
        image = eval_image(image, resize=self.resize, crop=self.crop)
        if self.mode == "decode":
            return i, image, ""
        x = image.to(torch.float64) / 255.0  # plain floats: nothing to share between processes
        sums = (x.sum((1, 2)).tolist(), (x * x).sum((1, 2)).tolist(), x.shape[1] * x.shape[2])
        return i, sums, ""


def _collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], list[Any], list[str]]:
    """One task's items as (indices, results, reasons); decoded images travel as ONE stacked
    tensor (one shared-memory handle per task instead of one per image)."""
    idx, results, reasons = (list(t) for t in zip(*batch))
    images = [r for r in results if isinstance(r, torch.Tensor)]
    if images:
        stacked, j = torch.stack(images), 0
        for k, r in enumerate(results):
            if isinstance(r, torch.Tensor):
                results[k], j = j, j + 1
        return idx, [stacked, results], reasons
    return idx, [None, results], reasons


def _run(dataset: _Files, num_workers: int) -> Iterator[tuple[int, Any, str]]:
    """The items (i, result, reason) of `dataset` in order, produced by up to `num_workers`
    processes (0: in this one)."""
    tasks = -(-len(dataset) // _CHUNK)
    workers = min(num_workers, tasks)
    loader = DataLoader(
        dataset,
        batch_size=_CHUNK,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers else None,
    )
    for idx, (stacked, results), reasons in loader:
        for i, r, reason in zip(idx, results, reasons):
            yield i, (stacked[r] if stacked is not None and r is not None else r), reason


# ---------------------------------------------------------------------------- memory path


@dataclass(frozen=True)
class Decoded:
    """The memory path's splits: the decoded images of the files that could be decoded, in file
    order, and the others with their reason."""

    images: dict[str, torch.Tensor]  # split -> (n_ok, 3, S, S) uint8
    bad: dict[str, str]  # path -> reason, in file order
    gray: bool  # no decoded image carries colour (R = G = B everywhere)
    mean: tuple[float, ...]  # (3,) of the training images on the [0, 1] scale (stored: a
    std: tuple[float, ...]  # cached million-image set needs no pass over its pixels)


def cache_path(cache_dir: str | Path, name: str, resize: int, crop: int, key: str) -> Path:
    return Path(cache_dir) / f"{name}-r{resize}-c{crop}-{key[:16]}.pt"


def decode_splits(
    splits: Mapping[str, Sequence[str]],
    *,
    resize: int,
    crop: int,
    num_workers: int,
    stop_at_bad: bool,
) -> Decoded:
    """Decode every file of every split to (3, crop, crop) uint8 (see the module docstring).
    `stop_at_bad`: raise BadImageError at the first file (in split and file order) that cannot
    be decoded, else leave it out and report it in `Decoded.bad`."""
    order = [(name, i) for name, files in splits.items() for i in range(len(files))]
    every = [splits[name][i] for name, i in order]
    out = {n: torch.empty((len(f), 3, crop, crop), dtype=torch.uint8) for n, f in splits.items()}
    ok = {name: np.ones(len(f), dtype=bool) for name, f in splits.items()}
    bad: dict[str, str] = {}
    gray = True
    for j, image, reason in _run(_Files(every, "decode", resize, crop), num_workers):
        name, i = order[j]
        if image is None:
            if stop_at_bad:
                raise BadImageError(every[j], reason)
            bad[every[j]] = reason
            ok[name][i] = False
            continue
        out[name][i] = image
        gray = gray and bool((image[0] == image[1]).all() and (image[1] == image[2]).all())
    images = {
        name: out[name] if ok[name].all() else out[name][torch.from_numpy(ok[name])]
        for name in splits
    }
    mean, std = channel_stats(images["train"]) if "train" in images else ((), ())
    return Decoded(images, bad, gray, mean, std)


def channel_stats(images_u8: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of (N, C, H, W) uint8 images, [0, 1] scale."""
    c = int(images_u8.shape[1])
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in torch.split(images_u8, 2048):  # bounded float64 memory
        x = chunk.to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
    count = max(1, int(images_u8.shape[0] * images_u8.shape[2] * images_u8.shape[3]))
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def load_or_decode(
    splits: Mapping[str, Sequence[str]],
    *,
    name: str,
    resize: int,
    crop: int,
    cache_dir: str | Path,
    num_workers: int,
    stop_at_bad: bool,
) -> Decoded:
    """`decode_splits` through the disk cache (module docstring)."""
    key = _key([name, resize, crop], splits)
    path = cache_path(cache_dir, name, resize, crop, key)
    cached = _read_cache(path, key, splits)
    if cached is not None:
        return cached
    decoded = decode_splits(
        splits, resize=resize, crop=crop, num_workers=num_workers, stop_at_bad=stop_at_bad
    )
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "images": decoded.images,
        "bad": [[p, r] for p, r in decoded.bad.items()],
        "gray": decoded.gray,
        "mean": list(decoded.mean),
        "std": list(decoded.std),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    try:
        atomic_write_bytes(path, buf.getbuffer())
    except OSError as exc:
        warnings.warn(
            f"could not write the decoded-image cache {path} ({exc}); the next run decodes the "
            "files again.",
            stacklevel=3,
        )
    else:
        for old in path.parent.glob(f"{name}-r{resize}-c{crop}-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
    return decoded


def _read_cache(path: Path, key: str, splits: Mapping[str, Sequence[str]]) -> Decoded | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
        if payload.get("format") != CACHE_FORMAT or payload.get("key") != key:
            return None
        images = payload["images"]
        bad = {str(p): str(r) for p, r in payload["bad"]}
        for split, files in splits.items():  # the cached tensors must fit the lists
            n_bad = sum(f in bad for f in files)
            if images[split].dtype != torch.uint8 or len(images[split]) != len(files) - n_bad:
                return None
        mean, std = tuple(payload["mean"]), tuple(payload["std"])
        return Decoded(dict(images), bad, bool(payload["gray"]), mean, std)
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, whatever broke it
        warnings.warn(f"ignoring the unreadable cache {path} ({exc}); decoding anew.", stacklevel=4)
        return None


# ---------------------------------------------------------------------------- bad-file check


def check_files(paths: Sequence[str], *, cache_dir: str | Path, num_workers: int) -> dict[str, str]:
    """The files of `paths` that cannot be decoded, path -> reason (in order); every file is
    decoded once, the verdicts cached by path + size + mtime in CACHE_DIR/image_checks.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_path = Path(cache_dir) / CHECKS_FILE
    known: dict[str, tuple[int, int, str]] = {}
    if table_path.is_file():
        try:
            t = pq.read_table(table_path).to_pydict()
            known = {
                p: (s, m, r) for p, s, m, r in zip(t["path"], t["size"], t["mtime_ns"], t["reason"])
            }
        except Exception as exc:  # noqa: BLE001 - a damaged table only costs a re-check
            warnings.warn(f"ignoring the unreadable {table_path} ({exc}).", stacklevel=3)
    unique = list(dict.fromkeys(paths))
    stats = dict(zip(unique, file_stats(unique)))
    todo = [p for p in unique if known.get(p, (None, None))[:2] != stats[p]]
    for j, _, reason in _run(_Files(todo, "check"), num_workers) if todo else ():
        known[todo[j]] = (*stats[todo[j]], reason)
    if todo:
        table = pa.table(
            {
                "path": list(known),
                "size": pa.array([v[0] for v in known.values()], pa.int64()),
                "mtime_ns": pa.array([v[1] for v in known.values()], pa.int64()),
                "reason": [v[2] for v in known.values()],
            }
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        try:
            atomic_write_bytes(table_path, sink.getvalue().to_pybytes())
        except OSError as exc:
            warnings.warn(f"could not write {table_path} ({exc}).", stacklevel=3)
    return {p: known[p][2] for p in unique if known[p][2]}


# ---------------------------------------------------------------------------- stream statistics


def stream_stats(
    files: Sequence[str],
    *,
    name: str,
    resize: int,
    crop: int,
    cache_dir: str | Path,
    num_workers: int,
    sample: int,
    seed: int,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 1] scale of up to `sample` training files drawn with
    `seed`, each brought to the eval-time input (resize, centre crop); cached with the file list.
    A sampled file that cannot be decoded raises BadImageError (the stream would, later)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(files), size=min(sample, len(files)), replace=False))
    chosen = [files[i] for i in pick]
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, name, resize, crop, sample, seed]).encode())
    h.update("\n".join(files).encode())
    key = _key([h.hexdigest()], {"sample": chosen})
    path = Path(cache_dir) / f"{name}-stats-{key[:16]}.json"
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return tuple(saved["mean"]), tuple(saved["std"])
    except (OSError, ValueError, AttributeError):
        pass
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for j, sums, reason in _run(_Files(chosen, "stats", resize, crop), num_workers):
        if sums is None:
            raise BadImageError(chosen[j], reason)
        total += torch.tensor(sums[0], dtype=torch.float64)
        total_sq += torch.tensor(sums[1], dtype=torch.float64)
        count += sums[2]
    mean = total / max(count, 1)
    std = (total_sq / max(count, 1) - mean * mean).clamp_min(0).sqrt()
    result = {"key": key, "mean": mean.tolist(), "std": std.tolist(), "images": len(chosen)}
    try:
        atomic_write_bytes(path, (json.dumps(result) + "\n").encode())
    except OSError as exc:
        warnings.warn(f"could not write {path} ({exc}).", stacklevel=3)
    return tuple(result["mean"]), tuple(result["std"])


__all__ = [
    "CACHE_FORMAT",
    "Decoded",
    "cache_path",
    "channel_stats",
    "check_files",
    "decode_splits",
    "file_stats",
    "load_or_decode",
    "stream_stats",
]
