"""dmx.metrics: accuracy, top-k, clean detection, best / last-10 summary."""

import math

import numpy as np
import pytest
import torch

from dmx.metrics import accuracy, clean_detection, summarize_accuracy, topk_accuracy


def test_accuracy_from_logits_and_predictions():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # argmax 0, 1, 0
    labels = np.array([0, 1, 1])
    assert accuracy(logits, labels) == pytest.approx(200 / 3)
    assert accuracy(np.array([0, 1, 0]), labels) == pytest.approx(200 / 3)
    assert accuracy(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(200 / 3)
    assert isinstance(accuracy(logits, labels), float)


def test_accuracy_edge_cases():
    assert math.isnan(accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))
    assert accuracy(torch.zeros(2, 3, dtype=torch.bfloat16), torch.tensor([0, 0])) == 100.0
    with pytest.raises(ValueError, match="labels"):
        accuracy(np.zeros((3, 2)), np.zeros(2, dtype=int))


def test_topk_accuracy_hand_computed():
    logits = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])  # label 2 is 2nd, then 3rd
    labels = np.array([2, 2])
    assert topk_accuracy(logits, labels, 1) == 0.0
    assert topk_accuracy(logits, labels, 2) == 50.0
    assert topk_accuracy(logits, labels, 3) == 100.0
    assert topk_accuracy(logits, labels, 1) == accuracy(logits, labels)
    with pytest.raises(ValueError, match="k must be"):
        topk_accuracy(logits, labels, 4)


def test_clean_detection_hand_computed():
    prob = np.array([0.9, 0.8, 0.3, 0.1])
    labeled = prob > 0.5
    is_clean = np.array([True, False, True, False])
    out = clean_detection(prob, labeled, is_clean)
    # clean scores {.9, .3} vs noisy {.8, .1}: 3 of 4 pairs ranked right
    assert out == {"auc": pytest.approx(0.75), "precision": 0.5, "recall": 0.5}
    torch_out = clean_detection(torch.tensor(prob), torch.tensor(labeled), torch.tensor(is_clean))
    assert torch_out == out


def test_clean_detection_undefined_values_are_nan():
    prob = np.array([0.9, 0.2])
    all_clean = clean_detection(prob, np.array([True, False]), np.array([True, True]))
    assert math.isnan(all_clean["auc"]) and all_clean["precision"] == 1.0
    assert all_clean["recall"] == 0.5
    none_labeled = clean_detection(prob, np.array([False, False]), np.array([True, False]))
    assert math.isnan(none_labeled["precision"]) and none_labeled["recall"] == 0.0
    assert none_labeled["auc"] == 1.0
    no_clean = clean_detection(prob, np.array([True, False]), np.array([False, False]))
    assert math.isnan(no_clean["recall"]) and math.isnan(no_clean["auc"])
    assert no_clean["precision"] == 0.0


def test_summarize_accuracy():
    out = summarize_accuracy([float(x) for x in range(1, 13)])  # 1 .. 12
    assert out == {"best": 12.0, "last10": pytest.approx(7.5)}  # mean(3 .. 12)
    assert summarize_accuracy([5.0, 9.0, 7.0]) == {"best": 9.0, "last10": 7.0}  # up to 10
    assert summarize_accuracy([1.0, 2.0, 4.0], last=2) == {"best": 4.0, "last10": 3.0}
    empty = summarize_accuracy([])
    assert math.isnan(empty["best"]) and math.isnan(empty["last10"])
    with pytest.raises(ValueError, match="last"):
        summarize_accuracy([1.0], last=0)
