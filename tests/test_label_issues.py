"""dmx.label_issues: ranking on synthetic arrays, metrics; dmx.cli.label_issues: the run-dir
loader and CLI; and a real seeded noisy digits run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmx.cli.label_issues import add_cli, format_summary, load_clean_probs, run_label_issues
from dmx.label_issues import (
    average_precision,
    find_label_issues,
    label_issue_scores,
    label_issue_table,
    precision_at_k,
    rank_by_score,
    recall_at_k,
    summarize_ranking,
)


def _synthetic(n: int = 200, num_classes: int = 5, noise: float = 0.3, seed: int = 0):
    """Labels with a known flipped set; clean prob low on the flipped set, high elsewhere."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, num_classes, n)
    flipped = rng.random(n) < noise
    given = np.where(flipped, (true + rng.integers(1, num_classes, n)) % num_classes, true)
    clean = np.where(flipped, rng.uniform(0.0, 0.3, (2, n)), rng.uniform(0.7, 1.0, (2, n))).T
    probs = rng.dirichlet(np.ones(num_classes), n) * 0.2
    probs[np.arange(n), true] += 0.8  # the ensemble predicts the true class
    return given, true, flipped, clean, probs


def test_flipped_set_is_ranked_first():
    given, true, flipped, clean, probs = _synthetic()
    ranked = find_label_issues(given, clean, probs)
    assert ranked.dtype == np.int64
    assert set(ranked.tolist()) == set(np.flatnonzero(flipped).tolist())  # flagged = mean < 0.5
    k = int(flipped.sum())
    full = find_label_issues(given, clean, probs, top_k=len(given))
    assert flipped[full[:k]].all() and not flipped[full[k:]].any()
    assert precision_at_k(full, flipped, k) == 1.0
    assert recall_at_k(full, flipped, k) == 1.0
    assert average_precision(full, flipped) == 1.0


def test_shapes_mask_and_single_net():
    given, _, flipped, clean, probs = _synthetic(n=50)
    mask = find_label_issues(given, clean, probs, ranked=False)
    assert mask.shape == (50,) and mask.dtype == bool
    assert (mask == flipped).all()
    assert find_label_issues(given, clean[:, 0], probs, top_k=7).shape == (7,)
    assert find_label_issues(given, clean, top_k=0).shape == (0,)


def test_tie_break_by_confidence_in_another_label():
    given = np.array([0, 0, 0, 1])
    clean = np.zeros((4, 2))  # saturated GMM posteriors: all tied on the primary score
    prob_given = np.array([0.9, 0.1, 0.5, 0.3])
    ranked = find_label_issues(given, clean, pred_prob_given=prob_given, top_k=4)
    assert ranked.tolist() == [1, 3, 2, 0]
    # with only a predicted label: a disagreement beats an agreement, then the index
    ranked = find_label_issues(given, clean, pred_label=np.array([0, 1, 0, 0]), top_k=4)
    assert ranked.tolist() == [1, 3, 0, 2]
    assert rank_by_score(np.array([0.2, 0.9, 0.2])).tolist() == [1, 0, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clean_prob": np.ones(4)},  # fewer rows than labels
        {"clean_prob": np.ones((5, 3))},  # three nets
        {"clean_prob": np.full(5, 1.5)},  # not a probability
        {"clean_prob": np.ones(5), "pred_probs": np.ones((4, 3)) / 3},
        {"clean_prob": np.ones(5), "pred_label": np.zeros(3, dtype=int)},
        {"clean_prob": np.ones(5), "pred_probs": np.ones((5, 2)) / 2},  # label 4 out of range
    ],
)
def test_mismatched_inputs_raise(kwargs):
    with pytest.raises(ValueError):
        label_issue_scores(np.array([0, 1, 2, 3, 4]), **kwargs)


def test_score_is_one_minus_mean_clean_prob():
    score, tiebreak = label_issue_scores(
        np.array([0, 1]), np.array([[0.2, 0.4], [1.0, 0.8]]), np.array([[0.25, 0.75], [0.5, 0.5]])
    )
    np.testing.assert_allclose(score, [0.7, 0.1])
    np.testing.assert_allclose(tiebreak, [0.75, 0.5])


def test_table_and_summary():
    given, true, flipped, clean, probs = _synthetic(n=100)
    table = label_issue_table(
        given, clean, probs, true_labels=true, sample_index=np.arange(100) + 1000
    )
    assert list(table.columns[:9]) == [
        "rank",
        "index",
        "given_label",
        "pred_label",  # the name clean_probs.parquet uses: one name in every file
        "clean_prob_net1",
        "clean_prob_net2",
        "pred_prob_given",
        "score",
        "flagged",
    ]
    assert table["index"].min() == 1000 and table["index"].is_unique
    assert table["rank"].tolist() == list(range(1, 101))  # ranks from 1
    assert table["score"].is_monotonic_decreasing
    assert (table["pred_label"] == table["true_label"]).all()
    summary = summarize_ranking(table, top_k=10)
    assert summary["num_wrong"] == flipped.sum()
    assert summary["precision_at_k"] == 1.0 and summary["auc"] == 1.0
    assert summary["noise_rate"] == pytest.approx(flipped.mean())


def _write_clean_probs(path, given, true, clean, probs):
    pd.DataFrame(
        {
            "index": np.arange(len(given)),
            "given_label": given,
            "true_label": true,
            "clean_prob_net1": clean[:, 0],
            "clean_prob_net2": clean[:, 1],
            "pred_label": probs.argmax(1),
            "pred_prob_given": probs[np.arange(len(given)), given],
        }
    ).to_parquet(path)


def test_run_dir_loader_and_cli(tmp_path, capsys):
    given, true, flipped, clean, probs = _synthetic(n=80)
    _write_clean_probs(tmp_path / "clean_probs.parquet", given, true, clean, probs)
    assert len(load_clean_probs(tmp_path)) == 80
    table, summary, paths = run_label_issues(tmp_path, top_k=5)
    assert len(table) == 5 and table["is_wrong"].all()
    assert paths[0] == tmp_path / "label_issues.parquet" and all(p.is_file() for p in paths)
    assert paths[2] == tmp_path / "label_issues_pairs.csv"
    csv = pd.read_csv(paths[1])
    assert csv["index"].tolist() == table["index"].tolist()
    assert list(csv.columns) == list(pd.read_parquet(paths[0]).columns)  # same names everywhere
    assert "given_class" not in table  # no config.json: the dataset (and its names) unknown

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(
        ["label-issues", str(tmp_path), "--top", "3", "--out", str(tmp_path / "x.csv")]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "precision@3 1.000" in out and (tmp_path / "x.parquet").is_file()
    with pytest.raises(FileNotFoundError):
        load_clean_probs(tmp_path / "no_such_dir" / "x")  # not a dir, not a file, not a run id
    (tmp_path / "empty").mkdir()
    assert args.func(parser.parse_args(["label-issues", str(tmp_path / "empty")])) == 2


@pytest.mark.slow
def test_seeded_noisy_digits_run_ranks_flipped_labels_first(tmp_path):
    train = pytest.importorskip("dmx.train")
    from dmx.presets import get_preset
    from dmx.reporting import RunDirReporter

    cfg = get_preset("digits-sym-0.5").with_overrides(
        {
            "run.epochs": 5,
            "dividemix.warmup_epochs": 4,
            "run.device": "cpu",
            "noise.cache_dir": str(tmp_path),
        }
    )
    run_dir = RunDirReporter(tmp_path / "run", keep_checkpoints=cfg.run.keep_checkpoints)
    train.fit(cfg, reporter=run_dir)
    table, summary, _ = run_label_issues(tmp_path / "run", out=tmp_path / "issues")
    k = summary["num_wrong"]
    print(summary)
    # sym 0.5 over all 10 classes: ~45% wrong; a random ranking gives precision ~0.45.
    assert 0.3 < summary["noise_rate"] < 0.6
    assert summary["precision_at_num_wrong"] > summary["noise_rate"] + 0.3
    assert precision_at_k(np.arange(len(table)), table["is_wrong"].to_numpy(), k // 2) > 0.9
    assert summary["auc"] > 0.9


def test_class_names_beside_indices_and_the_confused_pairs(tmp_path, capsys):
    """A cifar10 run: class names next to every label index, and the pairs the suspects' given
    labels are confused with, counted and checked against a count by hand."""
    import json

    from dmx.data.cifar import CIFAR10_CLASSES
    from dmx.label_issues import confused_pairs

    given, true, flipped, clean, probs = _synthetic(n=200, num_classes=10, noise=0.3)
    _write_clean_probs(tmp_path / "clean_probs.parquet", given, true, clean, probs)
    (tmp_path / "config.json").write_text(
        json.dumps({"data.dataset": "cifar10", "dividemix.p_threshold": 0.5})
    )
    table, summary, paths = run_label_issues(tmp_path)
    row = table.iloc[0]
    assert row["given_class"] == CIFAR10_CLASSES[row["given_label"]]
    assert row["pred_class"] == CIFAR10_CLASSES[row["pred_label"]]
    assert row["true_class"] == CIFAR10_CLASSES[row["true_label"]]
    columns = list(table.columns)
    assert columns.index("given_class") == columns.index("given_label") + 1

    pairs = pd.read_csv(paths[2])
    expected = confused_pairs(table)
    assert pairs["count"].tolist() == expected["count"].tolist()
    assert pairs["count"].is_monotonic_decreasing and pairs["count"].sum() > 0
    suspects = table[table["flagged"] & (table["pred_label"] != table["given_label"])]
    assert pairs["count"].sum() == len(suspects)
    top = pairs.iloc[0]
    by_hand = suspects[
        (suspects["given_label"] == top["given_label"])
        & (suspects["pred_label"] == top["pred_label"])
    ]
    assert top["count"] == len(by_hand) and top["truly_wrong"] == by_hand["is_wrong"].sum()
    assert top["given_class"] == CIFAR10_CLASSES[top["given_label"]]
    assert summary["pairs"][0]["count"] == top["count"]
    out = format_summary(summary, paths)
    assert f"{top['given_class']} ({top['given_label']}) -> " in out


def test_outputs_go_next_to_the_run_not_into_ray_checkpoint_folders(tmp_path):
    from dmx.cli.label_issues import output_stem, run_folder

    trial = tmp_path / "trial_abc_00001"
    ckpt = trial / "checkpoint_000002"
    ckpt.mkdir(parents=True)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    assert run_folder(ckpt) == trial and output_stem(ckpt) == trial / "label_issues"
    assert run_folder(run_dir / "checkpoints") == run_dir
    assert output_stem(run_dir) == run_dir / "label_issues"
    assert output_stem("0123456789abcdef") == Path("label_issues-0123456789ab")
