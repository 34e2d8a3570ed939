"""dataset=manifest: a table of image paths and their labels (CSV or parquet, `data.manifest`).

Columns (header names are matched without case or surrounding spaces):
- `path` (required): the image file, relative to the manifest's folder (or absolute);
- `label` (required): the given, possibly noisy, label;
- `true_label` (optional): the truth where known; empty = unknown (`dmx.data.UNKNOWN`). On
  training rows it becomes `ImageDataset.train_truth` (clean-detection metrics and the realised
  noise rate then count it); on val / test rows it replaces `label` where given;
- `split` (optional): train, val or test (any case; empty = train). val is a CLEAN validation
  split (per-net accuracy every epoch), test the test set; without test rows there is no test set.

Labels are either all integers (0-based class indices; names from `data.classes_file`, one per
line, else "0", "1", ...; without a classes file the number of classes is the largest label + 1)
or class names (strings; the classes are the sorted distinct names, or the classes file's order
when one is given). The format follows the suffix: .parquet / .pq, .tsv (tab-separated), else
CSV (UTF-8, an Excel BOM is fine); a file whose first bytes are parquet's magic is read as
parquet whatever its name.

Every problem is a one-line `ManifestError` naming the file, the line (CSV; line 1 is the
header) or row (parquet, 0-based), the problem and the fix: a missing column, an empty or
out-of-range label, an unknown split value, a path listed twice, a file that does not exist
(with data.skip_bad_images=true a missing file is left out and listed like an undecodable one).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from dmx.data import UNKNOWN, ImageDataset
from dmx.data.filesets import (
    DataLayoutError,
    FileLayout,
    FileList,
    FileOptions,
    abspath,
    build_file_dataset,
    empty_files,
)

SPLITS = ("train", "val", "test")
_INT = re.compile(r"[+-]?\d+(\.0*)?")


class ManifestError(DataLayoutError):
    """A manifest that cannot be used as it is: file, line or row, problem and fix in one line."""


def _find(path: str, *bases: Path) -> Path:
    """`path` as given (absolute, or relative to the current folder), else below each base."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for base in bases:
        if (base / p).exists():
            return base / p
    return p


def _read_table(path: Path) -> tuple[list[str], list[list[Any]], str]:
    """(column names, rows, position word) of a CSV / TSV / parquet manifest."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if path.suffix.lower() in (".parquet", ".pq") or magic == b"PAR1":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ManifestError(
                f"{path}: cannot read it as parquet ({str(exc).splitlines()[0][:150]}). Write "
                "it with pandas' to_parquet or pyarrow, or give a CSV."
            ) from None
        columns = table.column_names
        data = [table.column(c).to_pylist() for c in columns]
        return columns, [list(r) for r in zip(*data)], "row"
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{path}: the file is empty. Write a header line path,label.")
        rows = [[reader.line_num, *row] for row in reader if any(c.strip() for c in row)]
    return header, rows, "line"


def _cell(value: Any) -> str:
    """A cell as stripped text; None / NaN (an empty cell of a parquet column) as ''."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def load_manifest_layout(
    manifest: str | Path, *, classes_file: str = "", root: str | Path = ".", skip_missing=False
) -> FileLayout:
    """The FileLayout of a manifest (module docstring); `root` is data.root, a second place
    where a relative manifest or classes file is looked for."""
    root = Path(root).expanduser()
    if not str(manifest):
        raise ManifestError(
            "dataset=manifest needs data.manifest=PATH: a CSV or parquet file with columns "
            "path,label (docs/datasets.md)."
        )
    path = _find(str(manifest), root)
    if not path.is_file():
        raise FileNotFoundError(
            f"data.manifest={manifest}: no such file (looked at {Path(manifest).expanduser()}"
            f" and {root / manifest}). Check the path."
        )
    header, rows, where = _read_table(path)
    columns = {str(c).strip().lower(): i for i, c in enumerate(header)}
    for required in ("path", "label"):
        if required not in columns:
            raise ManifestError(
                f"{path}: no column {required!r} (columns: {', '.join(map(str, header))}). A "
                "manifest needs path,label and may add true_label and split; rename the header."
            )
    offset = 1 if where == "line" else 0  # a CSV row starts with its line number
    col = {k: columns[k] + offset for k in ("path", "label", "true_label", "split") if k in columns}

    def at(r: int, row: list[Any]) -> str:
        return f"{path}: {where} {row[0] if where == 'line' else r}"

    def value(row: list[Any], key: str) -> str:
        i = col.get(key)
        return _cell(row[i]) if i is not None and i < len(row) else ""

    base = path.parent
    seen: dict[str, str] = {}
    entries = []  # (position, file, label text, truth text, split)
    for r, row in enumerate(rows):
        pos = at(r, row)
        rel = value(row, "path")
        if not rel:
            raise ManifestError(f"{pos}: empty path. Give every row the image's path.")
        file = os.path.normpath(os.path.join(base, os.path.expanduser(rel)))
        file = abspath(file)
        if file in seen:
            raise ManifestError(
                f"{pos}: path {rel!r} is listed twice (also at {seen[file]}). Keep one row per "
                "image."
            )
        seen[file] = f"{where} {row[0] if where == 'line' else r}"
        split = value(row, "split").lower() or "train"
        if split not in SPLITS:
            raise ManifestError(
                f"{pos}: split {value(row, 'split')!r} is not one of train, val, test. Fix the "
                "value (an empty split means train)."
            )
        label = value(row, "label")
        if not label:
            raise ManifestError(f"{pos}: empty label. Give every row a label.")
        if not skip_missing and not os.path.isfile(file):
            raise ManifestError(
                f"{pos}: image {rel!r} not found (looked at {file}). Paths are relative to the "
                "manifest's folder; fix the path, remove the row, or set "
                "data.skip_bad_images=true to leave missing files out."
            )
        entries.append((pos, file, label, value(row, "true_label"), split))
    if not entries:
        raise ManifestError(f"{path}: no rows. Add one row per image under the header.")

    names, index = _classes(path, entries, classes_file, root)
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    for pos, file, label, truth, split in entries:
        y = index(pos, label, "label")
        t = index(pos, truth, "true_label") if truth else UNKNOWN
        by_split[split].append((file, y, t))

    def files(split: str, *, train: bool) -> FileList:
        items = by_split[split]
        fs = tuple(f for f, _, _ in items)
        if train:
            ys = np.array([y for _, y, _ in items], dtype=np.int64)
            return FileList(fs, ys, np.array([t for _, _, t in items], dtype=np.int64))
        # evaluation splits are clean: their true label where the row gives one
        return FileList(fs, np.array([t if t != UNKNOWN else y for _, y, t in items], np.int64))

    if not by_split["train"]:
        raise ManifestError(f"{path}: no training rows (split train or empty). Add some.")
    return FileLayout(
        name="manifest",
        class_names=names,
        train=files("train", train=True),
        test=files("test", train=False) if by_split["test"] else empty_files(),
        val=files("val", train=False) if by_split["val"] else None,
    )


def _classes(path: Path, entries: list, classes_file: str, root: Path):
    """(class names, index(position, text, column) -> class index) for the manifest's labels."""
    texts = [e[2] for e in entries] + [e[3] for e in entries if e[3]]
    integer = all(_INT.fullmatch(t) for t in texts)
    names: list[str] | None = None
    if classes_file:
        cpath = _find(classes_file, path.parent, root)
        if not cpath.is_file():
            raise FileNotFoundError(
                f"data.classes_file={classes_file}: no such file. Give a text file with one class "
                "name per line, or leave it empty."
            )
        lines = cpath.read_text(encoding="utf-8-sig").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        names = [s.strip() for s in lines]
        for i, n in enumerate(names):
            if not n:
                raise ManifestError(f"{cpath}: line {i + 1}: empty class name. One name a line.")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ManifestError(f"{cpath}: class {dup!r} appears twice. One line per class.")
    if integer:
        values = [int(float(t)) for t in texts]
        if names is None:
            names = [str(i) for i in range(max(values) + 1)]
        n = len(names)
        source = f"{classes_file} has {n} names" if classes_file else "labels start at 0"

        def index(pos: str, text: str, column: str) -> int:
            v = int(float(text))
            if not 0 <= v < n:
                raise ManifestError(
                    f"{pos}: {column} {v} is outside 0..{n - 1} ({source}). Use 0-based class "
                    "indices, or give data.classes_file with every class."
                )
            return v

        return tuple(names), index
    if names is None:
        names = sorted(set(texts))
    lookup = {n: i for i, n in enumerate(names)}

    def index_name(pos: str, text: str, column: str) -> int:
        if text not in lookup:
            raise ManifestError(
                f"{pos}: {column} {text!r} is not a class of {classes_file} ({len(names)} names). "
                "Add it to the classes file or fix the label."
            )
        return lookup[text]

    return tuple(names), index_name


def load_manifest(
    root: str | Path, *, manifest: str = "", classes_file: str = "", **options: Any
) -> ImageDataset:
    """The manifest dataset of `data.manifest` (module docstring); `options` as `FileOptions`."""
    opts = FileOptions.from_options(root, options)
    layout = load_manifest_layout(
        manifest, classes_file=classes_file, root=root, skip_missing=opts.skip_bad_images
    )
    return build_file_dataset(layout, opts)


__all__ = ["ManifestError", "SPLITS", "load_manifest", "load_manifest_layout"]
