"""Using what was trained: `dmx.ensemble` (the two nets + eval preprocessing + class names),
`dmx predict` and `dmx export`, and the exported file run by plain torch without dmx."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dmx.cli import main
from dmx.data.augment import normalize
from dmx.data.decode import decode_image, eval_image
from dmx.ensemble import (
    Ensemble,
    ensemble_from_checkpoint,
    ensemble_from_run,
    to_torchscript,
)
from dmx.models import create_model
from tests.test_stream import MEAN, STD, class_image, register_stream_dataset, stream_cfg

NUM_CLASSES = 7  # more than 5: the top-5 columns are written
PREDICT_DATASET = "test_predict_files"


def tiny_ensemble(*, channels: int = 3, resize: int = 36, crop: int = 32) -> Ensemble:
    torch.manual_seed(0)
    nets = [create_model("small_cnn", num_classes=4, in_channels=channels) for _ in range(2)]
    return Ensemble(
        *nets,
        class_names=["a", "b", "c", "d"],
        mean=MEAN[:channels],
        std=STD[:channels],
        resize=resize,
        crop=crop,
        channels=channels,
    )


def test_preprocessing_is_eval_image_and_the_argmax_is_the_training_tests():
    ens = tiny_ensemble()
    g = torch.Generator().manual_seed(1)
    for h, w in [(50, 41), (32, 32), (20, 90), (36, 36)]:
        images = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=g)
        # Exactly the training eval's input: eval_image per image, then normalisation.
        each = torch.stack([eval_image(im, resize=36, crop=32) for im in images])
        assert torch.equal(ens.preprocess(images), each)
        x = normalize(each, MEAN, STD)
        with torch.no_grad():
            summed = ens.net1(x) + ens.net2(x)  # the training test's ensemble
            probs = ens(images)
        assert torch.equal(probs.argmax(1), summed.argmax(1))
        assert torch.allclose(probs, torch.softmax(summed, 1)) and probs.shape == (3, 4)
        assert torch.allclose(probs.sum(1), torch.ones(3))


@pytest.mark.slow
def test_torchscript_equals_the_module_for_any_size_and_torch_export_takes_a_dynamic_batch():
    ens = tiny_ensemble().eval()
    scripted = to_torchscript(ens)
    assert list(scripted.class_names) == ["a", "b", "c", "d"]
    assert (scripted.resize, scripted.crop, scripted.channels) == (36, 32, 3)
    g = torch.Generator().manual_seed(2)
    for shape in [(1, 3, 33, 47), (4, 3, 64, 30), (2, 3, 32, 32)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        with torch.no_grad():
            assert torch.equal(scripted(x), ens(x))
    with pytest.raises(Exception, match="channels"):
        scripted(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    # The MLflow model of a sweep's best trial is saved with torch.export at one image size:
    # the ensemble exports there with a dynamic batch.
    x = torch.randint(0, 256, (2, 3, 40, 50), dtype=torch.uint8, generator=g)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(ens, (x,), dynamic_shapes={"images_u8": {0: batch}})
    x5 = torch.randint(0, 256, (5, 3, 40, 50), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        assert torch.allclose(program.module()(x5), ens(x5), atol=1e-6)


def test_in_memory_dataset_without_a_record_loads_its_dataset_and_resizes_files(tmp_path):
    # A checkpoint of a digits run (8x8 in memory) with no preprocessing.json beside it: the
    # record comes from the dataset; an 8x8 image passes unchanged, a larger one is resized.
    from dmx.config import Config
    from dmx.state import TrainState, save_checkpoint

    cfg = Config().with_overrides({"data.dataset": "digits", "model.name": "small_cnn"})
    torch.manual_seed(0)
    nets = [create_model("small_cnn", num_classes=10, in_channels=1) for _ in range(2)]
    state = TrainState(config=cfg.to_flat(), epoch=3)
    state.net1, state.net2 = nets[0].state_dict(), nets[1].state_dict()
    save_checkpoint(state, tmp_path / "checkpoint_000003")
    ens = ensemble_from_checkpoint(tmp_path / "checkpoint_000003")
    assert (ens.channels, ens.resize, ens.crop, ens.num_classes) == (1, 8, 8, 10)
    assert ens.class_names == [str(d) for d in range(10)]
    digits = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(ens.preprocess(digits), digits)
    with torch.no_grad():
        x = normalize(digits, ens.mean.flatten().tolist(), ens.std.flatten().tolist())
        assert torch.equal(ens(digits).argmax(1), (nets[0].eval()(x) + nets[1].eval()(x)).argmax(1))
    assert ens.preprocess(torch.zeros(1, 1, 30, 40, dtype=torch.uint8)).shape == (1, 1, 8, 8)
    assert ens.metadata["weights"] == "final" and ens.metadata["epochs_trained"] == 3


def test_best_clean_val_nets_are_used_when_the_run_kept_them(tmp_path):
    from dmx.config import Config
    from dmx.reporting import PREPROCESSING_FILE
    from dmx.state import TrainState, save_checkpoint

    cfg = Config().with_overrides({"model.name": "small_cnn", "run.best_on_clean_val": True})
    torch.manual_seed(0)
    final, best = (create_model("small_cnn", num_classes=4) for _ in range(2))
    state = TrainState(config=cfg.to_flat(), epoch=5)
    state.net1 = state.net2 = final.state_dict()
    state.best_net1 = state.best_net2 = best.state_dict()
    run = tmp_path / "run"
    save_checkpoint(state, run / "checkpoints")
    (run / "config.json").write_text(cfg.to_json())
    record = {"class_names": list("abcd"), "num_classes": 4, "channels": 3, "mean": list(MEAN),
              "std": list(STD), "resize": 36, "crop": 32}  # fmt: skip
    (run / PREPROCESSING_FILE).write_text(json.dumps(record))
    ens = ensemble_from_run(run)
    assert ens.metadata["weights"] == "best_on_clean_val"
    for key, value in best.state_dict().items():
        assert torch.equal(ens.net1.state_dict()[key], value)
    # A checkpoint folder finds the record in its parent (a run's checkpoints/).
    assert ensemble_from_checkpoint(run / "checkpoints").class_names == list("abcd")


# ---------------------------------------------------------------------------------------------
# A trained run: dmx predict and dmx export
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-epoch run (warmup + DivideMix) on 7 classes of files, as `dmx train --out` writes it:
    (run_dir, data root, last epoch's metrics)."""
    from dmx.reporting import RunDirReporter
    from dmx.train import fit

    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        register_stream_dataset(mp, PREDICT_DATASET, num_classes=NUM_CLASSES, n_train=56, n_test=21)
        cfg = stream_cfg(
            root / "data",
            **{"data.dataset": PREDICT_DATASET, "data.num_workers": 0, "run.epochs": 2},
        )
        state = fit(cfg, reporter=RunDirReporter(root / "run", keep_checkpoints=1))
    return root / "run", root / "data", state.metrics_history[-1]


def _predict(args, capsys):
    code = main(["predict", *map(str, args)])
    return code, capsys.readouterr()


@pytest.mark.slow
def test_predict_on_the_test_folder_is_the_training_test(trained_run, tmp_path, capsys):
    run_dir, data_root, metrics = trained_run
    out = tmp_path / "preds.csv"
    code, streams = _predict([run_dir, data_root / "test", "--out", out], capsys)
    assert code == 0, streams.err
    table = pd.read_csv(out)
    files = sorted((data_root / "test").iterdir())
    assert table["path"].tolist() == [str(p) for p in files]
    truth = np.arange(len(files)) % NUM_CLASSES
    accuracy = 100.0 * float(np.mean(table["pred_label"].to_numpy() == truth))
    assert accuracy == pytest.approx(metrics["test_acc"])  # predict = the training test
    assert (table["pred_class"] == [f"class_{c}" for c in table["pred_label"]]).all()
    assert (table["top1_label"] == table["pred_label"]).all()
    assert np.allclose(table["top1_prob"], table["pred_prob"])
    probs = table[[f"top{k}_prob" for k in range(1, 6)]].to_numpy()
    assert (np.diff(probs, axis=1) <= 0).all() and (probs.sum(1) <= 1 + 1e-6).all()


def _odd_images(folder: Path) -> list[Path]:
    """Images of several sizes and modes (RGB/L JPEG, RGBA/P/LA/I;16 PNG, WebP), a corrupt one."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    specs = [("RGB", (40, 60), "jpg"), ("L", (33, 33), "jpg"), ("RGBA", (70, 20), "png"),
             ("P", (32, 32), "png"), ("LA", (45, 50), "png"), ("RGB", (300, 200), "webp"),
             ("I;16", (36, 40), "png")]  # fmt: skip
    paths = []
    for i, (mode, (h, w), ext) in enumerate(specs):
        image = Image.fromarray(class_image(i % NUM_CLASSES, h, w, rng))
        image = image.convert("I").convert(mode) if mode == "I;16" else image.convert(mode)
        paths.append(folder / f"{i}_{mode.replace(';', '')}.{ext}")
        image.save(paths[-1])
    return paths


@pytest.mark.slow
def test_predict_files_of_several_sizes_and_modes_a_manifest_and_a_corrupt_file(
    trained_run, tmp_path, capsys
):
    run_dir, _, _ = trained_run
    paths = _odd_images(tmp_path / "odd")
    sub = tmp_path / "odd" / "nested"
    sub.mkdir()
    (sub / "notes.txt").write_text("not an image: folders yield image files only")
    bad = sub / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    manifest = tmp_path / "list.csv"
    pd.DataFrame({"path": ["odd/" + paths[0].name, str(paths[1])]}).to_csv(manifest, index=False)
    out = tmp_path / "preds.parquet"
    code, streams = _predict([run_dir, tmp_path / "odd", manifest, "--out", out], capsys)
    assert code == 2
    bad_lines = [line for line in streams.err.splitlines() if "broken.png" in line]
    assert len(bad_lines) == 1 and "Traceback" not in streams.err
    table = pd.read_parquet(out)
    assert table["path"].tolist() == [*map(str, sorted(paths)), str(paths[0]), str(paths[1])]
    assert table["pred_label"].between(0, NUM_CLASSES - 1).all()
    assert table["pred_prob"].between(0, 1).all()
    # --skip-bad: the same table, exit 0; CSV on stdout without --out.
    code, streams = _predict([run_dir, bad, paths[0], "--skip-bad"], capsys)
    assert code == 0 and "broken.png" in streams.err
    assert streams.out.splitlines()[0].startswith("path,pred_label,pred_class,pred_prob")
    assert len(streams.out.splitlines()) == 2


PLAIN_TORCH = textwrap.dedent(
    """
    import json, sys
    sys.modules["dmx"] = None  # any `import dmx` now fails: the file must not need it
    import torch
    extra = {"dmx.json": ""}
    model = torch.jit.load(sys.argv[1], _extra_files=extra)
    images = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        probs = [model(x[None])[0] for x in images]  # each image at its own size
        pairs = model(torch.stack([images[0], images[0]]))  # a batch of two
    torch.save({"probs": torch.stack(probs), "pairs": pairs}, sys.argv[3])
    print(json.dumps({"class_names": list(model.class_names), "meta": json.loads(extra["dmx.json"]),
                      "dmx_imported": any(m.startswith("dmx.") for m in sys.modules)}))
    """
)


@pytest.mark.slow
def test_exported_file_in_plain_torch_predicts_what_dmx_predict_does(trained_run, tmp_path, capsys):
    run_dir, data_root, _ = trained_run
    model = tmp_path / "model.pt"
    assert main(["export", str(run_dir), "--out", str(model)]) == 0
    assert "torch.jit.load" in capsys.readouterr().out
    paths = [*_odd_images(tmp_path / "odd"), *sorted((data_root / "test").iterdir())[:4]]
    code, streams = _predict([run_dir, *paths, "--out", tmp_path / "p.csv"], capsys)
    assert code == 0, streams.err
    table = pd.read_csv(tmp_path / "p.csv")
    images = [decode_image(p) for p in paths]  # (3, H, W) uint8 of several sizes
    torch.save(images, tmp_path / "images.pt")
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_TORCH)
    done = subprocess.run(
        [sys.executable, str(script), str(model), str(tmp_path / "images.pt"), str(tmp_path / "o")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},  # no PYTHONPATH: no dmx
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.splitlines()[-1])
    assert not info["dmx_imported"]
    assert info["class_names"] == [f"class_{c}" for c in range(NUM_CLASSES)]
    assert (info["meta"]["resize"], info["meta"]["crop"]) == (36, 32)
    assert info["meta"]["dataset"] == PREDICT_DATASET
    out = torch.load(tmp_path / "o", weights_only=True)
    probs = out["probs"]
    assert probs.argmax(1).tolist() == table["pred_label"].tolist()
    chosen = probs.gather(1, probs.argmax(1, keepdim=True)).squeeze(1).double().numpy()
    assert np.allclose(chosen, table["pred_prob"], atol=1e-6)
    assert torch.allclose(out["pairs"], probs[:1].expand(2, -1), atol=1e-6)
    record = json.loads((run_dir / "preprocessing.json").read_text())
    assert record["class_names"] == info["class_names"]
