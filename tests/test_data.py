"""dmx.data: CIFAR/digits loaders, the restricted unpickler, CIFAR-N files, the CIFAR fixture."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dmx.data import DATASETS, ImageDataset, Transforms, load_dataset
from dmx.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_TRANSITION,
    CIFAR100_FINE_TO_COARSE,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DownloadError,
    cifar100_transition,
)
from dmx.data.cifar_n import load_human_labels
from dmx.data.safe_pickle import CorruptPickleError, UnsafePickleError, load_pickle
from dmx.noise import noise_rate
from tests.fixtures import write_cifar_fixture

CIFAR_N = Path("/work/shared/data/cifar-n/CIFAR-10_human.pt")


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    return write_cifar_fixture(tmp_path_factory.mktemp("c10"), n_train=100, n_test=50)


def test_cifar10_fixture_loads_like_the_official_files(cifar10_root):
    ds = load_dataset("cifar10", cifar10_root)
    assert isinstance(ds, ImageDataset)
    assert ds.train_images.shape == (100, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (50, 3, 32, 32)
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.shape == (100,)
    assert (ds.mean, ds.std) == (CIFAR10_MEAN, CIFAR10_STD)
    assert ds.transforms == Transforms(crop_padding=4, hflip=True)
    assert ds.num_classes == 10 and ds.in_channels == 3
    assert ds.class_names[9] == "truck"
    assert np.array_equal(ds.asym_transition, CIFAR10_TRANSITION)
    # rows are R,G,B planes in row-major order, batches concatenated in order 1..5
    raw = pickle.load(
        open(cifar10_root / "cifar-10-batches-py" / "data_batch_2", "rb"), encoding="bytes"
    )
    assert set(raw) >= {b"data", b"labels", b"batch_label", b"filenames"}  # bytes keys
    row = raw[b"data"][3]
    assert torch.equal(ds.train_images[20 + 3], torch.from_numpy(row.reshape(3, 32, 32)))
    assert ds.train_labels[23].item() == raw[b"labels"][3]


def test_fixture_images_are_learnable(cifar10_root):
    # a nearest-class-mean classifier on the train split must score well on the test split,
    # so that end-to-end tests can expect a small net to learn the fixture
    ds = load_dataset("cifar10", cifar10_root)
    x = ds.train_images.float().flatten(1)
    means = torch.stack([x[ds.train_labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(ds.test_images.float().flatten(1), means).argmin(1)
    assert (pred == ds.test_labels).float().mean() > 0.9


def test_root_may_be_the_batches_folder(cifar10_root):
    ds = load_dataset("cifar10", cifar10_root / "cifar-10-batches-py")
    assert len(ds.train_labels) == 100


def test_cifar100_fixture_and_superclass_transition(tmp_path):
    write_cifar_fixture(tmp_path, dataset="cifar100", n_train=200, n_test=100)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.train_images.shape == (200, 3, 32, 32) and ds.num_classes == 100
    assert (ds.mean, ds.std) == (CIFAR100_MEAN, CIFAR100_STD)
    assert ds.class_names[0] == "apple" and len(ds.class_names) == 100
    assert np.array_equal(ds.asym_transition, cifar100_transition())
    # the transition is derived from the files' coarse labels: permute them and it follows
    path = tmp_path / "cifar-100-python" / "train"
    d = pickle.load(open(path, "rb"), encoding="bytes")
    swapped = np.array([0, 1] + list(range(2, 20)))[::-1].copy()  # a relabelling of superclasses
    f2c = swapped[CIFAR100_FINE_TO_COARSE]
    d[b"coarse_labels"] = [int(f2c[v]) for v in d[b"fine_labels"]]
    pickle.dump(d, open(path, "wb"), protocol=2)
    assert np.array_equal(
        load_dataset("cifar100", tmp_path).asym_transition, cifar100_transition(f2c)
    )
    # without coarse labels: the standard table
    del d[b"coarse_labels"]
    pickle.dump(d, open(path, "wb"), protocol=2)
    assert np.array_equal(load_dataset("cifar100", tmp_path).asym_transition, cifar100_transition())


def test_missing_folder_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*--download.*--data-dir"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="cifar10.*cifar100.*digits"):
        load_dataset("mnist", ".")
    assert set(DATASETS) == {"cifar10", "cifar100", "digits"} | {
        "folder",
        "manifest",
        "cub200",
        "clothing1m",
        "webvision",  # image files (test_file_datasets)
    }


def test_truncated_file_names_the_file_and_the_fix(tmp_path):
    root = write_cifar_fixture(tmp_path, n_train=10, n_test=10)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptPickleError, match="data_batch_3.*download"):
        load_dataset("cifar10", root)


def test_label_count_mismatch_is_reported(tmp_path):
    root = write_cifar_fixture(tmp_path, n_train=10, n_test=10)
    path = root / "cifar-10-batches-py" / "test_batch"
    d = pickle.load(open(path, "rb"), encoding="bytes")
    d[b"labels"] = d[b"labels"][:-1]
    pickle.dump(d, open(path, "wb"), protocol=2)
    with pytest.raises(ValueError, match="test_batch: 9 labels for 10 image rows"):
        load_dataset("cifar10", root)


class _Evil:
    # os.system, not print: Ray (imported by other tests in the same process) replaces
    # builtins.print, which would pickle under another name.
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_safe_pickle_refuses_code_and_reads_arrays(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    refused = r"evil: refused to load global (posix|os|nt)\.system"
    with pytest.raises(UnsafePickleError, match=refused):
        load_pickle(path)
    ok = tmp_path / "ok"
    for protocol in (2, 4, 5):
        arr = np.arange(12, dtype=np.int64).reshape(3, 4)
        ok.write_bytes(
            pickle.dumps(
                {b"a": arr, "b": [1, 2.0, "x", b"y"], b"s": np.int64(3)}, protocol=protocol
            )
        )
        d = load_pickle(ok)
        assert np.array_equal(d["a"], arr) and d["b"] == [1, 2.0, "x", b"y"] and d["s"] == 3


def test_digits():
    ds = load_dataset("digits", "unused")
    assert ds.train_images.shape == (1397, 1, 8, 8) and ds.test_images.shape == (400, 1, 8, 8)
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.max() == 255
    assert ds.transforms == Transforms(crop_padding=1, hflip=False) and ds.in_channels == 1
    # stratified: every class in proportion in the test split
    counts = torch.bincount(ds.test_labels, minlength=10)
    assert counts.min() >= 38 and counts.max() <= 42
    x = ds.train_images.float() / 255
    assert ds.mean[0] == pytest.approx(x.mean().item(), abs=1e-5)
    assert sorted(ds.asym_transition.tolist()) == list(range(10))
    again = load_dataset("digits", "unused")  # the split is fixed
    assert torch.equal(again.test_labels, ds.test_labels)


# ---- --download: the real torchvision path, served from this machine -------------------------
@pytest.fixture()
def cifar_server(tmp_path):
    """An HTTP server on localhost serving cifar-10-python.tar.gz built from the fixture."""
    import functools
    import http.server
    import tarfile
    import threading

    src = write_cifar_fixture(tmp_path / "src", n_train=20, n_test=10)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", archive
    finally:
        server.shutdown()


def test_download_fetches_and_extracts_with_torchvision(tmp_path, monkeypatch, cifar_server):
    import hashlib

    import torchvision.datasets as tvd

    url, archive = cifar_server
    monkeypatch.setattr(tvd.CIFAR10, "url", url)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = load_dataset("cifar10", tmp_path / "data", download=True)
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    assert ds.train_images.shape == (20, 3, 32, 32) and len(ds.test_labels) == 10


def test_failed_download_names_the_url_and_the_offline_fix(tmp_path, monkeypatch):
    import socket

    import torchvision.datasets as tvd

    with socket.socket() as s:  # a local port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    with pytest.raises(
        DownloadError,
        match=r"Could not download CIFAR-10 from http://127\.0\.0\.1"
        r".*extract it so that .*cifar-10-batches-py.*without --download",
    ):
        load_dataset("cifar10", tmp_path / "data", download=True)


# --- CIFAR facts: the asymmetric transition, the CIFAR-N human label files ------------------


def test_cifar100_transition_is_a_cycle_within_each_superclass():
    t = cifar100_transition()
    assert sorted(t.tolist()) == list(range(100))  # a permutation
    assert np.all(t != np.arange(100))  # every class moves
    assert np.array_equal(CIFAR100_FINE_TO_COARSE[t], CIFAR100_FINE_TO_COARSE)
    assert np.bincount(CIFAR100_FINE_TO_COARSE).tolist() == [5] * 20
    # fruit_and_vegetables (coarse 4) = apple 0, mushroom 51, orange 53, pear 57, sweet_pepper 83
    assert [t[0], t[51], t[53], t[57], t[83]] == [51, 53, 57, 83, 0]


def test_load_human_labels_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="human_file"):
        load_human_labels(tmp_path / "nope.pt", key="aggre_label")


def test_load_human_labels_refuses_code(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"aggre_label": Evil()}, path)
    with pytest.raises(ValueError, match="cannot read"):
        load_human_labels(path, key="aggre_label")


def test_load_human_labels_numpy_file(tmp_path):
    import torch

    path = tmp_path / "h.pt"
    torch.save({"clean_label": np.arange(5), "aggre_label": np.array([0, 1, 2, 3, 3])}, path)
    assert load_human_labels(path, key="aggre_label").tolist() == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="available keys.*aggre_label"):
        load_human_labels(path, key="worse")


@pytest.mark.skipif(not CIFAR_N.is_file(), reason="CIFAR-10N file not available")
def test_cifar10n_measured_rates():
    clean = load_human_labels(CIFAR_N, key="clean_label")
    assert len(clean) == 50000
    assert noise_rate(clean, load_human_labels(CIFAR_N, key="aggre_label")) == pytest.approx(
        0.090, abs=0.001
    )
    assert noise_rate(clean, load_human_labels(CIFAR_N, key="worse_label")) == pytest.approx(
        0.402, abs=0.001
    )
