"""The streaming path (`dmx.data.stream.StreamData`): views that do not depend on the worker
count or on a restart, eval batches that are exactly `eval_image` + normalisation, one-line errors
for undecodable files, and a bit-exact resume of `fit` streaming with two workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dmx.data import DATASETS, ImageDataset, Split, Transforms
from dmx.data.augment import normalize
from dmx.data.decode import BadImageError, decode_image, eval_image
from dmx.data.stream import StreamData, augment_seed
from dmx.data.views import TEST, TRAIN, LoopSplits

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
SIZES = [(40, 52), (48, 36), (37, 37), (64, 45)]  # (H, W): landscape, portrait, square


def class_image(label: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8: a class colour with class-dependent stripes and noise (learnable)."""
    palette = np.random.default_rng(7).integers(40, 216, size=(16, 3))
    stripes = 40 * np.sin(2 * np.pi * (1 + label % 3) * np.arange(w) / w)[None, :, None]
    pixels = palette[label][None, None] + stripes + rng.normal(0, 10, (h, w, 3))
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def write_images(
    folder: Path, labels: list[int], *, seed: int = 0, modes: tuple[str, ...] = ("RGB",)
) -> list[str]:
    """One image file per label under `folder` (JPEG and PNG, sizes from SIZES, PIL modes cycled
    from `modes`); returns their absolute paths in order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, label in enumerate(labels):
        h, w = SIZES[i % len(SIZES)]
        image = Image.fromarray(class_image(label, h, w, rng)).convert(modes[i % len(modes)])
        ext = ".jpg" if i % 2 == 0 and image.mode in ("RGB", "L") else ".png"
        path = folder / f"img{i:03d}{ext}"
        image.save(path)
        paths.append(str(path.resolve()))
    return paths


def make_data(files: list[str], labels: list[int], *, num_workers: int, **kw) -> StreamData:
    y = torch.tensor(labels, dtype=torch.int64)
    test = Split(y[:5], files=tuple(files[:5]))
    splits = LoopSplits(Split(y, files=tuple(files)), y.numpy(), {TEST: test})
    options = {
        "transforms": Transforms(resize=44, crop=32),
        "seed": 11,
        "device": torch.device("cpu"),
        **kw,
    }
    return StreamData(splits, num_classes=3, mean=MEAN, std=STD, num_workers=num_workers, **options)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> tuple[list[str], list[int]]:
    labels = [i % 3 for i in range(12)]
    return write_images(tmp_path_factory.mktemp("stream"), labels), labels


BATCHES = [torch.tensor([3, 0, 7, 1]), torch.tensor([11, 5, 2]), torch.tensor([9, 4, 10, 6, 8])]


def all_views(data: StreamData, key=(4, 1, 0), batches=BATCHES) -> list[torch.Tensor]:
    """(B, 2, C, H, W) per batch."""
    return [torch.stack(v, 1) for v in data.views(batches, n_views=2, gen=None, key=key)]


@pytest.mark.parametrize("random_resized_crop", [False, True])
def test_views_are_identical_for_0_1_2_workers_and_after_a_restart(
    image_files, random_resized_crop
):
    files, labels = image_files
    t = Transforms(resize=44, crop=32, random_resized_crop=random_resized_crop)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the main process decodes with 2 threads, a worker with 1
    try:
        rng_before = torch.get_rng_state()
        inline = all_views(make_data(files, labels, num_workers=0, transforms=t))
        # The main process's RNG (the loop's global stream: dropout, init) is untouched.
        assert torch.equal(torch.get_rng_state(), rng_before)
    finally:
        torch.set_num_threads(threads)
    one = make_data(files, labels, num_workers=1, transforms=t)
    two = make_data(files, labels, num_workers=2, transforms=t)
    for views in (all_views(one), all_views(two)):
        assert all(torch.equal(a, b) for a, b in zip(inline, views))
    # Persistent workers, second pass: the same stream again gives the same views, and a fresh
    # StreamData with the same seed (a resumed run) does too.
    assert all(torch.equal(a, b) for a, b in zip(inline, all_views(two)))
    restarted = make_data(files, labels, num_workers=2, transforms=t)
    assert all(torch.equal(a, b) for a, b in zip(inline, all_views(restarted)))
    assert [v.shape for v in inline] == [(len(b), 2, 3, 32, 32) for b in BATCHES]
    assert inline[0].dtype == torch.float32


def test_two_streams_read_in_lockstep_equal_the_streams_read_alone(image_files):
    # The loop reads the labelled and the unlabelled views one batch each per step.
    files, labels = image_files
    data = make_data(files, labels, num_workers=2)
    x_alone, u_alone = all_views(data, key=(2, 1, 0)), all_views(data, key=(2, 2, 0))
    x = data.views(BATCHES, n_views=2, gen=None, key=(2, 1, 0))
    u = data.views(BATCHES, n_views=2, gen=None, key=(2, 2, 0))
    for i, (vx, vu) in enumerate(zip(x, u)):
        assert torch.equal(torch.stack(vx, 1), x_alone[i])
        assert torch.equal(torch.stack(vu, 1), u_alone[i])
    assert len(data._pool) == 2  # one loader per open stream, reused afterwards
    all_views(data)
    assert len(data._pool) == 2


def _fraction_different(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of samples whose views differ (a, b: (B, ...))."""
    return float((a != b).flatten(1).any(1).float().mean())


def test_key_position_view_and_seed_each_change_the_augmentation(image_files):
    files, labels = image_files
    data = make_data(files, labels, num_workers=0)
    batch = [torch.arange(12)]
    base = all_views(data, key=(4, 1, 0), batches=batch)[0]  # (12, 2, C, H, W)
    # Another view of the same sample, another key (epoch, role or net), another run seed.
    assert _fraction_different(base[:, 0], base[:, 1]) > 0.8
    for key in [(5, 1, 0), (4, 2, 0), (4, 1, 1)]:
        assert _fraction_different(base, all_views(data, key=key, batches=batch)[0]) > 0.8
    reseeded = make_data(files, labels, num_workers=0, seed=12)
    assert _fraction_different(base, all_views(reseeded, batches=batch)[0]) > 0.8
    # The same samples one position later in the stream (sample 11 first) get other views.
    shifted = all_views(data, batches=[torch.cat([torch.tensor([11]), torch.arange(12)])])[0]
    assert _fraction_different(base, shifted[1:]) > 0.8
    # ... but the position decides, not the batch layout: split into two batches, equal.
    split = all_views(data, batches=[torch.arange(5), torch.arange(5, 12)])
    assert torch.equal(base, torch.cat(split))
    assert augment_seed(11, (4, 1, 0), 3, 0) != augment_seed(11, (4, 1), 0, 3)


def test_eval_batches_are_eval_image_then_normalisation(image_files):
    files, labels = image_files
    data = make_data(files, labels, num_workers=2, transforms=Transforms(resize=40, crop=32))
    rows = torch.tensor([7, 2, 9, 0, 11])

    def expected(paths):
        images = [eval_image(decode_image(p), resize=40, crop=32) for p in paths]
        return normalize(torch.stack(images), MEAN, STD)

    got = torch.cat(list(data.eval_batches(TRAIN, batch_size=2, idx=rows)))
    assert torch.equal(got, expected([files[i] for i in rows.tolist()]))
    test = list(data.eval_batches(TEST, batch_size=4))
    assert [len(b) for b in test] == [4, 1]
    assert torch.equal(torch.cat(test), expected(files[:5]))
    assert torch.equal(data.probe(), expected(files[:1]))
    assert data.eval_splits == (TEST,) and len(data) == 12
    assert torch.equal(data.eval_labels(TEST), torch.tensor(labels[:5]))
    assert torch.equal(data.eval_labels(TRAIN), data.noisy_y)


def test_channels_last_and_grayscale(tmp_path):
    labels = [0, 1, 2, 0]
    files = write_images(tmp_path, labels, modes=("L",))
    y = torch.tensor(labels)
    data = StreamData(
        LoopSplits(Split(y, files=tuple(files)), y.numpy(), {}),
        num_classes=3,
        mean=(0.5,),
        std=(0.25,),
        transforms=Transforms(resize=36, crop=32),
        device=torch.device("cpu"),
        channels_last=True,
        channels=1,
        num_workers=0,
    )
    ((x1, x2),) = list(data.views([torch.arange(4)], n_views=2, gen=None, key=(0, 0, 0)))
    assert x1.shape == (4, 1, 32, 32)
    assert x1.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_corrupt_file_is_one_line_naming_it(tmp_path, image_files, num_workers):
    files, labels = image_files
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    files = [*files[:6], str(bad), *files[7:]]
    data = make_data(files, labels, num_workers=num_workers)
    with pytest.raises(BadImageError) as err:
        for _ in data.views(BATCHES, n_views=2, gen=None, key=(0, 0, 0)):
            pass
    message = str(err.value)
    assert str(bad) in message and "\n" not in message
    assert "Traceback" not in message and "worker" not in message.lower()
    assert err.value.path == str(bad)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(BadImageError, match="broken.jpg"):
        list(data.eval_batches(TRAIN, batch_size=4))
    # The loaders stay usable: a pass over good files works after the error.
    good = torch.tensor([0, 1, 2, 3])
    assert len(list(data.views([good], n_views=1, gen=None, key=(1, 0, 0)))) == 1


def test_an_in_memory_split_or_no_crop_is_refused(image_files):
    files, labels = image_files
    with pytest.raises(ValueError, match="crop"):
        make_data(files, labels, num_workers=0, transforms=Transforms())
    y = torch.tensor(labels)
    images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
    splits = LoopSplits(Split(y, images=images), y.numpy(), {})
    with pytest.raises(ValueError, match="file splits"):
        StreamData(
            splits,
            num_classes=3,
            mean=MEAN,
            std=STD,
            transforms=Transforms(crop=8),
            device=torch.device("cpu"),
        )


# ---------------------------------------------------------------------------------------------
# fit on the streaming path
# ---------------------------------------------------------------------------------------------
STREAM_DATASET = "test_stream_files"


def file_dataset(
    root: Path, n_train: int = 48, n_test: int = 12, *, num_classes: int = 3, name: str = ""
) -> ImageDataset:
    """A tiny file-backed dataset (`num_classes` classes of JPEG/PNG files of several sizes),
    written once under `root`, streamed at 32 px after a resize to 36."""
    train_y = [i % num_classes for i in range(n_train)]
    test_y = [i % num_classes for i in range(n_test)]
    if not (root / "train").is_dir():
        write_images(root / "train", train_y, seed=1)
        write_images(root / "test", test_y, seed=2)
    train = sorted(str(p) for p in (root / "train").iterdir())
    test = sorted(str(p) for p in (root / "test").iterdir())
    return ImageDataset(
        name=name or STREAM_DATASET,
        train=Split(torch.tensor(train_y), files=tuple(train)),
        test=Split(torch.tensor(test_y), files=tuple(test)),
        num_classes=num_classes,
        class_names=tuple(f"class_{c}" for c in range(num_classes)),
        mean=MEAN,
        std=STD,
        transforms=Transforms(resize=36, crop=32),
    )


def register_stream_dataset(monkeypatch, name: str = STREAM_DATASET, **kw) -> None:
    """`data.dataset=NAME` loads `file_dataset(data.root, **kw)` (until the folder loader lands,
    the test builds the ImageDataset itself)."""
    loader = lambda root, **_: file_dataset(Path(root), name=name, **kw)  # noqa: E731
    monkeypatch.setitem(DATASETS, name, loader)


def stream_cfg(root: Path, **overrides):
    from dmx.config import Config

    base = {
        "data.dataset": STREAM_DATASET,
        "data.root": str(root),
        "data.num_workers": 2,
        "data.val_fraction": 0.1,
        "model.name": "small_cnn",
        "noise.mode": "sym",
        "noise.rate": 0.3,
        "noise.cache_dir": str(root / "noise"),
        "run.epochs": 3,
        "run.device": "cpu",
        "dividemix.warmup_epochs": 1,
        "dividemix.lambda_u": 25.0,
        "optim.batch_size": 8,
        "optim.warmup_batch_size": 16,
        "optim.eval_batch_size": 16,
    }
    return Config().with_overrides({**base, **overrides})


TIMING = {"epoch_seconds", "images_per_second"}


@pytest.mark.slow
def test_fit_streaming_with_two_workers_resumes_bit_exact(tmp_path, monkeypatch):
    from dmx.reporting import RunDirReporter
    from dmx.state import load_latest_checkpoint
    from dmx.train import fit

    register_stream_dataset(monkeypatch)
    cfg = stream_cfg(tmp_path / "data")
    full = fit(cfg)
    assert full.metrics_history[-1]["phase"] == 1  # the DivideMix epochs streamed too

    cut = cfg.with_overrides({"run.epochs": 2})
    fit(cut, reporter=RunDirReporter(tmp_path / "cut", keep_checkpoints=2))
    state = load_latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert state.epoch == 2
    resumed = fit(cfg, state=state)
    # The worker count is not part of the run: resuming the same checkpoint inline, without
    # workers, gives the same run again.
    inline = fit(
        cfg.with_overrides({"data.num_workers": 0}),
        state=load_latest_checkpoint(tmp_path / "cut" / "checkpoints"),
    )

    def strip(history):
        return [{k: v for k, v in m.items() if k not in TIMING} for m in history]

    for run in (resumed, inline):
        assert strip(run.metrics_history) == strip(full.metrics_history)
        for name in ("net1", "net2"):
            a, b = getattr(full, name), getattr(run, name)
            assert all(torch.equal(a[k], b[k]) for k in a), name
        assert torch.equal(full.clean_prob1, run.clean_prob1)
