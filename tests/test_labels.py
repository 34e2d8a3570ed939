"""dmx.labels: persisted noisy labels (round trip, reuse, validation, atomic writes)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dmx.config import NoiseConfig
from dmx.data import ImageDataset
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
    return ImageDataset(
        name=name,
        train_images=images,
        train_labels=labels,
        test_images=images[:4],
        test_labels=labels[:4],
        num_classes=c,
        mean=(0.5,),
        std=(0.5,),
        crop_padding=0,
        hflip=False,
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
