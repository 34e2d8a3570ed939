"""Throughput of the streaming data path (`dmx.data.stream.StreamData`) at 224 px, against the
in-memory path (`dmx.data.device.DeviceData`).

Writes `--count` JPEGs of about 400x300 px (random sizes around it, photo-like content) to a
temporary folder, then for each worker count streams them as the training loop does: training
views (shorter side resized to 256, RandomCrop 224, flip; `--views` views per image, 2 as in a
DivideMix epoch) in batches of `--batch-size`, and an eval pass (resize 256, centre crop 224).
The first pass of a StreamData includes starting its workers; the second pass is the steady state
of a run (workers persist). For comparison: the in-memory path's one-time decode of the same
files into a uint8 tensor (what its loader does once, then caches), and its per-epoch cost
(batched crop + flip + normalise of resident tensors).

    python benchmarks/stream.py                      # 400 images, 0/1/2 workers
    python benchmarks/stream.py --count 1000 --workers 0 2 4

Also the in-memory path's start-up as a run sees it: the same files as an image folder (two
classes) loaded at 32 px with `data.pipeline=memory`, the first time (decode in workers, cache
written) and the second (the cache under DATA_ROOT/.dmx_cache read back).

Figures are only meaningful on an otherwise idle machine: the CPU time every other process used
meanwhile is counted from /proc (as benchmarks/epoch.py does), with a warning above 5%.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from epoch import watch_machine  # benchmarks/epoch.py: who else used the CPU

from dmx.data import Split, Transforms
from dmx.data.decode import decode_image, eval_image
from dmx.data.device import DeviceData
from dmx.data.stream import StreamData
from dmx.data.views import TEST, TRAIN, LoopSplits

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's


def write_jpegs(folder: Path, count: int, *, seed: int = 0) -> list[str]:
    """`count` JPEGs of about 400x300 (smooth colour fields + texture: compresses like photos)."""
    from torchvision.io import encode_jpeg

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(280, 320)), int(rng.integers(380, 420))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, 3)[:, None, None]
        waves = 60 * np.sin(2 * np.pi * (rng.uniform(1, 4) * xx + rng.uniform(1, 4) * yy))
        pixels = base + waves[None] + rng.normal(0, 12, (3, h, w))
        image = torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8))
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
        paths.append(str(path))
    return paths


def batches_of(n: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.split(order, batch_size))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stream_rows(files, args) -> list[tuple[str, str, float]]:
    n = len(files)
    labels = torch.zeros(n, dtype=torch.int64)
    splits = LoopSplits(Split(labels, files=tuple(files)), labels.numpy(), {})
    transforms = Transforms(resize=args.size * 8 // 7, crop=args.size)  # 256 -> 224
    rows = []
    for workers in args.workers:
        data = StreamData(
            splits,
            num_classes=1,
            mean=MEAN,
            std=STD,
            transforms=transforms,
            device=torch.device("cpu"),
            num_workers=workers,
            seed=0,
        )
        for epoch, label in enumerate(("first pass (workers start)", "second pass")):
            batches = batches_of(n, args.batch_size, seed=epoch)
            views = data.views(batches, n_views=args.views, key=(epoch, 0, 0))
            seconds = timed(lambda v=views: [None for _ in v])
            rows.append(
                (f"stream, {workers} workers", f"{args.views} train views, {label}", n / seconds)
            )
        seconds = timed(lambda d=data: [None for _ in d.eval_batches(TRAIN, batch_size=256)])
        rows.append((f"stream, {workers} workers", "eval pass", n / seconds))
        data.close()
    return rows


def memory_rows(files, args) -> list[tuple[str, str, float]]:
    resize, crop = args.size * 8 // 7, args.size
    images = []

    def decode_all() -> None:
        images.extend(eval_image(decode_image(p), resize=resize, crop=crop) for p in files)

    n = len(files)
    decode = timed(decode_all)
    tensor = torch.stack(images)
    labels = torch.zeros(n, dtype=torch.int64)
    split = Split(labels, images=tensor)
    data = DeviceData(
        LoopSplits(split, labels.numpy(), {TEST: split}),
        num_classes=1,
        mean=MEAN,
        std=STD,
        transforms=Transforms(crop_padding=4),
        device=torch.device("cpu"),
    )
    gen = torch.Generator().manual_seed(0)
    batches = batches_of(n, args.batch_size)
    epoch = timed(lambda: [None for _ in data.views(batches, n_views=args.views, gen=gen)])
    return [
        ("memory (main process)", "one-time decode to uint8", n / decode),
        ("memory (main process)", f"{args.views} train views (crop+flip+normalise)", n / epoch),
    ]


def startup_rows(files, args) -> list[tuple[str, str, float]]:
    """Seconds (not images/s) to load the files as a 32 px image folder: first run, then cached."""
    from dmx.data import load_dataset

    root = Path(files[0]).parent / "folder"
    for i, path in enumerate(files):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        os.link(path, root / f"c{i % 2}" / Path(path).name)
    options = {"image_size": 32, "resize": 32, "pipeline": "memory", "num_workers": 2}
    first = timed(lambda: load_dataset("folder", root, **options))
    cached = timed(lambda: load_dataset("folder", root, **options))
    what = f"start-up at 32 px, {len(files)} files"
    return [
        ("memory (image folder)", f"{what}: first run, decode + cache (s)", first),
        ("memory (image folder)", f"{what}: second run, from the cache (s)", cached),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="number of JPEGs (400)")
    parser.add_argument("--size", type=int, default=224, help="network input size (224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=2, help="views per image (2: DivideMix)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dmx-stream-bench-") as tmp, watch_machine() as machine:
        files = write_jpegs(Path(tmp), args.count)
        rows = stream_rows(files, args) + memory_rows(files, args) + startup_rows(files, args)

    print(
        f"\n{args.count} JPEGs of ~400x300 -> {args.size} px, batch {args.batch_size}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads in the main process"
    )
    print("\n| path | pass | images/s (or s) |\n|---|---|---:|")
    for path, what, value in rows:
        print(
            f"| {path} | {what} | {value:.2f} |"
            if "(s)" in what
            else f"| {path} | {what} | {value:,.0f} |"
        )
    print("\n" + machine.report())


if __name__ == "__main__":
    main()
