"""Persisted noisy labels: one parquet file per noise parameter set.

A noisy-label vector is data, not a by-product of a run: every trial of a sweep, every resumed
run and every analysis must see the same labels. So the vector is generated once over the FULL
training set (subsets and validation splits select rows from it later), written atomically, and
identified by its parameters and content hash.

What to generate comes in as one `dmx.config.NoiseConfig`, so the noise fields are spelled out
once (dmx.config imports only the standard library: no cycle, no heavy import).

File layout (columns): `index` int64 (original training index), `true_label` int64,
`noisy_label` int64. Schema metadata key `dmx.noise` holds JSON: the generator params (dataset,
mode, rate, seed, exclude_true_class, human_file, human_key, num_samples, num_classes,
true_labels_sha256) and `realised_rate`.

Bring-your-own labels (`noise.label_file`) may also be a JSON list of ints (what the reference
writes, e.g. `0.4_asym.json`), a 1-D integer `.npy` array, or a CSV of `index,label` rows (header
optional, any row order, every index once). Those carry no true labels: the dataset's come in as
`true_labels`. Every value is checked (integer, not bool / NaN / fractional, in 0..C-1, one per
training sample) and a bad one is named with its position and the fix, on one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmx.config import NoiseConfig
from dmx.data import ImageDataset
from dmx.data.cifar_n import load_human_labels
from dmx.files import atomic_write_bytes, sha256_bytes, sha256_file, write_parquet_atomic
from dmx.label_files import (
    NoisyLabelFileError,
    is_parquet,
    label_format,
    read_csv_labels,
    read_json_labels,
    read_npy_labels,
)
from dmx.noise import asymmetric_noise, noise_rate, symmetric_noise

METADATA_KEY = b"dmx.noise"
FORMAT_VERSION = 1  # bump when the generator's definition changes: old files then mismatch


@dataclass(frozen=True)
class NoisyLabels:
    """Noisy labels of the full training set and where they came from."""

    path: Path
    true_labels: np.ndarray = field(repr=False)  # (N,) int64
    noisy_labels: np.ndarray = field(repr=False)  # (N,) int64
    params: dict[str, Any]  # generator parameters (see module docstring)
    realised_rate: float  # fraction of samples whose noisy label differs from the true one
    sha256: str  # of the file's bytes: the provenance hash logged with every run

    @property
    def is_clean(self) -> np.ndarray:
        """(N,) bool: noisy label equals the true label."""
        return self.noisy_labels == self.true_labels

    def save_parquet(self, dest: str | Path) -> None:
        """Put these labels at `dest` as a dmx parquet (the run directory's / MLflow's copy).

        A dmx parquet source is copied byte for byte; a JSON / NPY / CSV source is written as a
        parquet whose params name the source file, its format and its sha256. Atomic either way.
        """
        if is_parquet(self.path):
            atomic_write_bytes(dest, Path(self.path).read_bytes())
        else:
            write_noisy_labels(
                dest,
                true_labels=self.true_labels,
                noisy_labels=self.noisy_labels,
                params=self.params,
            )


def _params_hash(params: dict[str, Any]) -> str:
    return sha256_bytes(json.dumps(params, sort_keys=True).encode())


def _rate_tag(rate: float) -> str:
    return f"{rate:g}"


def write_noisy_labels(
    path: str | Path,
    *,
    true_labels: np.ndarray,
    noisy_labels: np.ndarray,
    params: dict[str, Any],
) -> NoisyLabels:
    """Atomically write (N,) true / noisy labels with `params` as metadata; returns the record."""
    path = Path(path)
    true_labels = np.asarray(true_labels, dtype=np.int64)
    noisy_labels = np.asarray(noisy_labels, dtype=np.int64)
    if true_labels.shape != noisy_labels.shape or true_labels.ndim != 1:
        raise ValueError(
            f"true {true_labels.shape} and noisy {noisy_labels.shape} labels must be 1-D of the "
            "same length."
        )
    rate = noise_rate(true_labels, noisy_labels)
    meta = {"params": params, "realised_rate": rate}
    table = pa.table(
        {
            "index": pa.array(np.arange(len(true_labels), dtype=np.int64)),
            "true_label": pa.array(true_labels),
            "noisy_label": pa.array(noisy_labels),
        }
    ).replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    write_parquet_atomic(table, path)
    return NoisyLabels(
        path=path,
        true_labels=true_labels,
        noisy_labels=noisy_labels,
        params=params,
        realised_rate=rate,
        sha256=sha256_file(path),
    )


def load_noisy_labels(
    path: str | Path,
    *,
    expected_num_samples: int | None = None,
    num_classes: int | None = None,
    true_labels: np.ndarray | Sequence[int] | None = None,
) -> NoisyLabels:
    """Read a noisy-label file and check it against the dataset it will be used with.

    Formats (by suffix; an unknown suffix is sniffed for the parquet / npy magic bytes):
    - `.parquet`: a dmx file (index, true_label, noisy_label); rows returned in `index` order.
      It carries its own true labels; `true_labels` is not read.
    - `.json`: a list of N ints, label i for training sample i (the reference's noise files).
    - `.npy`: a 1-D integer array of N labels (read with allow_pickle=False).
    - `.csv`: rows `index,label` (header `index,label` optional, rows in any order, every index
      0..N-1 exactly once).
    The last three carry no truth: `true_labels` (N,) (the dataset's training labels) is required
    and defines N unless `expected_num_samples` is given. Integral floats (3.0) are read as ints;
    fractional values, NaN, booleans, negative or >= num_classes labels are refused.

    Raises FileNotFoundError when `path` is missing, NoisyLabelFileError (a ValueError) naming
    the file, the position of the problem and the fix when the content does not fit.
    `sha256` is always that of the file at `path`, the file the user gave.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"noisy-label file {path} does not exist: check noise.label_file, or leave it empty "
            "to generate labels from the noise parameters."
        )
    fmt = label_format(path)
    if fmt == "parquet":
        return _load_parquet(path, expected_num_samples, num_classes)
    if true_labels is None:
        raise ValueError(
            f"{path}: a .{fmt} label file carries no true labels; pass true_labels= (the "
            "dataset's training labels) to load_noisy_labels."
        )
    true = np.asarray(true_labels).astype(np.int64).reshape(-1)
    n = len(true) if expected_num_samples is None else int(expected_num_samples)
    if len(true) != n:
        raise ValueError(f"true_labels has {len(true)} entries but expected_num_samples is {n}.")
    reader = {"json": read_json_labels, "npy": read_npy_labels, "csv": read_csv_labels}[fmt]
    noisy = reader(path, n, num_classes)
    sha = sha256_file(path)
    params = {
        "mode": "file",
        "source_file": path.name,
        "source_format": fmt,
        "source_sha256": sha,
        "num_samples": n,
        "num_classes": num_classes,
        "true_labels_sha256": sha256_bytes(true.tobytes()),
    }
    return NoisyLabels(
        path=path,
        true_labels=true,
        noisy_labels=noisy,
        params=params,
        realised_rate=noise_rate(true, noisy),
        sha256=sha,
    )


def _load_parquet(
    path: Path, expected_num_samples: int | None, num_classes: int | None
) -> NoisyLabels:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise NoisyLabelFileError(
            f"{path}: not a readable parquet file ({e}). Delete it; it is regenerated from the "
            "noise parameters on the next run."
        ) from e
    missing = {"index", "true_label", "noisy_label"} - set(table.column_names)
    if missing:
        raise NoisyLabelFileError(
            f"{path}: missing columns {sorted(missing)} (has {table.column_names}). It is not a "
            "dmx noisy-label file; delete it or point noise.label_file at the right file."
        )
    raw_meta = (table.schema.metadata or {}).get(METADATA_KEY)
    meta = json.loads(raw_meta) if raw_meta else {}
    index = table.column("index").to_numpy().astype(np.int64)
    true = table.column("true_label").to_numpy().astype(np.int64)
    noisy = table.column("noisy_label").to_numpy().astype(np.int64)
    n = len(index)
    if not np.array_equal(np.sort(index), np.arange(n)):
        raise NoisyLabelFileError(
            f"{path}: column `index` is not a permutation of 0..{n - 1}; the file is damaged. "
            "Delete it and regenerate it."
        )
    order = np.argsort(index)
    true, noisy = true[order], noisy[order]
    if expected_num_samples is not None and n != expected_num_samples:
        raise NoisyLabelFileError(
            f"{path} holds {n} labels but the training set has {expected_num_samples} samples: "
            "the file belongs to another dataset. Pass the file made for this dataset, or delete "
            "it to regenerate."
        )
    if num_classes is not None and n:
        known = true[true >= 0]  # a negative true label is unknown (real-world data)
        lo = int(min(known.min(), noisy.min())) if known.size else int(noisy.min())
        hi = int(max(known.max(), noisy.max())) if known.size else int(noisy.max())
        if lo < 0 or hi >= num_classes:
            raise NoisyLabelFileError(
                f"{path} has labels in [{lo}, {hi}] but the dataset has {num_classes} classes: "
                "the file belongs to another dataset. Pass the right dataset or delete the file."
            )
    return NoisyLabels(
        path=path,
        true_labels=true,
        noisy_labels=noisy,
        params=meta.get("params", {}),
        realised_rate=noise_rate(true, noisy),
        sha256=sha256_file(path),
    )


def training_truth(dataset: ImageDataset, noise: NoiseConfig | None = None) -> np.ndarray:
    """(N,) int64: the true training labels as far as they are known. Noise made by a generator
    (sym, asym, human) is measured against the labels it started from, the training files' own.
    Without generated noise (mode none, or a label file) a clean benchmark's labels are the truth,
    and a real-world noisy set has only what its `train_truth` knows (`dmx.data.UNKNOWN` else)."""
    generated = noise is not None and noise.mode in ("sym", "asym", "human")
    if dataset.train_truth is None or generated:
        return dataset.train_labels.numpy().astype(np.int64)
    return dataset.train_truth.numpy().astype(np.int64)


def noise_params(dataset: ImageDataset, noise: NoiseConfig) -> dict[str, Any]:
    """The parameter dict that identifies a noisy-label vector (stored in, and naming, the file).

    Parameters that do not affect a mode are normalised away (e.g. rate for "human"), so two
    requests for the same labels share one file. `noise` was validated when it was built (mode,
    rate range); its `label_file` and `cache_dir` say where labels live, not what they are, and
    are not part of the identity.
    """
    true = dataset.train_labels.numpy().astype(np.int64)
    mode = noise.mode
    human = mode == "human"
    truth = {}
    if dataset.train_truth is not None and mode == "none":  # what the metrics measure against
        truth["truth_sha256"] = sha256_bytes(training_truth(dataset, noise).tobytes())
    return {
        **truth,
        "format": FORMAT_VERSION,
        "dataset": dataset.name,
        "mode": mode,
        "rate": float(noise.rate) if mode in ("sym", "asym") else 0.0,
        "seed": int(noise.seed) if mode in ("sym", "asym") else 0,
        "exclude_true_class": bool(noise.exclude_true_class) if mode == "sym" else False,
        # the file's name, not its folder: the same CIFAR-N file may live anywhere
        "human_file": Path(noise.human_file).name if human and noise.human_file else None,
        "human_key": (noise.human_key or None) if human else None,
        "num_samples": len(true),
        "num_classes": dataset.num_classes,
        "true_labels_sha256": sha256_bytes(true.tobytes()),
    }


def _generate(dataset: ImageDataset, params: dict[str, Any], human_file: str) -> np.ndarray:
    true = dataset.train_labels.numpy().astype(np.int64)
    mode = params["mode"]
    rng = np.random.default_rng(params["seed"])
    if mode == "none":
        return true.copy()
    if mode == "sym":
        return symmetric_noise(
            true,
            rate=params["rate"],
            num_classes=dataset.num_classes,
            rng=rng,
            exclude_true_class=params["exclude_true_class"],
        )
    if mode == "asym":
        if dataset.asym_transition is None:
            raise ValueError(
                f"dataset {dataset.name!r} defines no asymmetric class transition: use "
                "noise.mode=sym or human, or a dataset with asym_transition."
            )
        return asymmetric_noise(true, rate=params["rate"], transition=dataset.asym_transition,
                                rng=rng)  # fmt: skip
    # human: CIFAR-N labels are in the original training order of the full set
    if not human_file or not params["human_key"]:
        raise ValueError("noise.mode=human needs noise.human_file and noise.human_key.")
    noisy = load_human_labels(human_file, key=params["human_key"])
    if len(noisy) != len(true):
        raise ValueError(
            f"{human_file}[{params['human_key']!r}] has {len(noisy)} labels but {dataset.name} "
            f"has {len(true)} training samples: use the CIFAR-N file of this dataset (and the "
            "full training set, in its original order)."
        )
    if noisy.min() < 0 or noisy.max() >= dataset.num_classes:
        raise ValueError(
            f"{human_file}[{params['human_key']!r}] has labels outside [0, "
            f"{dataset.num_classes}): it is the CIFAR-N file of another dataset."
        )
    return noisy


def make_or_load_noisy_labels(
    dataset: ImageDataset, noise: NoiseConfig, *, cache_dir: str | Path
) -> NoisyLabels:
    """Return the noisy labels of `dataset`'s full training set for the `noise` settings.

    The file `cache_dir/{dataset}-{mode}-{rate}-seed{seed}-{8 hex of params hash}.parquet` is
    reused when it exists and its stored params match; otherwise the labels are generated with
    `np.random.default_rng(seed)` and written atomically. `noise.label_file` and
    `noise.cache_dir` are not read here: the caller decides between a given file
    (`load_noisy_labels`) and the cache folder.
    """
    params = noise_params(dataset, noise)
    mode = params["mode"]
    tag = params["human_key"] if mode == "human" else _rate_tag(params["rate"])
    name = f"{dataset.name}-{mode}-{tag}-seed{params['seed']}-{_params_hash(params)[:8]}.parquet"
    path = Path(cache_dir) / name
    if path.is_file():
        try:
            found = load_noisy_labels(
                path, expected_num_samples=params["num_samples"], num_classes=dataset.num_classes
            )
        except NoisyLabelFileError:
            found = None  # damaged or foreign file under our name: regenerate over it
        if found is not None and found.params == params:
            return found
    noisy = _generate(dataset, params, noise.human_file)
    true = training_truth(dataset, noise)
    return write_noisy_labels(path, true_labels=true, noisy_labels=noisy, params=params)
