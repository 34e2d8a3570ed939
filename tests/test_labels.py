"""dmx.labels: persisted noisy labels (round trip, reuse, validation, atomic writes)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dmx.config import NoiseConfig
from dmx.data import Transforms, in_memory_dataset
from dmx.data.cifar import CIFAR10_TRANSITION
from dmx.labels import (
    METADATA_KEY,
    NoisyLabelFileError,
    load_noisy_labels,
    make_or_load_noisy_labels,
)

SYM_02 = NoiseConfig(mode="sym", rate=0.2, seed=0)


def _dataset(n=1000, c=10, transition=CIFAR10_TRANSITION, name="toy"):
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, c, n))
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    return in_memory_dataset(
        name,
        images,
        labels,
        images[:4],
        labels[:4],
        num_classes=c,
        mean=(0.5,),
        std=(0.5,),
        transforms=Transforms(crop_padding=0, hflip=False),
        class_names=tuple(map(str, range(c))),
        asym_transition=transition,
    )


def test_round_trip_and_metadata(tmp_path):
    ds = _dataset()
    noise = NoiseConfig(mode="sym", rate=0.4, seed=3)
    nl = make_or_load_noisy_labels(ds, noise, cache_dir=tmp_path)
    assert nl.path.parent == tmp_path and nl.path.name.startswith("toy-sym-0.4-seed3-")
    assert np.array_equal(nl.true_labels, ds.train_labels.numpy())
    assert nl.noisy_labels.dtype == np.int64
    assert nl.realised_rate == pytest.approx(0.36, abs=0.04)
    table = pq.read_table(nl.path)
    assert table.column_names == ["index", "true_label", "noisy_label"]
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    assert meta["params"]["rate"] == 0.4 and meta["params"]["num_samples"] == 1000
    assert meta["realised_rate"] == nl.realised_rate
    again = load_noisy_labels(nl.path, expected_num_samples=1000, num_classes=10)
    assert np.array_equal(again.noisy_labels, nl.noisy_labels)
    assert again.params == nl.params and again.sha256 == nl.sha256 and len(nl.sha256) == 64


def test_reuse_does_not_rewrite(tmp_path):
    ds = _dataset()
    noise = NoiseConfig(mode="asym", rate=0.4, seed=0)
    a = make_or_load_noisy_labels(ds, noise, cache_dir=tmp_path)
    mtime = a.path.stat().st_mtime_ns
    b = make_or_load_noisy_labels(ds, noise, cache_dir=tmp_path)
    assert b.path == a.path and b.path.stat().st_mtime_ns == mtime
    assert np.array_equal(a.noisy_labels, b.noisy_labels) and a.sha256 == b.sha256
    changed = a.noisy_labels != a.true_labels
    assert np.array_equal(a.noisy_labels[changed], CIFAR10_TRANSITION[a.true_labels[changed]])


def test_param_change_gives_new_file(tmp_path):
    ds = _dataset()

    def path(dataset, **noise):
        return make_or_load_noisy_labels(dataset, NoiseConfig(**noise), cache_dir=tmp_path).path

    paths = {
        path(ds, mode="sym", rate=0.4, seed=0),
        path(ds, mode="sym", rate=0.5, seed=0),
        path(ds, mode="sym", rate=0.4, seed=1),
        path(ds, mode="sym", rate=0.4, seed=0, exclude_true_class=True),
        path(_dataset(n=999), mode="sym", rate=0.4, seed=0),
    }
    assert len(paths) == 5 and len(list(tmp_path.glob("*.parquet"))) == 5


def test_none_mode_is_clean(tmp_path):
    noise = NoiseConfig(mode="none", rate=0.5, seed=0)
    nl = make_or_load_noisy_labels(_dataset(), noise, cache_dir=tmp_path)
    assert nl.realised_rate == 0.0 and nl.is_clean.all()


def test_mismatch_errors_name_file_and_fix(tmp_path):
    nl = make_or_load_noisy_labels(_dataset(), SYM_02, cache_dir=tmp_path)
    with pytest.raises(NoisyLabelFileError, match=f"{nl.path.name}.*1000 labels.*500.*delete"):
        load_noisy_labels(nl.path, expected_num_samples=500)
    with pytest.raises(NoisyLabelFileError, match=f"{nl.path.name}.*5 classes.*delete"):
        load_noisy_labels(nl.path, num_classes=5)


def test_asym_without_transition_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no asymmetric class transition"):
        make_or_load_noisy_labels(
            _dataset(transition=None), NoiseConfig(mode="asym", rate=0.4), cache_dir=tmp_path
        )


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import dmx.labels

    def boom(table, where, **kw):
        where.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(dmx.labels.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        make_or_load_noisy_labels(_dataset(), SYM_02, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_damaged_cached_file_is_regenerated(tmp_path):
    ds = _dataset()
    nl = make_or_load_noisy_labels(ds, SYM_02, cache_dir=tmp_path)
    nl.path.write_bytes(b"garbage")
    with pytest.raises(NoisyLabelFileError, match="Delete it"):
        load_noisy_labels(nl.path)
    again = make_or_load_noisy_labels(ds, SYM_02, cache_dir=tmp_path)
    assert np.array_equal(again.noisy_labels, nl.noisy_labels)


def test_human_mode(tmp_path):
    ds = _dataset(n=20)
    human = np.where(np.arange(20) < 5, (ds.train_labels.numpy() + 1) % 10, ds.train_labels.numpy())
    torch.save({"clean_label": ds.train_labels.numpy(), "aggre_label": human}, tmp_path / "h.pt")
    noise = NoiseConfig(mode="human", human_file=str(tmp_path / "h.pt"), human_key="aggre_label")
    nl = make_or_load_noisy_labels(ds, noise, cache_dir=tmp_path / "cache")
    assert np.array_equal(nl.noisy_labels, human) and nl.realised_rate == 0.25
    assert "aggre_label" in nl.path.name
    with pytest.raises(ValueError, match="has 20 labels.*30 training samples"):
        make_or_load_noisy_labels(_dataset(n=30), noise, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- bring your own labels
# noise.label_file may be a JSON list (the reference's format), a 1-D .npy array or an index,label
# CSV: true labels come from the dataset; every value is checked and named on one line.

N, C = 20, 10


def _truth_and_noisy():
    true = np.random.default_rng(1).integers(0, C, N).astype(np.int64)
    noisy = true.copy()
    noisy[[2, 5, 11]] = (true[[2, 5, 11]] + 1) % C  # 3 of 20 flipped: realised rate 0.15
    return true, noisy


def _write_json(path, labels):
    with open(path, "w") as f:  # exactly as the reference writes `0.4_asym.json`
        json.dump([int(v) for v in labels], f)


def _write_csv(path, labels, *, header=True, order=None):
    order = np.random.default_rng(2).permutation(len(labels)) if order is None else order
    rows = [f"{i},{labels[i]}" for i in order]
    path.write_text("\n".join((["index,label"] if header else []) + rows) + "\n")


WRITERS = {
    "json": _write_json,
    "npy": lambda path, labels: np.save(path, np.asarray(labels, dtype=np.int64)),
    "csv": _write_csv,
    "csv-no-header": lambda path, labels: _write_csv(path, labels, header=False),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_foreign_formats_load_with_the_dataset_truth(tmp_path, kind):
    """Each format gives back the labels in training order, the dataset's true labels, the sha256
    of the user's file and the realised rate, like a generated file."""
    from dmx.files import sha256_file

    true, noisy = _truth_and_noisy()
    path = tmp_path / f"labels.{kind.split('-')[0]}"
    WRITERS[kind](path, noisy)
    nl = load_noisy_labels(path, expected_num_samples=N, num_classes=C, true_labels=true)
    assert np.array_equal(nl.noisy_labels, noisy) and nl.noisy_labels.dtype == np.int64
    assert np.array_equal(nl.true_labels, true)
    assert nl.sha256 == sha256_file(path) and nl.path == path
    assert nl.realised_rate == pytest.approx(0.15)
    assert nl.params["mode"] == "file" and nl.params["source_sha256"] == nl.sha256


def test_integral_floats_and_header_variants_are_accepted(tmp_path):
    true, noisy = _truth_and_noisy()
    (tmp_path / "f.json").write_text(json.dumps([float(v) for v in noisy]))
    np.save(tmp_path / "f.npy", noisy.astype(np.float32))
    rows = [f"{noisy[i]}.0 , {i}" for i in range(N)][::-1]  # label,index order; spaces; BOM
    (tmp_path / "f.csv").write_text("\ufeffLabel,Index\n" + "\n".join(rows) + "\n\n")
    for name in ("f.json", "f.npy", "f.csv"):
        nl = load_noisy_labels(tmp_path / name, num_classes=C, true_labels=true)
        assert np.array_equal(nl.noisy_labels, noisy), name


def test_parquet_suffixless_file_is_sniffed_and_foreign_needs_truth(tmp_path):
    nl = make_or_load_noisy_labels(_dataset(n=N), SYM_02, cache_dir=tmp_path)
    odd = tmp_path / "labels.bin"
    odd.write_bytes(nl.path.read_bytes())
    assert np.array_equal(load_noisy_labels(odd).noisy_labels, nl.noisy_labels)
    _write_json(tmp_path / "l.json", nl.noisy_labels)
    with pytest.raises(ValueError, match="l.json: a .json label file carries no true labels"):
        load_noisy_labels(tmp_path / "l.json")


def _npy(values, dtype=None):
    return lambda path: np.save(path, np.asarray(values, dtype=dtype))


def _text(text):
    return lambda path: path.write_text(text)


def _csv_rows(rows):
    return _text("index,label\n" + "\n".join(rows) + "\n")


def _labels_with(position, value):
    labels = [int(v) for v in _truth_and_noisy()[1]]
    labels[position] = value
    return labels


_GOOD_ROWS = [f"{i},{v}" for i, v in enumerate(_truth_and_noisy()[1])]

BAD_FILES = [
    # (file name, writer, what the one-line message must say)
    ("a.json", _text(json.dumps(_labels_with(3, 1.5))), r"index 3: label 1\.5 is not an integer"),
    ("a.json", _text(json.dumps(_labels_with(2, True))), r"index 2: label true is a boolean"),
    ("a.json", _text(json.dumps(_labels_with(6, float("nan")))), r"index 6: label NaN is not an"),
    ("a.json", _text(json.dumps(_labels_with(4, -1))), r"index 4: label -1 is outside 0\.\.9"),
    ("a.json", _text(json.dumps(_labels_with(17, 12))), r"index 17: label 12 is outside 0\.\.9"),
    ("a.json", _text(json.dumps(_labels_with(0, "3"))), r"index 0: label '3' is not an integer"),
    ("a.json", _text(json.dumps([1, 2, 3])), r"holds 3 labels but the training set has 20 samp"),
    ("a.json", _text(json.dumps({"labels": [1, 2]})), r"holds a JSON dict, not a list"),
    ("a.json", _text("[1, 2,"), r"not readable JSON .*json\.dump"),
    ("a.npy", _npy([0.0] * 3 + [1.5] + [0.0] * 16), r"index 3: label 1\.5"),
    ("a.npy", _npy([0.0] * 5 + [np.nan] + [0.0] * 14), r"index 5: label NaN is not an integer"),
    ("a.npy", _npy([True] * N), r"holds bool values, not integers"),
    ("a.npy", _npy(np.zeros((4, 5), dtype=np.int64)), r"shape \(4, 5\), not 1-D"),
    ("a.npy", _npy(_labels_with(9, 10)), r"index 9: label 10 is outside 0\.\.9"),
    ("a.npy", _npy(_labels_with(9, -3)), r"index 9: label -3 is outside 0\.\.9"),
    ("a.npy", _npy([1, 2]), r"holds 2 labels but the training set has 20 samples"),
    ("a.npy", _npy([{"a": 1}] * N, dtype=object), r"not a plain \.npy array"),
    ("a.npy", _text("garbage"), r"not a plain \.npy array"),
    (
        "a.csv",
        _csv_rows([*_GOOD_ROWS[:4], "3,1", *_GOOD_ROWS[4:]]),
        r"line 6: index 3 appears again \(first on line 5\)",
    ),  # noqa: E501
    (
        "a.csv",
        _csv_rows(_GOOD_ROWS[:7] + _GOOD_ROWS[8:]),
        r"index 7 has no row: the file has 19 rows for 20",
    ),
    ("a.csv", _csv_rows(_GOOD_ROWS[:5]), r"indices 5, 6, 7, 8, 9, \.\.\. have no row"),
    (
        "a.csv",
        _csv_rows([*_GOOD_ROWS[:2], "2,1.5", *_GOOD_ROWS[3:]]),
        r"line 4: label '1\.5' is not an integer",
    ),  # noqa: E501
    (
        "a.csv",
        _csv_rows([*_GOOD_ROWS[:2], "2,True", *_GOOD_ROWS[3:]]),
        r"line 4: label 'True' is not an",
    ),  # noqa: E501
    (
        "a.csv",
        _csv_rows([*_GOOD_ROWS[:2], "2,nan", *_GOOD_ROWS[3:]]),
        r"line 4: label 'nan' is not an",
    ),  # noqa: E501
    (
        "a.csv",
        _csv_rows([*_GOOD_ROWS[:2], "2,-2", *_GOOD_ROWS[3:]]),
        r"line 4: label -2 is outside 0\.\.9",
    ),  # noqa: E501
    (
        "a.csv",
        _csv_rows([*_GOOD_ROWS[:17], "17,12", *_GOOD_ROWS[18:]]),
        r"line 19: label 12 is outside 0\.\.9",
    ),  # noqa: E501
    ("a.csv", _csv_rows([*_GOOD_ROWS, "20,1"]), r"line 22: index 20 is outside 0\.\.19"),
    ("a.csv", _csv_rows([*_GOOD_ROWS[:2], "x,1", *_GOOD_ROWS[3:]]), r"line 4: index 'x' is not an"),  # noqa: E501
    (
        "a.csv",
        _csv_rows([*_GOOD_ROWS[:2], "2,1,0", *_GOOD_ROWS[3:]]),
        r"line 4: 3 fields, expected 2",
    ),  # noqa: E501
    ("a.csv", _text("idx,lbl\n0,1\n"), r"line 1: header 'idx,lbl' is not `index,label`"),
    ("a.txt", _text("1\n2\n"), r"unknown label-file format '\.txt'.*\.json .*\.npy .*\.csv"),
]


@pytest.mark.parametrize(
    "name, write, message", BAD_FILES, ids=[f"{n}:{m[:24]}" for n, _, m in BAD_FILES]
)
def test_bad_label_files_fail_on_one_line_naming_file_problem_and_fix(
    tmp_path, name, write, message
):
    true, _ = _truth_and_noisy()
    path = tmp_path / name
    write(path)
    with pytest.raises(NoisyLabelFileError, match=message) as info:
        load_noisy_labels(path, expected_num_samples=N, num_classes=C, true_labels=true)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))
    # ... and a fix: every message tells the user what to write / give / convert / name
    assert any(w in text for w in ("Give", "give", "Write", "write", "Save", "Convert", "Name"))


def test_prepare_reads_a_json_file_with_the_dataset_truth_and_the_run_keeps_a_parquet(tmp_path):
    """`noise.label_file` = the reference's JSON: prepare_data checks it against the dataset, the
    run records the JSON's sha256, and the run directory's noisy_labels.parquet is a real
    parquet of (index, true_label, noisy_label)."""
    from dmx.config import Config
    from dmx.files import sha256_file
    from dmx.prepare import prepare_data
    from dmx.reporting import NOISY_LABELS_FILE, RunDirReporter
    from dmx.state import TrainState

    cfg = Config().with_overrides({"data.dataset": "digits", "data.root": str(tmp_path)})
    from dmx.data import load_dataset

    true = load_dataset("digits", tmp_path).train_labels.numpy()
    noisy = np.where(np.arange(len(true)) % 5 == 0, (true + 1) % 10, true)
    _write_json(tmp_path / "0.2_sym.json", noisy)
    cfg = cfg.with_overrides({"noise.label_file": str(tmp_path / "0.2_sym.json")})
    prepared = prepare_data(cfg)
    assert prepared.noisy.sha256 == sha256_file(tmp_path / "0.2_sym.json")
    assert np.array_equal(prepared.noisy.true_labels, true)
    assert prepared.noisy.realised_rate == pytest.approx(np.mean(noisy != true))

    RunDirReporter(tmp_path / "run", keep_checkpoints=1).start(
        cfg, prepared, TrainState(config=cfg.to_flat())
    )
    copy = load_noisy_labels(tmp_path / "run" / NOISY_LABELS_FILE)
    assert np.array_equal(copy.noisy_labels, noisy) and np.array_equal(copy.true_labels, true)
    assert copy.params["source_file"] == "0.2_sym.json"
    assert copy.params["source_sha256"] == prepared.noisy.sha256

    with pytest.raises(NoisyLabelFileError, match="holds 10 labels but the training set has"):
        _write_json(tmp_path / "short.json", noisy[:10])
        prepare_data(cfg.with_overrides({"noise.label_file": str(tmp_path / "short.json")}))


def test_save_parquet_copies_a_dmx_file_byte_for_byte(tmp_path):
    nl = make_or_load_noisy_labels(_dataset(n=N), SYM_02, cache_dir=tmp_path)
    nl.save_parquet(tmp_path / "copy.parquet")
    assert (tmp_path / "copy.parquet").read_bytes() == nl.path.read_bytes()
