"""Image-file datasets: every on-disk layout (folder, manifest, CUB-200-2011, Clothing1M,
mini-WebVision) on tiny generated fixtures, the memory / stream rule, the decoded-image cache,
bad files, and the statistics."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dmx.data import DATASETS, UNKNOWN, Transforms, in_memory_dataset, load_dataset
from dmx.data import cache as cache_mod
from dmx.data.decode import BadImageError, decode_image, eval_image
from dmx.data.filesets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FileLayout,
    FileList,
    FileOptions,
    plan_pipeline,
)
from dmx.data.manifest import ManifestError
from tests.fixtures import (
    WEBVISION_SYNSETS,
    write_clothing1m_fixture,
    write_cub_fixture,
    write_digits_folders,
    write_image,
    write_image_folder,
    write_manifest_fixture,
    write_webvision_fixture,
)

SMALL = {"image_size": 32, "resize": 32, "num_workers": 0}  # the memory path, in this process


def load(name: str, root: Path, **options) -> object:
    return load_dataset(name, root, **{**SMALL, **options})


def expected_images(files, *, resize=32, crop=32) -> torch.Tensor:
    """What the memory path must hold: each file decoded to RGB, resized, centre-cropped."""
    return torch.stack([eval_image(decode_image(f), resize=resize, crop=crop) for f in files])


def channel_stats(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = images.double().numpy() / 255.0
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


@pytest.fixture
def folder(tmp_path) -> Path:
    write_image_folder(tmp_path / "train", per_class=6, seed=0)
    write_image_folder(tmp_path / "test", ("cat", "owl"), per_class=2, seed=1)
    write_image_folder(tmp_path / "val", ("dog",), per_class=2, seed=2)
    return tmp_path


# ----------------------------------------------------------------------------- folder layout


def test_folder_classes_and_files_follow_torchvision_imagefolder(folder):
    from torchvision.datasets import ImageFolder

    ds = load("folder", folder / "train", pipeline="stream", image_size=224, resize=256)
    assert ds.class_names == ("cat", "dog", "owl")  # noisy_labels/ and .thumbnails/ are no class
    reference = ImageFolder(str(folder / "train"), allow_empty=True)
    visible = [
        (path, reference.classes[y])
        for path, y in reference.samples
        if not os.path.basename(path).startswith(".") and "/.thumbnails/" not in path
    ]
    ours = [(f, ds.class_names[y]) for f, y in zip(ds.train.files, ds.train.labels.tolist())]
    assert ours == visible  # same files, same order, same class of each (hidden ones skipped)
    assert len(ours) == 18 and any("/nested/" in f for f, _ in ours)
    assert any(f.endswith(".JPEG") for f, _ in ours)  # extensions in any case
    assert not any(f.endswith("notes.txt") for f, _ in ours)
    assert (ds.train_truth == UNKNOWN).all()  # folder labels are given, their truth unknown


def test_folder_test_and_val_roots_take_the_training_class_indices(folder):
    ds = load(
        "folder", folder / "train", test_root=str(folder / "test"), val_root=str(folder / "val")
    )
    assert ds.test.labels.tolist() == [0, 0, 2, 2]  # cat = 0, owl = 2 of the TRAINING classes
    assert ds.val is not None and ds.val.labels.tolist() == [1, 1]
    assert ds.test.images.shape == (4, 3, 32, 32) and ds.val.images.shape == (2, 3, 32, 32)


def test_folder_without_test_root_has_an_empty_test_split(folder):
    ds = load("folder", folder / "train")
    assert len(ds.test) == 0 and ds.test.images.shape == (0, 3, 32, 32) and ds.val is None
    stream = load("folder", folder / "train", pipeline="stream")
    assert len(stream.test) == 0 and stream.test.files == ()


def test_folder_test_class_unknown_to_the_training_root_is_an_error_naming_it(folder):
    write_image(folder / "test" / "yak" / "a.jpg", 0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"test/yak: class folder 'yak' \(data.test_root\) is not"):
        load("folder", folder / "train", test_root=str(folder / "test"))


def test_folder_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data.root={tmp_path / 'nope'}: no such folder"):
        load("folder", tmp_path / "nope")


# ----------------------------------------------------------------------------- memory path


def test_memory_path_holds_each_file_decoded_resized_and_cropped(folder):
    ds = load("folder", folder / "train", test_root=str(folder / "test"))
    stream = load("folder", folder / "train", test_root=str(folder / "test"), pipeline="stream")
    assert ds.in_memory and ds.train.images.dtype == torch.uint8
    assert torch.equal(ds.train.images, expected_images(stream.train.files))
    assert torch.equal(ds.test.images, expected_images(stream.test.files))
    assert torch.equal(ds.train.labels, stream.train.labels)
    assert ds.channels == 3 and ds.image_size == (32, 32)
    assert ds.transforms == Transforms(crop_padding=4, hflip=True, resize=32, crop=32)
    mean, std = channel_stats(ds.train.images)  # exact, over every training image
    assert np.allclose(ds.mean, mean) and np.allclose(ds.std, std)


def test_memory_path_at_another_size_pads_by_an_eighth(folder):
    ds = load("folder", folder / "train", image_size=16, resize=20)
    assert ds.train.images.shape[1:] == (3, 16, 16)
    assert ds.transforms.crop_padding == 2 and ds.transforms.resize == 20


def test_gray_folder_is_one_channel_unless_pretrained_stats(tmp_path):
    write_image_folder(tmp_path / "g", per_class=3, gray=True)
    ds = load("folder", tmp_path / "g")
    assert ds.channels == 1 and ds.train.images.shape[1] == 1 and len(ds.mean) == 1
    pretrained = load("folder", tmp_path / "g", imagenet_stats=True)
    assert pretrained.channels == 3
    assert (pretrained.mean, pretrained.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(pretrained.train.images[:, :1], ds.train.images)


def test_memory_cache_is_hit_on_the_second_load_and_a_changed_file_invalidates_it(
    folder, monkeypatch
):
    calls = []
    real = cache_mod.decode_splits
    monkeypatch.setattr(
        cache_mod, "decode_splits", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    first = load("folder", folder / "train")
    assert calls == [1]
    started = time.perf_counter()
    second = load("folder", folder / "train")
    assert calls == [1], "the second load decoded again"
    assert time.perf_counter() - started < 5
    assert torch.equal(first.train.images, second.train.images) and first.mean == second.mean
    caches = list((folder / "train" / ".dmx_cache").glob("folder-r32-c32-*.pt"))
    assert len(caches) == 1

    changed = sorted((folder / "train" / "dog").glob("img*.png"))[0]
    write_image(changed, 2, rng=np.random.default_rng(9), size=(50, 60))  # new content and mtime
    third = load("folder", folder / "train")
    assert calls == [1, 1]
    row = load("folder", folder / "train", pipeline="stream").train.files.index(str(changed))
    assert torch.equal(third.train.images[row], expected_images([str(changed)])[0])
    assert list((folder / "train" / ".dmx_cache").glob("folder-r32-c32-*.pt")) != caches  # replaced
    assert len(list((folder / "train" / ".dmx_cache").glob("folder-r32-c32-*.pt"))) == 1
    load("folder", folder / "train", image_size=16, resize=16)  # other sizes: another cache
    assert calls == [1, 1, 1]


def test_a_damaged_cache_is_rebuilt_with_a_warning(folder):
    first = load("folder", folder / "train")
    (cache,) = (folder / "train" / ".dmx_cache").glob("folder-r32-c32-*.pt")
    cache.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring the unreadable cache"):
        again = load("folder", folder / "train")
    assert torch.equal(first.train.images, again.train.images)
    assert load("folder", folder / "train").mean == first.mean  # rewritten: no warning now


def test_decoding_in_two_worker_processes_gives_the_same_tensors(folder):
    here = load("folder", folder / "train", cache_dir=str(folder / "c0"))
    workers = load("folder", folder / "train", cache_dir=str(folder / "c2"), num_workers=2)
    assert torch.equal(here.train.images, workers.train.images)


@pytest.mark.slow  # writes and decodes 1797 PNG files (about 10 s on two busy cores)
def test_digits_png_folders_hold_exactly_the_digits_dataset(tmp_path):
    train, test = write_digits_folders(tmp_path / "digits")
    ds = load("folder", train, test_root=str(test), image_size=8, resize=8)
    digits = load_dataset("digits", tmp_path)
    assert ds.class_names == tuple(str(d) for d in range(10)) and ds.channels == 1
    assert ds.train.images.shape == (1397, 1, 8, 8) and ds.test.images.shape == (400, 1, 8, 8)
    for split in ("train", "test"):
        ours, theirs = getattr(ds, split), getattr(digits, split)
        for c in range(10):  # files are in class order, each class in sample order
            assert torch.equal(ours.images[ours.labels == c], theirs.images[theirs.labels == c])
    assert np.allclose(ds.mean, digits.mean) and np.allclose(ds.std, digits.std)


# ----------------------------------------------------------------------------- the rule


def _layout(n: int, **kw) -> FileLayout:
    files = FileList(tuple(f"/x/{i}.jpg" for i in range(n)), np.zeros(n, dtype=np.int64))
    return FileLayout(name="t", class_names=("a",), train=files, **kw)


@pytest.mark.parametrize(
    ("options", "layout_kw", "expected"),
    [
        ({"image_size": 32, "resize": 32}, {}, (True, 32, 32)),
        ({"image_size": 64, "resize": 72}, {}, (True, 72, 64)),
        ({"image_size": 65}, {}, (False, 74, 65)),  # > 64 px streams; resize = 65 * 256 / 224
        ({"image_size": 224, "resize": 256}, {}, (False, 256, 224)),
        ({}, {}, (True, 32, 32)),  # nobody said: a folder tries memory at 32 px
        ({}, {"small_default": False}, (False, 256, 224)),  # CUB / Clothing1M: the recipe
        ({}, {"small_default": False, "stream_size": (320, 299)}, (False, 320, 299)),  # WebVision
        ({"image_size": 32, "memory_budget_mb": 0}, {}, (False, 37, 32)),  # over budget: stream
        ({"image_size": 32, "pipeline": "stream"}, {}, (False, 37, 32)),
        ({"image_size": 128, "pipeline": "memory"}, {}, (True, 128, 128)),
        ({"pipeline": "memory"}, {"small_default": False}, (True, 32, 32)),
    ],
)
def test_pipeline_rule(options, layout_kw, expected):
    plan = plan_pipeline(_layout(10, **layout_kw), FileOptions(**options))
    assert (plan.memory, plan.resize, plan.crop) == expected


def test_memory_pipeline_over_budget_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"pipeline=memory needs 29 MB for 10000 images decoded at"
    ):
        plan_pipeline(_layout(10_000), FileOptions(pipeline="memory", memory_budget_mb=10))


# ----------------------------------------------------------------------------- streaming path


def test_stream_path_keeps_files_and_measures_stats_on_the_eval_inputs(folder, monkeypatch):
    ds = load("folder", folder / "train", pipeline="stream", image_size=24, resize=28)
    assert not ds.in_memory and ds.train.images is None and len(ds.train.files) == 18
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in ds.train.files)
    assert ds.transforms == Transforms(crop_padding=0, hflip=True, resize=28, crop=24)
    assert ds.channels == 3 and ds.image_size == (24, 24)
    mean, std = channel_stats(expected_images(ds.train.files, resize=28, crop=24))  # all 18 < 1000
    assert np.allclose(ds.mean, mean) and np.allclose(ds.std, std)
    assert len(list((folder / "train" / ".dmx_cache").glob("folder-stats-*.json"))) == 1
    monkeypatch.setattr(cache_mod, "_run", lambda *a, **k: pytest.fail("decoded again"))
    again = load("folder", folder / "train", pipeline="stream", image_size=24, resize=28)
    assert again.mean == ds.mean  # from the cache


def test_stream_stats_use_a_seeded_sample(folder):
    files = load("folder", folder / "train", pipeline="stream").train.files
    kw = dict(name="t", resize=32, crop=32, cache_dir=folder / "c", num_workers=0, sample=5)
    mean, std = cache_mod.stream_stats(files, seed=3, **kw)
    pick = np.sort(np.random.default_rng(3).choice(len(files), size=5, replace=False))
    want_mean, want_std = channel_stats(expected_images([files[i] for i in pick]))
    assert np.allclose(mean, want_mean) and np.allclose(std, want_std)
    assert cache_mod.stream_stats(files, seed=4, **kw) != (mean, std)


def test_imagenet_stats_replace_measured_ones(folder):
    ds = load("folder", folder / "train", pipeline="stream", imagenet_stats=True)
    assert (ds.mean, ds.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert not list((folder / "train" / ".dmx_cache").glob("*stats*"))  # nothing measured


# ----------------------------------------------------------------------------- bad files


def test_memory_path_bad_file_raises_naming_it(tmp_path):
    write_image_folder(tmp_path / "t", per_class=3, corrupt="dog")
    with pytest.raises(BadImageError, match=r"dog/broken\.jpg: cannot decode the image"):
        load("folder", tmp_path / "t")


def test_memory_path_skips_and_lists_bad_files_with_one_warning(tmp_path):
    write_image_folder(tmp_path / "t", per_class=3, corrupt="dog")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load("folder", tmp_path / "t", skip_bad_images=True)
    ours = [w for w in caught if "cannot be decoded" in str(w.message)]
    assert len(ours) == 1 and "broken.jpg" in str(ours[0].message)
    assert ds.bad_files == (str(tmp_path / "t" / "dog" / "broken.jpg"),)
    assert len(ds.train) == 9 and ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # the cache remembers the bad file: without skipping it is named again, with skipping listed
    with pytest.raises(BadImageError, match="broken.jpg"):
        load("folder", tmp_path / "t")
    with pytest.warns(UserWarning, match="left out 1 image file"):
        assert load("folder", tmp_path / "t", skip_bad_images=True).bad_files == ds.bad_files


def test_stream_path_bad_files_are_the_streams_business_unless_skipped(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "t", per_class=3, corrupt="dog")
    bad = str(tmp_path / "t" / "dog" / "broken.jpg")
    opts = dict(pipeline="stream", imagenet_stats=True)  # no sampled statistics
    ds = load("folder", tmp_path / "t", **opts)
    assert bad in ds.train.files and ds.bad_files == ()  # the stream raises when it reaches it
    with pytest.warns(UserWarning, match="left out 1 image file"):
        skipped = load("folder", tmp_path / "t", skip_bad_images=True, **opts)
    assert bad not in skipped.train.files and skipped.bad_files == (bad,)
    assert len(skipped.train) == 9
    assert (tmp_path / "t" / ".dmx_cache" / "image_checks.parquet").is_file()
    # checked once: a second load decodes nothing; a repaired file is checked again
    monkeypatch.setattr(cache_mod, "_run", lambda *a, **k: pytest.fail("checked again"))
    with pytest.warns(UserWarning):
        assert load("folder", tmp_path / "t", skip_bad_images=True, **opts).bad_files == (bad,)
    monkeypatch.undo()
    write_image(Path(bad), 1, rng=np.random.default_rng(0))
    repaired = load("folder", tmp_path / "t", skip_bad_images=True, **opts)
    assert repaired.bad_files == () and bad in repaired.train.files


def test_stream_statistics_sample_names_a_bad_file_early(tmp_path):
    write_image_folder(tmp_path / "t", per_class=3, corrupt="owl")
    with pytest.raises(BadImageError, match=r"owl/broken\.jpg: cannot decode"):
        load("folder", tmp_path / "t", pipeline="stream")  # measured stats decode all 10 files


def test_run_dir_reporter_writes_bad_images_txt(tmp_path):
    from dmx.config import Config
    from dmx.reporting import BAD_IMAGES_FILE, RunDirReporter

    run = tmp_path / "run"
    run.mkdir()
    labels = run / "noisy_labels.parquet"
    labels.write_bytes(b"PAR1")  # already in place: not copied
    state = SimpleNamespace(epoch=0, metrics_history=[])
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    y = torch.zeros(2, dtype=torch.int64)
    base = in_memory_dataset("d", x, y, x, y, num_classes=1, class_names=("a",), mean=(0.5,) * 3,
                             std=(0.5,) * 3)  # fmt: skip
    data = SimpleNamespace(noisy=SimpleNamespace(path=labels), dataset=None)
    data.dataset = replace(base, bad_files=("/d/a.jpg", "/d/b.png"))
    RunDirReporter(run, keep_checkpoints=1).start(Config(), data, state)
    assert (run / BAD_IMAGES_FILE).read_text() == "/d/a.jpg\n/d/b.png\n"
    data.dataset = base  # repaired before the resume: no stale list
    RunDirReporter(run, keep_checkpoints=1).start(Config(), data, state)
    assert not (run / BAD_IMAGES_FILE).exists()


# ----------------------------------------------------------------------------- manifest


def test_manifest_csv_with_integer_labels_classes_file_truth_and_splits(tmp_path):
    manifest = write_manifest_fixture(tmp_path / "m", fmt="csv")
    ds = load("manifest", tmp_path, manifest=str(manifest), classes_file="classes.txt")
    assert ds.class_names == ("zebra", "ant", "moose")  # the classes file's order
    assert ds.train.labels.tolist() == [i % 3 for i in range(12)]
    truth = ds.train_truth.tolist()
    assert truth[:4] == [0, 2, 2, 0] and truth[4:] == [UNKNOWN] * 8  # row 1's given label wrong
    assert ds.val.labels.tolist() == [0, 1, 2] and ds.test.labels.tolist() == [0, 1, 2]
    stream = load("manifest", tmp_path, manifest=str(manifest), pipeline="stream")
    assert stream.train.files[0] == str(tmp_path / "m" / "img" / "train" / "00.jpg")  # relative
    assert stream.val.files[0].endswith("img/val/12.jpg")  # to the manifest's folder
    assert stream.class_names == ("0", "1", "2")  # integers without a classes file


def test_manifest_parquet_with_class_names(tmp_path):
    manifest = write_manifest_fixture(tmp_path, fmt="parquet", names=True)
    ds = load("manifest", tmp_path, manifest=str(manifest))
    assert ds.class_names == ("ant", "moose", "zebra")  # sorted names
    given = [("zebra", "ant", "moose")[i % 3] for i in range(12)]
    assert [ds.class_names[y] for y in ds.train.labels.tolist()] == given
    assert ds.train_truth.tolist()[:5] == [2, 1, 1, 2, UNKNOWN]


def test_manifest_parquet_integer_columns_with_nulls(tmp_path):
    manifest = write_manifest_fixture(tmp_path, fmt="parquet")
    ds = load("manifest", tmp_path, manifest=str(manifest), classes_file="classes.txt")
    assert ds.train_truth.tolist()[:5] == [0, 2, 2, 0, UNKNOWN] and len(ds.test) == 3


def _edit_csv(path: Path, line: int, text: str | None) -> None:
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("line", "text", "message"),
    [
        (
            1,
            "file,label,true_label,split",
            r"manifest.csv: no column 'path' \(columns: file, label",
        ),
        (3, "img/train/01.png,1,,dev", r"manifest.csv: line 3: split 'dev' is not one of train, v"),
        (
            2,
            "img/train/00.jpg,7,,train",
            r"manifest.csv: line 2: label 7 is outside 0..2 \(classes",
        ),
        (
            4,
            "img/train/01.png,2,,train",
            r"manifest.csv: line 4: path 'img/train/01.png' is listed ",
        ),
        (
            5,
            "img/train/gone.jpg,0,,train",
            r"manifest.csv: line 5: image 'img/train/gone.jpg' not f",
        ),
        (6, "img/train/04.png,,,train", r"manifest.csv: line 6: empty label"),
        (7, "img/train/05.JPEG,1,9,train", r"manifest.csv: line 7: true_label 9 is outside 0..2"),
    ],
)
def test_manifest_errors_name_the_file_the_line_and_the_fix(tmp_path, line, text, message):
    manifest = write_manifest_fixture(tmp_path, fmt="csv")
    _edit_csv(manifest, line, text)
    with pytest.raises(ManifestError, match=message) as err:
        load("manifest", tmp_path, manifest=str(manifest), classes_file="classes.txt")
    assert "\n" not in str(err.value) and str(err.value).rstrip().endswith(".")
    if "listed" in message:
        assert "also at line 3" in str(err.value)


def test_manifest_name_label_not_in_the_classes_file(tmp_path):
    manifest = write_manifest_fixture(tmp_path, names=True)
    _edit_csv(manifest, 2, "img/train/00.jpg,gnu,,train")
    with pytest.raises(ManifestError, match=r"line 2: label 'gnu' is not a class of classes.txt"):
        load("manifest", tmp_path, manifest=str(manifest), classes_file="classes.txt")


def test_manifest_missing_and_corrupt_files_are_skipped_and_listed_when_asked(tmp_path):
    manifest = write_manifest_fixture(tmp_path, corrupt=True)
    (tmp_path / "img" / "train" / "03.png").unlink()
    with pytest.raises(ManifestError, match="line 5: image 'img/train/03.png' not found"):
        load("manifest", tmp_path, manifest=str(manifest))
    with pytest.warns(UserWarning, match="left out 2 image file"):
        ds = load("manifest", tmp_path, manifest=str(manifest), skip_bad_images=True)
    assert ds.bad_files == (
        str(tmp_path / "img" / "train" / "03.png"),
        str(tmp_path / "img" / "train" / "broken.jpg"),
    )
    assert len(ds.train) == 11 and len(ds.train_truth) == 11 and ds.train_truth[3] == UNKNOWN


def test_manifest_not_given_or_not_found(tmp_path):
    with pytest.raises(ManifestError, match="dataset=manifest needs data.manifest=PATH"):
        load("manifest", tmp_path)
    with pytest.raises(FileNotFoundError, match="data.manifest=nope.csv: no such file"):
        load("manifest", tmp_path, manifest="nope.csv")


# ----------------------------------------------------------------------------- CUB-200-2011


@pytest.mark.parametrize("inside", [False, True])
def test_cub200_distributed_layout(tmp_path, inside):
    root = write_cub_fixture(tmp_path, per_class=3, classes=4)
    ds = load_dataset("cub200", root / "CUB_200_2011" if inside else root, num_workers=0)
    assert ds.num_classes == 200 and len(ds.class_names) == 200
    assert ds.class_names[:2] == ("001.Bird_1", "002.Bird_2")
    # ids 1..12, odd ids train: classes 0,0,0,1,1,1,... (1-based class ids -> 0-based)
    assert ds.train.labels.tolist() == [0, 0, 1, 2, 2, 3] and ds.test.labels.tolist() == [
        0,
        1,
        1,
        2,
        3,
        3,
    ]
    assert ds.train_truth is None  # clean labels
    assert all(Path(f).is_file() and "/CUB_200_2011/images/" in f for f in ds.train.files)
    assert ds.transforms == Transforms(crop_padding=0, hflip=True, resize=256, crop=224)
    assert load("cub200", root, image_size=32, resize=32).train.images.shape == (6, 3, 32, 32)


def test_cub200_missing_names_the_file_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CUB_200_2011/images.txt\. .*caltech"):
        load("cub200", tmp_path)


# ----------------------------------------------------------------------------- Clothing1M


@pytest.mark.parametrize("reference_layout", [False, True])
def test_clothing1m_layouts(tmp_path, reference_layout):
    from dmx.data.clothing1m import CLASSES, MEAN, STD

    root = write_clothing1m_fixture(tmp_path, reference_layout=reference_layout)
    ds = load(
        "clothing1m", root, pipeline="stream", image_size=224, resize=256, imagenet_stats=True
    )
    assert ds.class_names == CLASSES and len(CLASSES) == 14 and CLASSES[13] == "Underwear"
    assert ds.train.labels.tolist() == [i % 14 for i in range(20)]  # NOISY labels
    truth = ds.train_truth.tolist()
    assert truth[:6] == [1, 1, 2, 4, 4, 5] and truth[6:] == [UNKNOWN] * 14  # clean where known
    assert ds.val.labels.tolist() == [6, 7, 8, 9] and ds.test.labels.tolist() == [10, 11, 12, 13]
    assert all(Path(f).is_file() for s in (ds.train, ds.val, ds.test) for f in s.files)
    assert (ds.mean, ds.std) == (MEAN, STD)  # its own, even with pretrained weights
    assert ds.transforms == Transforms(
        crop_padding=0, hflip=True, resize=256, crop=224, random_resized_crop=False
    )


def test_clothing1m_defaults_to_its_recipe_and_can_go_to_memory(tmp_path):
    root = write_clothing1m_fixture(tmp_path)
    recipe = load_dataset("clothing1m", root, num_workers=0)  # no size given
    assert (
        not recipe.in_memory and recipe.transforms.crop == 224 and recipe.transforms.resize == 256
    )
    small = load("clothing1m", root)  # a tiny model's 32 px: in memory
    assert small.train.images.shape == (20, 3, 32, 32) and small.val.images.shape == (4, 3, 32, 32)
    assert small.channels == 3 and small.mean == (0.6959, 0.6537, 0.6371)


def test_clothing1m_missing_and_inconsistent_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"noisy_label_kv.txt\. .*on request"):
        load("clothing1m", tmp_path)
    root = write_clothing1m_fixture(tmp_path / "c")
    with open(root / "clean_test_key_list.txt", "a") as fh:
        fh.write("images/9/99/nolabel.jpg\n")
    with pytest.raises(ValueError, match=r"clean_test_key_list.txt: line 5: key 'images/9/99/nol"):
        load("clothing1m", root)


# ----------------------------------------------------------------------------- WebVision


@pytest.mark.parametrize("imagenet", ["folders", "list"])
def test_webvision_mini_layout(tmp_path, imagenet):
    root = write_webvision_fixture(tmp_path, imagenet=imagenet)
    ds = load("webvision", root, pipeline="stream", image_size=299, resize=320)
    assert ds.num_classes == 50
    assert ds.class_names[:4] == ("tench", "goldfish", "great white shark", "tiger shark")
    assert ds.train.labels.tolist() == [i % 4 for i in range(16)]  # labels >= 50 dropped
    assert (ds.train_truth == UNKNOWN).all() and len(ds.train_truth) == 16
    assert ds.test.labels.tolist() == [0, 1, 2, 3]  # the WebVision validation set
    assert all("/val_images_256/" in f for f in ds.test.files)
    assert ds.val is None
    inet = ds.extra_tests["imagenet"]
    assert inet.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    if imagenet == "folders":  # class 3's folder is named by its synset id
        assert WEBVISION_SYNSETS[3].split()[0] in inet.files[-1]
    assert all(Path(f).is_file() for f in (*ds.train.files, *ds.test.files, *inet.files))
    assert (ds.mean, ds.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert ds.transforms == Transforms(
        crop_padding=0, hflip=True, resize=320, crop=299, random_resized_crop=True
    )
    assert load_dataset("webvision", root, num_workers=0).transforms.crop == 299  # the recipe


def test_webvision_without_synsets_or_imagenet(tmp_path):
    root = write_webvision_fixture(tmp_path, imagenet="none", synsets=False)
    with pytest.warns(UserWarning, match="no ILSVRC2012 validation images"):
        ds = load("webvision", root)
    assert ds.class_names == tuple(str(i) for i in range(50)) and dict(ds.extra_tests) == {}
    assert ds.train.images.shape == (16, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)


def test_webvision_malformed_list_line_names_file_and_line(tmp_path):
    root = write_webvision_fixture(tmp_path, imagenet="none")
    with open(root / "info" / "val_filelist.txt", "a") as fh:
        fh.write("val000777.jpg seven\n")
    with pytest.raises(ValueError, match=r"val_filelist.txt: line 6: expected 'PATH LABEL'"):
        load("webvision", root)


def test_webvision_missing_names_the_list_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"info/train_filelist_google.txt\. .*ethz"):
        load("webvision", tmp_path)


# ----------------------------------------------------------------------------- registry, prepare


def test_registered_and_loaded_through_prepare_with_every_file_option(folder):
    from dmx.config import Config
    from dmx.prepare import load_run_dataset, prepare_data

    assert {"folder", "manifest", "cub200", "clothing1m", "webvision"} <= set(DATASETS)
    cfg = Config().with_overrides(
        {
            "data.dataset": "folder",
            "data.root": str(folder / "train"),
            "data.test_root": str(folder / "test"),
            "data.num_workers": 0,
            "model.name": "small_cnn",
            "noise.mode": "sym",
            "noise.rate": 0.5,
        }
    )
    ds = load_run_dataset(cfg)  # every data.* option prepare passes is accepted
    assert ds.in_memory and ds.image_size == (32, 32) and len(ds.test) == 4
    prepared = prepare_data(cfg)  # generated noise is measured against the folder labels
    assert np.array_equal(prepared.noisy.true_labels, ds.train.labels.numpy())
