"""Training-step throughput (images/s) of dmx models on CIFAR-shaped random data.

One step = forward + cross-entropy + backward + SGD update, the shape of a DivideMix warmup step.
Each (model, batch size, precision) case runs a few warmup steps, then `--steps` timed steps;
the median step time is reported (robust to a neighbour stealing the CPU for a moment).

    python benchmarks/step_speed.py                       # small_cnn + preact_resnet18, 64/128
    python benchmarks/step_speed.py --models small_cnn --batch-size 128 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
from torch import nn

from dmx.models import create_model

# (label, autocast dtype or None, channels_last)
MODES = (
    ("fp32", None, False),
    ("bf16", torch.bfloat16, False),
    ("bf16+channels_last", torch.bfloat16, True),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(
    model_name: str,
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    num_classes: int = 10,
) -> list[float]:
    """Seconds per training step for `steps` steps after `warmup` untimed ones."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(model_name, num_classes=num_classes)
    model = model.to(device, memory_format=memory_format)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch_size, 3, 32, 32, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with autocast():
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "preact_resnet18"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--modes", nargs="+", default=[m[0] for m in MODES], choices=[m[0] for m in MODES]
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"torch {torch.__version__}, device {device} ({where or platform.machine()}), "
        f"{torch.get_num_threads()} threads, median of {args.steps} steps after {args.warmup}"
    )
    print(f"{'model':<16} {'batch':>5} {'mode':<19} {'ms/step':>8} {'images/s':>9}")
    modes = [m for m in MODES if m[0] in args.modes]
    for model_name in args.models:
        for batch_size in args.batch_size:
            for label, dtype, channels_last in modes:
                times = step_times(
                    model_name,
                    batch_size=batch_size,
                    steps=args.steps,
                    warmup=args.warmup,
                    device=device,
                    dtype=dtype,
                    channels_last=channels_last,
                )
                median = statistics.median(times)
                print(
                    f"{model_name:<16} {batch_size:>5} {label:<19} {median * 1e3:>8.1f} "
                    f"{batch_size / median:>9.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
