"""Read python pickles (the CIFAR "python version" files) without executing arbitrary code.

`pickle.load` will call any importable function a file names, so a tampered dataset file could
run code on the training machine. `load_pickle` uses an unpickler whose `find_class` admits only
what numpy arrays and plain Python containers need; anything else raises `UnsafePickleError`.
"""

from __future__ import annotations

import builtins
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global outside the allow-list (it could execute code). A ValueError
    too: like every other bad-input error it reaches the user as a message, not a traceback."""


class CorruptPickleError(ValueError):
    """The pickle is truncated or malformed (an interrupted download or a damaged file)."""


# (module, name) -> object. Both spellings of the numpy core module are accepted because the
# official CIFAR files were written by numpy 1.x and files we write ourselves by numpy 2.x.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _multiarray.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _numeric._frombuffer  # protocol-5 arrays
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype
# protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, "latin1")
_ALLOWED[("_codecs", "encode")] = __import__("_codecs").encode
for _name in (
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
    "int", "float", "complex", "bool", "slice", "range",
):  # fmt: skip
    _ALLOWED[("builtins", _name)] = getattr(builtins, _name)
    _ALLOWED[("__builtin__", _name)] = getattr(builtins, _name)  # Python-2 pickles
_ALLOWED[("collections", "OrderedDict")] = __import__("collections").OrderedDict


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, *, path: Path, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refused to load global {module}.{name} — only numpy arrays and "
                "plain Python types are allowed in dataset pickles. The file is not a genuine "
                "dataset file; delete it and download the dataset again from its official source."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._path}: the pickle uses persistent ids ({pid!r}), which dataset files never "
            "do. Delete the file and download the dataset again."
        )


def _decode_keys(obj: Any) -> Any:
    """Turn bytes dict keys (Python-2 pickles read with encoding='bytes') into str, recursively."""
    if isinstance(obj, dict):
        return {
            (k.decode("latin1") if isinstance(k, bytes) else k): _decode_keys(v)
            for k, v in obj.items()
        }
    return obj


def load_pickle(path: str | Path, *, decode_keys: bool = True) -> Any:
    """Load a pickle through the restricted unpickler.

    `encoding="bytes"` is what the official CIFAR files need: they were written by Python 2, and
    numpy's array payloads must stay bytes. Dict keys are decoded to str afterwards
    (`decode_keys=False` keeps them as stored). Values (e.g. CIFAR `label_names`) may stay bytes.

    Raises FileNotFoundError, UnsafePickleError (a refused global) or CorruptPickleError
    (truncated / malformed file); every message names the file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, path=path, encoding="bytes").load()
        except UnsafePickleError:
            raise
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, MemoryError, OverflowError) as e:  # fmt: skip
            raise CorruptPickleError(
                f"{path}: cannot read this pickle ({type(e).__name__}: {e}); the file is "
                "truncated or damaged (an interrupted download?). Delete it (or its whole "
                "dataset folder) and download the dataset again."
            ) from e
    return _decode_keys(obj) if decode_keys else obj
