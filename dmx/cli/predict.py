"""`dmx predict` (classify image files with a trained run's ensemble) and `dmx export` (write the
ensemble as one TorchScript file that plain torch runs).

    dmx predict RUN_DIR PATH... [--out preds.csv|preds.parquet] [--batch-size N] [--skip-bad]
    dmx export RUN_DIR --out model.pt

PATH is an image file, a folder (searched recursively for image files) or a manifest (a CSV or
parquet file with a `path` column; relative paths are relative to the manifest's folder). The
table has one row per readable image, in input order: path, pred_label, pred_class, pred_prob
(the ensemble probability of the predicted class) and, with more than 5 classes, the top 5
(top{k}_label, top{k}_class, top{k}_prob). An unreadable file is reported on one line; the
command then exits 2 after writing the table of the others (0 with --skip-bad).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".avif", ".heic", ".heif", ".bmp", ".tif", ".tiff"}
)
MANIFEST_EXTENSIONS = frozenset({".csv", ".parquet"})
TOP_K = 5  # top-5 columns where there are more than 5 classes (as the training metrics)


def image_paths(sources: Sequence[str | Path]) -> list[str]:
    """The image files named by `sources`, in order: a file as it is, a folder's image files
    (recursively, sorted), a manifest's `path` column."""
    out: list[str] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            out.extend(str(p) for p in sorted(found) if p.is_file())
        elif path.suffix.lower() in MANIFEST_EXTENSIONS and path.is_file():
            out.extend(_manifest_paths(path))
        elif path.exists() or path.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(str(path))  # a missing image file is reported as unreadable, by name
        else:
            raise FileNotFoundError(f"{source}: no such file or folder.")
    return out


def _manifest_paths(path: Path) -> list[str]:
    import pandas as pd

    table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    if "path" not in table.columns:
        columns = ", ".join(map(str, table.columns))
        raise ValueError(f"{path}: a manifest needs a `path` column (it has {columns}).")
    return [str(p if Path(p).is_absolute() else path.parent / p) for p in table["path"].astype(str)]


class _Files:
    """Dataset of files -> (position, (C, crop, crop) uint8 or None, reason)."""

    def __init__(self, files: Sequence[str], *, channels: int, resize: int, crop: int) -> None:
        self.files, self.channels, self.resize, self.crop = list(files), channels, resize, crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        from dmx.data.decode import BadImageError, decode_image
        from dmx.ensemble import preprocess_images

        try:
            image = decode_image(self.files[i], channels=self.channels)
        except BadImageError as exc:
            return i, None, exc.reason
        return i, preprocess_images(image[None], self.resize, self.crop)[0], ""


def _collate(items: list[tuple[int, Any, str]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    import torch

    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, x, reason in items if x is None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad


def predict_files(
    ensemble: Any,
    files: Sequence[str],
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: Any = "cpu",
) -> tuple[Any, list[tuple[str, str]]]:
    """Classify `files` with `ensemble` (a `dmx.ensemble.Ensemble`). Every file goes through the
    ensemble's own preprocessing (decode, `eval_image`) in DataLoader workers, then its
    `classify`: the same computation as `ensemble(images)`. Returns (DataFrame in input order,
    [(path, reason)] of the files that could not be decoded)."""
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader

    ensemble = ensemble.to(device).eval()
    dataset = _Files(files, channels=ensemble.channels, resize=ensemble.resize, crop=ensemble.crop)
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator(),  # not the global RNG
    )
    rows, probs, bad = [], [], []
    with torch.inference_mode():
        for positions, images, failed in loader:
            bad.extend((files[i], reason) for i, reason in failed)
            if images is None:
                continue
            probs.append(ensemble.classify(images.to(device, non_blocking=True)).float().cpu())
            rows.extend(positions)
    k = ensemble.num_classes
    p = torch.cat(probs) if probs else torch.empty(0, k)
    names = list(ensemble.class_names)
    top_p, top_i = p.topk(min(TOP_K, k), dim=1)
    pred = p.argmax(1)
    table: dict[str, Any] = {
        "path": [files[i] for i in rows],
        "pred_label": pred.numpy().astype("int64"),
        "pred_class": [names[c] for c in pred.tolist()],
        "pred_prob": p.gather(1, pred[:, None]).squeeze(1).double().numpy(),
    }
    if k > TOP_K:
        for j in range(TOP_K):
            table[f"top{j + 1}_label"] = top_i[:, j].numpy().astype("int64")
            table[f"top{j + 1}_class"] = [names[c] for c in top_i[:, j].tolist()]
            table[f"top{j + 1}_prob"] = top_p[:, j].double().numpy()
    return pd.DataFrame(table), bad


def write_table(table: Any, out: str | Path | None) -> None:
    """CSV to stdout (out None), else CSV or parquet by the suffix of `out`."""
    if out is None:
        table.to_csv(sys.stdout, index=False)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        table.to_parquet(path, index=False)
    elif path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    else:
        raise ValueError(f"--out {out}: write a .csv or a .parquet file.")


def run_predict(args: argparse.Namespace) -> int:
    from dmx.ensemble import load_ensemble
    from dmx.prepare import resolve_device

    if args.batch_size < 1 or args.num_workers < 0:
        raise ValueError("--batch-size must be >= 1 and --num-workers >= 0.")
    if args.out is not None and Path(args.out).suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"--out {args.out}: write a .csv or a .parquet file.")
    device = resolve_device(args.device)
    files = image_paths(args.paths)
    if not files:
        raise FileNotFoundError(f"no image files in {' '.join(map(str, args.paths))}.")
    ensemble = load_ensemble(args.run_dir)
    table, bad = predict_files(
        ensemble, files, batch_size=args.batch_size, num_workers=args.num_workers, device=device
    )
    for path, reason in bad:
        print(f"dmx predict: {path}: cannot decode the image ({reason})", file=sys.stderr)
    write_table(table, args.out)
    if args.out is not None:
        print(f"wrote {len(table)} predictions to {args.out}", file=sys.stderr)
    if bad and not args.skip_bad:
        print(
            f"dmx predict: {len(bad)} of {len(files)} files could not be decoded (listed above); "
            "--skip-bad leaves them out without failing.",
            file=sys.stderr,
        )
        return 2
    return 0


def run_export(args: argparse.Namespace) -> int:
    from dmx.ensemble import export_torchscript, load_ensemble

    ensemble = load_ensemble(args.run_dir)
    path = export_torchscript(ensemble, args.out)
    print(
        f"wrote {path}: TorchScript, {ensemble.num_classes} classes, input uint8 (B, "
        f"{ensemble.channels}, H, W) of any size -> (B, {ensemble.num_classes}) probabilities.\n"
        f"load it with plain torch: m = torch.jit.load({str(path)!r}); m.class_names; "
        "probs = m(images_u8)"
    )
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `predict` and `export` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "predict",
        help="classify image files with a trained run's two-net ensemble",
        description="Classify image files, folders (recursively) or manifests (CSV/parquet with "
        "a `path` column) with the run's two-net ensemble and write path, pred_label, "
        "pred_class, pred_prob (and the top 5 with more than 5 classes) as CSV or parquet. "
        "Unreadable files are listed one per line; the exit status is then 2 (0 with "
        "--skip-bad).",
    )
    p.add_argument("run_dir", help="a `dmx train --out` folder, or a checkpoint folder")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, folders, or CSV/parquet manifests"
    )
    p.add_argument(
        "--out", default=None, help="preds.csv or preds.parquet (default: CSV on stdout)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64)")
    p.add_argument("--num-workers", type=int, default=2, help="decoding processes (2; 0: inline)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="unreadable files are listed but do not make the command fail",
    )
    p.set_defaults(func=run_predict)
    e = subparsers.add_parser(
        "export",
        help="write the ensemble as one TorchScript file, loadable without dmx",
        description="Write the run's two-net ensemble, its eval preprocessing (resize, centre "
        "crop, normalisation) and class names as one TorchScript file: torch.jit.load(FILE) "
        "runs it with plain torch (README, 'Use what you trained').",
    )
    e.add_argument("run_dir", help="a `dmx train --out` folder, or a checkpoint folder")
    e.add_argument("--out", required=True, help="the file to write, e.g. model.pt")
    e.set_defaults(func=run_export)


__all__ = ["IMAGE_EXTENSIONS", "add_cli", "image_paths", "predict_files", "write_table"]
