"""CIFAR-N (CIFAR-10N / CIFAR-100N) human label files: real annotator noise for CIFAR.

A CIFAR-N release file (CIFAR-10_human.pt, CIFAR-100_human.pt) is a torch zip archive holding a
dict of numpy label vectors in the original CIFAR training order. It is a dataset file format, so
it is read here, next to the CIFAR loaders; `dmx.labels` turns a chosen vector into a noisy-label
file and `dmx.noise` never touches files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _numpy_safe_globals() -> list:
    # CIFAR-N files were pickled by numpy 1.x (numpy.core.*); numpy 2 lives in numpy._core.
    # torch's weights_only loader matches globals by name, so register both spellings.
    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    globs: list = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        globs += [(multiarray._reconstruct, f"{mod}._reconstruct"),
                  (multiarray.scalar, f"{mod}.scalar")]  # fmt: skip
    # dtype instances pickle as their numpy.dtypes.* class in some numpy versions
    globs += sorted({type(np.dtype(t)) for t in "?bBhHiIlLqQefdgFDG"}, key=str)
    return globs


def load_human_labels(path: str | Path, *, key: str) -> np.ndarray:
    """Load one label vector from a CIFAR-N file (CIFAR-10_human.pt / CIFAR-100_human.pt).

    The files are torch zip archives holding a dict of numpy arrays. They are read with
    `torch.load(weights_only=True)`, which executes no code: only numpy array reconstruction is
    admitted. CIFAR-10N keys: clean_label, aggre_label, worse_label, random_label1..3;
    CIFAR-100N: clean_label, noisy_label (and *_coarse_label). Returns (N,) int64 in the original
    training order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-N label file {path} does not exist: point noise.human_file at "
            "CIFAR-10_human.pt or CIFAR-100_human.pt (from the CIFAR-N release)."
        )
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises UnpicklingError / RuntimeError for bad archives
        raise ValueError(
            f"{path}: cannot read it as a CIFAR-N label file ({type(e).__name__}: {e}). "
            "Use the original CIFAR-10_human.pt / CIFAR-100_human.pt; re-download it if damaged."
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of label arrays, found {type(data).__name__}.")
    if key not in data:
        raise ValueError(
            f"{path} has no key {key!r}; available keys: {sorted(data)}. Pass one of them as "
            "noise.human_key."
        )
    labels = np.asarray(data[key])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}[{key!r}] is not a 1-D integer label vector: {labels.shape}.")
    return labels.astype(np.int64)


__all__ = ["load_human_labels"]
