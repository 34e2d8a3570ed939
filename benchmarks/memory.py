"""How much accelerator memory one trial of each preset needs (for `--gpus-per-trial 0.5`).

Computed, not measured on a GPU (the development machine has none): the model is built on
PyTorch's `meta` device, where every tensor has its shape and dtype but no storage and no
arithmetic runs, so even Inception-ResNet-v2 at 299 px takes a second on a CPU. Per preset:
  weights    both nets' parameters and buffers;
  optimiser  SGD momentum buffers of both nets, plus the gradients of the net in training;
  step       the tensors autograd saves for the backward pass of the largest training step (the
             DivideMix mixed batch: 4 x batch_size rows, 2 x where only the labelled half is
             forwarded (dividemix.mix_labeled_only, Clothing1M); or the warmup batch), each
             counted once, plus that batch itself;
  data       the training images when they live on the device (the in-memory path: N x C x H x W
             uint8), 0 for the streaming path.
The sum is a lower bound for what the CUDA caching allocator reserves: add cuDNN workspace and
fragmentation, typically 10-30% (measure with `torch.cuda.max_memory_reserved()` on your GPU).

    python benchmarks/memory.py                            # every paper preset
    python benchmarks/memory.py --presets clothing1m webvision-50

bf16 autocast (run.precision=bf16 / run.fast on CUDA) keeps most activations in bf16: roughly
half the "step" column.
"""

from __future__ import annotations

import argparse

import torch

from dmx.models import create_model, input_size
from dmx.presets import get_preset

PRESETS = ("cifar10-sym-0.5", "cifar100-sym-0.5", "clothing1m", "webvision-50", "cub200-sym-0.2")
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "clothing1m": 0, "webvision": 0}
DATASET_SIZE = {"cifar10": 32, "cifar100": 32}  # in-memory datasets: their image side
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "clothing1m": 14, "webvision": 50, "cub200": 200}
MB = 2**20


def saved_tensor_bytes(model: torch.nn.Module, batch: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of `model(batch)`."""
    seen: dict[int, int] = {}
    weights = {id(p) for p in model.parameters()}  # counted as weights, not as activations

    def pack(t: torch.Tensor) -> torch.Tensor:
        # On meta tensors storage pointers are all 0: key by the tensor object (kept alive by the
        # graph, so its id is not reused); a view saved beside its base is counted again.
        if id(t) not in weights:
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch).sum()
    return sum(seen.values())


def estimate(name: str) -> dict[str, float]:
    cfg = get_preset(name).resolved()
    dataset = cfg.data.dataset
    num_classes = NUM_CLASSES[dataset]
    side = DATASET_SIZE.get(dataset) or input_size(cfg.model.name)[1] or 224
    with torch.device("meta"):
        net = create_model(cfg.model.name, num_classes=num_classes)
    net.train()
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    mixed = (2 if cfg.dividemix.mix_labeled_only else 4) * cfg.optim.batch_size  # forwarded rows
    rows = max(mixed, cfg.optim.warmup_batch_size)
    batch = torch.empty(rows, 3, side, side, device="meta", dtype=torch.float32)
    step = saved_tensor_bytes(net, batch) + batch.numel() * batch.element_size()
    data = TRAIN_IMAGES.get(dataset, 0) * 3 * side * side  # uint8, resident (in-memory path)
    out = {
        "model": cfg.model.name,
        "side": side,
        "rows": rows,
        "weights": 2 * (params + buffers) / MB,
        "optimiser": (2 * params + params) / MB,  # momentum of both nets + one net's gradients
        "step": step / MB,
        "data": data / MB,
    }
    out["total"] = out["weights"] + out["optimiser"] + out["step"] + out["data"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = p.parse_args(argv)
    print(
        "# fp32 (the default recipe); MiB; a lower bound (add cuDNN workspace and fragmentation)\n"
        "| preset | model | input | rows per step | weights (2 nets) | optimiser + grads "
        "| one step's activations | resident images | total |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name in args.presets:
        e = estimate(name)
        print(
            f"| {name} | {e['model']} | {e['side']} px | {e['rows']} | {e['weights']:.0f} | "
            f"{e['optimiser']:.0f} | {e['step']:.0f} | {e['data']:.0f} | {e['total']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
