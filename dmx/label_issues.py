"""Which training samples carry a wrong label? A ranked export from DivideMix's final division.

DivideMix already answers the question while it trains: each net fits a 2-component GMM to the
per-sample losses and the posterior of the low-loss component is the probability that the GIVEN
label is clean. This module turns the final clean probabilities of both nets (plus the ensemble
prediction) into a ranking, most-likely-wrong first, in the spirit of cleanlab's
`find_label_issues`: arrays in, indices or a mask out, keyword-only options.

Score (documented, so a user can reproduce it):

    score_i    = 1 - (clean_prob_net1_i + clean_prob_net2_i) / 2        in [0, 1]
    tiebreak_i = 1 - P_ensemble(given_label_i | x_i)                     in [0, 1]

Samples are ranked by `score` descending and, among equal scores, by `tiebreak` descending. The
GMM posteriors saturate (many samples get exactly 0 or 1), so the tie-break decides the order
inside those blocks: the sample the ensemble most confidently assigns to another class comes first.
With only a predicted label (no probabilities) the tie-break is 1 when it differs from the given
label, else 0.

Everything here is pure: arrays or DataFrames in, arrays or tables out; no file, no MLflow, no
printing. `table_from_clean_probs` takes the per-sample report of a run (`clean_probs.parquet`:
index, given_label, true_label, clean_prob_net1, clean_prob_net2, pred_label, pred_prob_given);
reading it from a run directory, a checkpoint or an MLflow run is `dmx.cli.label_issues`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


# ---- arrays in, arrays out ------------------------------------------------------------------
def _as_clean_prob(clean_prob: Any, n: int) -> np.ndarray:
    """(N,) or (N, 2) -> (N, 2) float64, values checked to lie in [0, 1]."""
    p = np.asarray(clean_prob, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[1] not in (1, 2):
        raise ValueError(f"clean_prob must have shape (N,) or (N, 2); got {p.shape}.")
    if p.shape[0] != n:
        raise ValueError(f"clean_prob has {p.shape[0]} rows but given_labels has {n}.")
    if not np.all(np.isfinite(p)) or p.min(initial=0.0) < 0.0 or p.max(initial=0.0) > 1.0:
        raise ValueError("clean_prob must hold finite probabilities in [0, 1].")
    return p


def label_issue_scores(
    given_labels: Any,
    clean_prob: Any,
    pred_probs: Any = None,
    *,
    pred_label: Any = None,
    pred_prob_given: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (score, tiebreak), both (N,) float64 in [0, 1]; higher = more likely wrong.

    Args:
        given_labels: (N,) int — the (possibly noisy) labels the model was trained on.
        clean_prob: (N,) or (N, 2) — clean probability of the given label, per net.
        pred_probs: (N, C) ensemble class probabilities (rows sum to 1), or None.
        pred_label: (N,) int ensemble prediction, used when `pred_probs` is None.
        pred_prob_given: (N,) ensemble probability of the given label, used when `pred_probs`
            is None (this is what clean_probs.parquet stores); preferred over `pred_label`.

    Returns:
        score = 1 - mean clean probability over the nets; tiebreak = 1 - ensemble probability
        of the given label (or [pred_label != given] when only a label is known; zeros when
        neither is given).
    """
    given = np.asarray(given_labels)
    if given.ndim != 1:
        raise ValueError(f"given_labels must have shape (N,); got {given.shape}.")
    n = given.shape[0]
    score = 1.0 - _as_clean_prob(clean_prob, n).mean(axis=1)  # (N,)
    if pred_probs is not None:
        probs = np.asarray(pred_probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != n:
            raise ValueError(f"pred_probs must have shape (N={n}, C); got {probs.shape}.")
        if given.min(initial=0) < 0 or given.max(initial=0) >= probs.shape[1]:
            raise ValueError(f"given_labels must lie in [0, {probs.shape[1]}) to index pred_probs.")
        tiebreak = 1.0 - probs[np.arange(n), given.astype(np.int64)]
    elif pred_prob_given is not None:
        pg = np.asarray(pred_prob_given, dtype=np.float64)
        if pg.shape != (n,):
            raise ValueError(f"pred_prob_given must have shape ({n},); got {pg.shape}.")
        tiebreak = 1.0 - pg
    elif pred_label is not None:
        pl = np.asarray(pred_label)
        if pl.shape != (n,):
            raise ValueError(f"pred_label must have shape ({n},); got {pl.shape}.")
        tiebreak = (pl != given).astype(np.float64)
    else:
        tiebreak = np.zeros(n)
    return score, tiebreak


def rank_by_score(score: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """(N,) indices ordering samples by score desc, then tiebreak desc, then index asc (stable)."""
    score = np.asarray(score, dtype=np.float64)
    tiebreak = np.zeros_like(score) if tiebreak is None else np.asarray(tiebreak, dtype=np.float64)
    # np.lexsort sorts by the LAST key first; negate for descending, index keeps it deterministic.
    return np.lexsort((np.arange(score.shape[0]), -tiebreak, -score)).astype(np.int64)


def find_label_issues(
    given_labels: Any,
    clean_prob: Any,
    pred_probs: Any = None,
    *,
    pred_label: Any = None,
    pred_prob_given: Any = None,
    top_k: int | None = None,
    p_threshold: float = 0.5,
    ranked: bool = True,
) -> np.ndarray:
    """Samples whose given label is probably wrong.

    Args:
        given_labels: (N,) int given (noisy) labels.
        clean_prob: (N,) or (N, 2) final clean probability of each sample, per net.
        pred_probs: (N, C) ensemble probabilities; or pass `pred_label` (N,) / `pred_prob_given`
            (N,) instead (see `label_issue_scores`).
        top_k: flag exactly the `top_k` highest-scoring samples. When None, flag every sample
            whose mean clean probability is below `p_threshold` (the samples the co-divide would
            put in the unlabelled set, averaged over the two nets).
        p_threshold: the clean-probability threshold used when `top_k` is None (paper: 0.5).
        ranked: True returns the flagged indices ranked most-likely-wrong first (like cleanlab's
            `return_indices_ranked_by`); False returns a boolean mask (N,).

    Returns:
        (F,) int64 indices into the arrays (ranked=True) or (N,) bool mask (ranked=False).
    """
    score, tiebreak = label_issue_scores(
        given_labels, clean_prob, pred_probs, pred_label=pred_label, pred_prob_given=pred_prob_given
    )
    order = rank_by_score(score, tiebreak)
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0; got {top_k}.")
        flagged = order[: int(top_k)]
    else:
        if not 0.0 <= p_threshold <= 1.0:
            raise ValueError(f"p_threshold must be in [0, 1]; got {p_threshold}.")
        flagged = order[(1.0 - score[order]) < p_threshold]
    if ranked:
        return flagged
    mask = np.zeros(score.shape[0], dtype=bool)
    mask[flagged] = True
    return mask


# ---- ranking quality when the truth is known -------------------------------------------------
def precision_at_k(ranked_indices: Any, is_wrong: Any, k: int) -> float:
    """Fraction of the first `k` ranked samples whose label really is wrong (nan when k == 0).

    `ranked_indices` (M,) int into `is_wrong` (N,) bool.
    """
    ranked = np.asarray(ranked_indices, dtype=np.int64)[: max(int(k), 0)]
    if ranked.size == 0:
        return float("nan")
    return float(np.asarray(is_wrong, dtype=bool)[ranked].mean())


def recall_at_k(ranked_indices: Any, is_wrong: Any, k: int) -> float:
    """Fraction of all wrong labels found among the first `k` ranked samples (nan if none wrong)."""
    wrong = np.asarray(is_wrong, dtype=bool)
    total = int(wrong.sum())
    if total == 0:
        return float("nan")
    ranked = np.asarray(ranked_indices, dtype=np.int64)[: max(int(k), 0)]
    return float(wrong[ranked].sum() / total)


def average_precision(ranked_indices: Any, is_wrong: Any) -> float:
    """Average precision of a full ranking (N,): mean of precision@k over the ranks k of the
    wrong labels. 1.0 = every wrong label ranked before every correct one; about the noise rate
    for a random ranking."""
    wrong = np.asarray(is_wrong, dtype=bool)[np.asarray(ranked_indices, dtype=np.int64)]
    if not wrong.any():
        return float("nan")
    hits = np.cumsum(wrong)
    ranks = np.arange(1, wrong.size + 1)
    return float((hits[wrong] / ranks[wrong]).mean())


def ranking_auc(score: Any, is_wrong: Any) -> float:
    """ROC AUC of `score` (N,) for separating wrong (positive) from correct labels."""
    wrong = np.asarray(is_wrong, dtype=bool)
    if wrong.all() or not wrong.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(wrong, np.asarray(score, dtype=np.float64)))


# ---- tables ----------------------------------------------------------------------------------
def label_issue_table(
    given_labels: Any,
    clean_prob: Any,
    pred_probs: Any = None,
    *,
    pred_label: Any = None,
    pred_prob_given: Any = None,
    true_labels: Any = None,
    sample_index: Any = None,
    p_threshold: float = 0.5,
    class_names: Any = None,
) -> pd.DataFrame:
    """Every sample, ranked most-likely-wrong first, one row each.

    Columns (the names of clean_probs.parquet where they overlap, in every file dmx writes):
    rank (1 = most likely wrong), index (dataset index; `sample_index` (N,) or 0..N-1),
    given_label, pred_label (the ensemble's prediction), clean_prob_net1, clean_prob_net2 (equal
    when one net is given), pred_prob_given (nan when unknown), score, flagged (mean clean prob <
    p_threshold); with `true_labels` (N,): true_label and is_wrong; with `class_names` (C,):
    given_class, pred_class (and true_class) beside the indices.
    """
    given = np.asarray(given_labels)
    score, tiebreak = label_issue_scores(
        given, clean_prob, pred_probs, pred_label=pred_label, pred_prob_given=pred_prob_given
    )
    n = given.shape[0]
    cp = _as_clean_prob(clean_prob, n)
    if pred_probs is not None:
        probs = np.asarray(pred_probs, dtype=np.float64)
        predicted = probs.argmax(axis=1)
        prob_given = probs[np.arange(n), given.astype(np.int64)]
    else:
        predicted = np.asarray(pred_label) if pred_label is not None else np.full(n, -1)
        prob_given = (
            np.asarray(pred_prob_given, dtype=np.float64)
            if pred_prob_given is not None
            else np.full(n, np.nan)
        )
    index = np.arange(n) if sample_index is None else np.asarray(sample_index)
    if index.shape != (n,):
        raise ValueError(f"sample_index must have shape ({n},); got {index.shape}.")
    order = rank_by_score(score, tiebreak)
    table = pd.DataFrame(
        {
            "rank": np.arange(1, n + 1, dtype=np.int64),
            "index": index[order].astype(np.int64),
            "given_label": given[order].astype(np.int64),
            "pred_label": predicted[order].astype(np.int64),
            "clean_prob_net1": cp[order, 0],
            "clean_prob_net2": cp[order, -1],
            "pred_prob_given": prob_given[order],
            "score": score[order],
            "flagged": (1.0 - score[order]) < p_threshold,
        }
    )
    if true_labels is not None:
        true = np.asarray(true_labels)
        if true.shape != (n,):
            raise ValueError(f"true_labels must have shape ({n},); got {true.shape}.")
        table["true_label"] = true[order].astype(np.int64)
        table["is_wrong"] = table["true_label"].to_numpy() != table["given_label"].to_numpy()
    if class_names is not None:
        add_class_names(table, class_names)
    return table


def _names(labels: np.ndarray, class_names: Any) -> list[str]:
    names = list(class_names)
    return [names[i] if 0 <= i < len(names) else "" for i in labels]


def add_class_names(table: pd.DataFrame, class_names: Any) -> pd.DataFrame:
    """Add `<x>_class` beside each `<x>_label` column (given, pred, true) of `table`, in place:
    the class name of that index in `class_names` (C,), "" for an unknown index (-1)."""
    for kind in ("given", "pred", "true"):
        label = f"{kind}_label"
        if label in table and f"{kind}_class" not in table:
            position = table.columns.get_loc(label) + 1
            table.insert(position, f"{kind}_class", _names(table[label].to_numpy(), class_names))
    return table


def confused_pairs(table: pd.DataFrame, *, top_k: int | None = None) -> pd.DataFrame:
    """Which class pairs are confused: among the suspects (the first `top_k` ranked rows, else the
    flagged ones) whose ensemble prediction differs from the given label, the count of each
    (given_label, pred_label) pair, most frequent first.

    Columns: given_label, pred_label (+ given_class, pred_class when `table` has them), count,
    share (% of those suspects), and with true labels known: truly_wrong (how many of the pair's
    given labels really are wrong) and true_is_pred (how many have the predicted label as truth).
    """
    ranked = table.sort_values("rank")
    suspects = ranked.iloc[: int(top_k)] if top_k is not None else ranked[ranked["flagged"]]
    suspects = suspects[suspects["pred_label"] != suspects["given_label"]]
    keys = ["given_label", "pred_label"]
    names = [c for c in ("given_class", "pred_class") if c in suspects]
    columns = [*keys, *names, "count", "share"]
    if suspects.empty:
        return pd.DataFrame(columns=columns)
    grouped = suspects.groupby(keys, sort=False)
    out = grouped.size().rename("count").reset_index()
    for name in names:
        out[name] = grouped[name].first().to_numpy()
    out["share"] = 100.0 * out["count"] / len(suspects)
    if "is_wrong" in suspects:
        out["truly_wrong"] = grouped["is_wrong"].sum().to_numpy().astype(np.int64)
        hit = suspects["true_label"] == suspects["pred_label"]
        out["true_is_pred"] = hit.groupby([suspects[k] for k in keys], sort=False).sum().to_numpy()
        columns += ["truly_wrong", "true_is_pred"]
    out = out.sort_values(["count", *keys], ascending=[False, True, True], kind="stable")
    return out[columns].reset_index(drop=True)


def summarize_ranking(table: pd.DataFrame, *, top_k: int | None = None) -> dict[str, float]:
    """Numbers that say how good a ranked `label_issue_table` is.

    Always: n, flagged. With an `is_wrong` column: noise_rate (fraction truly wrong),
    num_wrong, precision_at_k / recall_at_k at K = top_k (or the flagged count when None),
    precision_at_num_wrong (precision at K = number of wrong labels, which equals recall there),
    average_precision and auc of the whole ranking. A random ranking scores about noise_rate on
    every precision and 0.5 AUC.
    """
    out: dict[str, float] = {"n": int(len(table)), "flagged": int(table["flagged"].sum())}
    k = int(top_k) if top_k is not None else out["flagged"]
    out["k"] = k
    if "is_wrong" in table:
        ordered = table.sort_values("rank")
        wrong = ordered["is_wrong"].to_numpy(dtype=bool)
        ranked = np.arange(len(wrong))
        num_wrong = int(wrong.sum())
        out.update(
            noise_rate=float(wrong.mean()) if len(wrong) else float("nan"),
            num_wrong=num_wrong,
            precision_at_k=precision_at_k(ranked, wrong, k),
            recall_at_k=recall_at_k(ranked, wrong, k),
            precision_at_num_wrong=precision_at_k(ranked, wrong, num_wrong),
            average_precision=average_precision(ranked, wrong),
            auc=ranking_auc(ordered["score"].to_numpy(), wrong),
        )
    return out


def table_from_clean_probs(
    frame: pd.DataFrame, *, p_threshold: float = 0.5, class_names: Any = None
) -> pd.DataFrame:
    """`label_issue_table` from a clean_probs.parquet frame (true_label used when present and
    not all negative, since -1 marks an unknown truth); `class_names` (C,) adds class names."""
    missing = {"given_label", "clean_prob_net1"} - set(frame.columns)
    if missing:
        raise ValueError(f"clean probabilities table lacks columns {sorted(missing)}.")
    nets = [c for c in ("clean_prob_net1", "clean_prob_net2") if c in frame]
    true = None
    if "true_label" in frame and (frame["true_label"] >= 0).all():
        true = frame["true_label"].to_numpy()
    return label_issue_table(
        frame["given_label"].to_numpy(),
        frame[nets].to_numpy(),
        pred_label=frame["pred_label"].to_numpy() if "pred_label" in frame else None,
        pred_prob_given=frame["pred_prob_given"].to_numpy() if "pred_prob_given" in frame else None,
        true_labels=true,
        sample_index=frame["index"].to_numpy() if "index" in frame else None,
        p_threshold=p_threshold,
        class_names=class_names,
    )


__all__ = [
    "add_class_names",
    "average_precision",
    "confused_pairs",
    "find_label_issues",
    "label_issue_scores",
    "label_issue_table",
    "precision_at_k",
    "rank_by_score",
    "ranking_auc",
    "recall_at_k",
    "summarize_ranking",
    "table_from_clean_probs",
]
