"""Foreign noisy-label files (`noise.label_file`): a JSON list of ints (what the DivideMix
reference writes, e.g. `0.4_asym.json`), a 1-D integer `.npy` array, or a CSV of `index,label` rows
(header optional, any row order, every index once). Every value is checked (integer, not bool /
NaN / fractional, in 0..C-1, one per training sample); a bad one is named with its position and
the fix, on one line. `dmx.labels` turns the labels into a `NoisyLabels`."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


class NoisyLabelFileError(ValueError):
    """A noisy-label file does not match the dataset or the requested parameters."""


LABEL_FILE_FORMATS = (
    ".parquet (a dmx label file), .json (a list of ints, as the DivideMix reference writes), "
    ".npy (a 1-D integer array) or .csv (index,label rows)"
)


def is_parquet(path: Path) -> bool:
    return label_format(path, strict=False) == "parquet"


def label_format(path: Path, *, strict: bool = True) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("parquet", "json", "npy", "csv"):
        return suffix
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError:
        magic = b""
    if magic.startswith(b"PAR1"):
        return "parquet"
    if magic == b"\x93NUMPY":
        return "npy"
    if not strict:
        return ""
    raise NoisyLabelFileError(
        f"{path}: unknown label-file format {path.suffix or '(no suffix)'!r}; noise.label_file "
        f"takes {LABEL_FILE_FORMATS}. Convert the labels to one of these and name it with the "
        "matching suffix."
    )


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_label(value: object) -> int | None:
    """`value` as an int class index, or None when it is not an integer (bool, 1.5, NaN, "a")."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    return None


def _parse_int(text: str) -> int | None:
    """A CSV field as an int ("3", " 3 ", "3.0"), or None ("1.5", "nan", "True", "")."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return _as_label(float(text))
    except ValueError:
        return None


def _bad_value(path: Path, where: str, what: str, value: object) -> NoisyLabelFileError:
    kind = "a boolean" if isinstance(value, bool | np.bool_) else "not an integer"
    fix = (
        "Indices must be integer sample positions 0..N-1"
        if what == "index"
        else "Labels must be integer class indices (e.g. 3)"
    )
    return NoisyLabelFileError(
        f"{path}: {where}: {what} {_short(value)} is {kind}. {fix}; write the file from an "
        "integer array."
    )


def _check_range(path: Path, where: str, label: int, num_classes: int | None) -> None:
    if label >= 0 and (num_classes is None or label < num_classes):
        return
    if num_classes is None:
        raise NoisyLabelFileError(
            f"{path}: {where}: label {label} is negative. Labels are class indices 0..C-1; fix "
            "the file."
        )
    raise NoisyLabelFileError(
        f"{path}: {where}: label {label} is outside 0..{num_classes - 1} (the dataset has "
        f"{num_classes} classes). Give this dataset's class indices, or train on the dataset "
        "the file was made for."
    )


def _check_count(path: Path, count: int, n: int) -> None:
    if count != n:
        raise NoisyLabelFileError(
            f"{path} holds {count} labels but the training set has {n} samples. Give one label "
            "per training sample in the dataset's original order, or train on the dataset the "
            "file was made for."
        )


def _check_labels(
    path: Path, values: Sequence[object], n: int, num_classes: int | None, where: Callable
) -> np.ndarray:
    """Each value an integer in range (named by `where(i)` when not), then the count."""
    labels = []
    for i, value in enumerate(values):
        label = _as_label(value)
        if label is None:
            raise _bad_value(path, where(i), "label", value)
        _check_range(path, where(i), label, num_classes)
        labels.append(label)
    _check_count(path, len(labels), n)
    return np.asarray(labels, dtype=np.int64)


def read_json_labels(path: Path, n: int, num_classes: int | None) -> np.ndarray:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise NoisyLabelFileError(
            f"{path}: not readable JSON ({' '.join(str(e).split())}). Write the labels with "
            "json.dump(list_of_ints, f), as the DivideMix reference does."
        ) from e
    if not isinstance(data, list):
        raise NoisyLabelFileError(
            f"{path}: holds a JSON {type(data).__name__}, not a list of labels. Write the labels "
            "with json.dump(list_of_ints, f): label i for training sample i."
        )
    return _check_labels(path, data, n, num_classes, lambda i: f"index {i}")


def read_npy_labels(path: Path, n: int, num_classes: int | None) -> np.ndarray:
    fix = "Save the labels with numpy.save(PATH, labels.astype(numpy.int64)): a 1-D integer array."
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise NoisyLabelFileError(
            f"{path}: not a plain .npy array ({' '.join(str(e).split())}). {fix}"
        ) from e
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise NoisyLabelFileError(f"{path}: is an .npz archive, not one .npy array. {fix}")
    if array.ndim != 1:
        raise NoisyLabelFileError(f"{path}: holds an array of shape {array.shape}, not 1-D. {fix}")
    if array.dtype.kind not in "iuf":
        raise NoisyLabelFileError(f"{path}: holds {array.dtype} values, not integers. {fix}")
    if array.dtype.kind == "f":
        bad = ~(np.isfinite(array) & (array == np.round(array)))
        if bad.any():
            i = int(np.argmax(bad))
            raise _bad_value(path, f"index {i}", "label", float(array[i]))
    if len(array):
        for i in (int(np.argmin(array)), int(np.argmax(array))):
            _check_range(path, f"index {i}", int(array[i]), num_classes)
    _check_count(path, len(array), n)
    return array.astype(np.int64)


def read_csv_labels(path: Path, n: int, num_classes: int | None) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (ValueError, OSError) as e:
        raise NoisyLabelFileError(
            f"{path}: not a readable UTF-8 CSV ({e}). Write rows `index,label`, one per "
            "training sample."
        ) from e
    columns = (0, 1)  # positions of index and label
    rows: dict[int, tuple[int, int]] = {}  # index -> (label, line)
    reader = csv.reader(text.splitlines())
    first = True
    for fields in reader:
        line = reader.line_num
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if first:
            first = False
            if _parse_int(fields[0]) is None:  # a header row
                names = [f.lower() for f in fields]
                if sorted(names) != ["index", "label"]:
                    raise NoisyLabelFileError(
                        f"{path}: line {line}: header {','.join(fields)!r} is not `index,label`. "
                        "Name the columns index,label (or drop the header: index first, label "
                        "second)."
                    )
                columns = (names.index("index"), names.index("label"))
                continue
        if len(fields) != 2:
            raise NoisyLabelFileError(
                f"{path}: line {line}: {len(fields)} fields, expected 2 (index,label). Write one "
                "`index,label` row per training sample."
            )
        raw_index, raw_label = fields[columns[0]], fields[columns[1]]
        index, label = _parse_int(raw_index), _parse_int(raw_label)
        if index is None:
            raise _bad_value(path, f"line {line}", "index", raw_index)
        if label is None:
            raise _bad_value(path, f"line {line}", "label", raw_label)
        if not 0 <= index < n:
            raise NoisyLabelFileError(
                f"{path}: line {line}: index {index} is outside 0..{n - 1} (the training set has "
                f"{n} samples). Give indices of this dataset's training samples, or train on the "
                "dataset the file was made for."
            )
        if index in rows:
            raise NoisyLabelFileError(
                f"{path}: line {line}: index {index} appears again (first on line "
                f"{rows[index][1]}). Give every index 0..{n - 1} exactly once."
            )
        _check_range(path, f"line {line}", label, num_classes)
        rows[index] = (label, line)
    if len(rows) != n:
        missing = sorted(set(range(n)) - set(rows))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        which = f"index {shown} has" if len(missing) == 1 else f"indices {shown} have"
        raise NoisyLabelFileError(
            f"{path}: {which} no row: the file has {len(rows)} rows for {n} training samples. "
            f"Give every index 0..{n - 1} exactly once."
        )
    labels = np.empty(n, dtype=np.int64)
    for index, (label, _) in rows.items():
        labels[index] = label
    return labels


__all__ = [
    "LABEL_FILE_FORMATS",
    "NoisyLabelFileError",
    "is_parquet",
    "label_format",
    "read_csv_labels",
    "read_json_labels",
    "read_npy_labels",
]
