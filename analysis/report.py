"""One self-contained HTML page for a sweep: tables and plots embedded, nothing fetched.

    python -m analysis.report --experiment NAME --out DIR [--mlflow-uri URI]
                              [--group-by PARAM ...] [--top K] [--log-to-mlflow]

Writes DIR/report.html (plots as base64 PNG data URIs, CSS inline, no scripts) plus the PNGs and
the compare.py tables beside it. Sections: summary and best setting, does the objective pick the
test winner, ranked trials, mean ± std per configuration, for a paper grid the paper table
(`analysis.paper_table`, with its paper_table.* files), plots, and for the best trial that logged
clean_probs.parquet: its per-sample loss histogram and the top suspected label errors.
With --log-to-mlflow the plots and the page go under `plots/` of the sweep's parent run (of the
best trial when the experiment has no sweep run), where the MLflow UI shows them.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import paper_table, plots
from analysis.compare import (
    Comparison,
    add_sweep_arguments,
    best_text,
    compare,
    display_columns,
    display_headers,
    grouping_label,
    groups_table,
    load_from_args,
    write_outputs,
)
from analysis.runs import SUMMARY_COLUMNS, Sweep, correlation_caveat, format_cell, format_value
from dmx.label_issues import confused_pairs, summarize_ranking, table_from_clean_probs
from dmx.sample_images import class_names, thumbnails

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; }
main { max-width: 1400px; margin: 0 auto; padding: 20px 24px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #dde1e8; }
h3 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: #5b6475; font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px 16px;
        min-width: 150px; }
.card b { display: block; font-size: 22px; }
.card span { color: #5b6475; font-size: 12px; }
.scroll { overflow-x: auto; background: #fff; border: 1px solid #dde1e8; border-radius: 8px; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 4px 7px; border-bottom: 1px solid #eceef2; white-space: nowrap; }
th { background: #eef1f6; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #e8f6ec; font-weight: 600; }
tr.bad td { color: #b3261e; }
figure { margin: 14px 0 26px; background: #fff; border: 1px solid #dde1e8; border-radius: 8px;
         padding: 12px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #5b6475; font-size: 13px; margin-top: 6px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; font-size: 14px; }
code { background: #eef1f6; padding: 1px 4px; border-radius: 3px; }
img.thumb { width: 64px; height: 64px; image-rendering: pixelated; display: block; }
"""

LABEL_ISSUE_COLUMNS = (  # the names `dmx label-issues` writes, in its order
    "rank",
    "index",
    "given_label",
    "given_class",
    "pred_label",
    "pred_class",
    "true_label",
    "true_class",
    "is_wrong",
    "clean_prob_net1",
    "clean_prob_net2",
    "pred_prob_given",
    "score",
)
PLOT_CAPTIONS = {
    "accuracy_curves": "Test accuracy (left, clean test labels) and noisy-validation accuracy "
    "(right, the sweep objective) per epoch; one line per trial, darker = better objective.",
    "objective_vs_params": "The objective (filled) and final test accuracy (hollow) of every "
    "trial against each searched parameter.",
    "param_importances": "How much of the objective's variance each searched parameter explains "
    "(Optuna fANOVA on a study rebuilt from the runs).",
    "division_quality": "The co-divide per epoch, mean of the two nets: labelled-set size and "
    "precision / recall / ROC AUC of the clean-sample detection against the true labels.",
    "loss_histogram": "Per-sample normalised loss at the end of training for each net, with the "
    "two fitted GMM components and the division threshold; green = given label correct, "
    "red = given label wrong.",
}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def html_table(
    frame: pd.DataFrame,
    columns: list[str] | None = None,
    headers: dict[str, str] | None = None,
    *,
    row_class=None,
    images: list[str] | None = None,
    right: tuple[str, ...] = (),
) -> str:
    """A plain HTML table; numeric cells (and the columns `right`) right-aligned;
    `row_class(row) -> str` styles rows; `images`: one ready HTML cell content per row, shown
    as a first column "image"."""
    columns = list(frame.columns) if columns is None else columns
    headers = headers or {}
    numeric = {
        c: c in right
        or (pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]))
        for c in columns
    }
    head = "<th>image</th>" if images is not None else ""
    head += "".join(f"<th>{_esc(headers.get(c, c))}</th>" for c in columns)
    rows = []
    for position, (_, row) in enumerate(frame.iterrows()):
        cls = row_class(row) if row_class else ""
        cells = f"<td>{images[position]}</td>" if images is not None else ""
        cells += "".join(
            f'<td class="num">{_esc(format_cell(c, row[c]))}</td>'
            if numeric[c]
            else f"<td>{_esc(format_cell(c, row[c]))}</td>"
            for c in columns
        )
        rows.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _pct(value: Any) -> str:
    text = format_value(value)
    return f"{text}%" if text else "n/a"


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{_esc(value)}</b><span>{_esc(label)}</span></div>'


def _thumbnail_cells(row: pd.Series, indices: list[int]) -> tuple[list[str] | None, str]:
    """<img> cells of the training images `indices` of the trial's dataset, or (None, why not):
    the data must be where the trial read them (its `data.root`)."""
    dataset, root = row.get("data.dataset"), row.get("data.root")
    if not dataset or not root:
        return None, "the trial's params name no dataset folder"
    try:
        pngs = thumbnails(str(dataset), str(root), indices)
    except (OSError, ValueError, RuntimeError) as exc:
        return None, f"the images of {dataset} are not readable at {root} ({exc})"
    cells = [
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
        f'alt="training sample {i}" class="thumb">'
        for i, png in zip(indices, pngs, strict=True)
    ]
    return cells, ""


def _label_issue_section(
    row: pd.Series | None, frame: pd.DataFrame | None, top_k: int, hist_path: Path | None
) -> str:
    parts = ['<section id="label-issues"><h2>Per-sample view and suspected label errors</h2>']
    if frame is None or row is None:
        parts.append(
            '<p class="note">None of the top trials logged <code>clean_probs.parquet'
            "</code> (it is written when a trial finishes), so there is no per-sample "
            "view.</p></section>"
        )
        return "".join(parts)
    thr = plots.trial_p_threshold(row)
    names = class_names(str(row.get("data.dataset") or ""))
    table = table_from_clean_probs(frame, p_threshold=thr, class_names=names)
    s = summarize_ranking(table, top_k=top_k)
    parts.append(
        f"<p>Trial <b>{_esc(row['trial_id'])}</b> (run <code>{_esc(row['run_id'])}</code>), "
        f"final division. Ranking score = 1 − mean clean probability of the two nets, ties "
        f"broken by the ensemble's confidence in another label. "
        f"Export all of it with <code>dmx label-issues {_esc(row['run_id'])}</code>.</p>"
    )
    cards = [
        _card(str(s["n"]), "samples"),
        _card(str(s["flagged"]), f"flagged (clean prob < {thr:g})"),
    ]
    if "num_wrong" in s:
        cards += [
            _card(f"{100 * s['noise_rate']:.1f}%", f"truly wrong labels ({s['num_wrong']})"),
            _card(f"{s['precision_at_k']:.3f}", f"precision@{s['k']}"),
            _card(f"{s['precision_at_num_wrong']:.3f}", f"precision@{s['num_wrong']} (= recall)"),
            _card(f"{s['average_precision']:.3f}", "average precision"),
            _card(f"{s['auc']:.3f}", "ROC AUC"),
        ]
    parts.append(f'<div class="cards">{"".join(cards)}</div>')
    if hist_path is not None:
        parts.append(
            f"<figure>{_img(hist_path, 'loss histogram')}<figcaption>"
            f"{_esc(PLOT_CAPTIONS['loss_histogram'])}</figcaption></figure>"
        )
    pairs = confused_pairs(table)
    parts.append("<h3>Which class pairs are confused</h3>")
    if pairs.empty:
        parts.append('<p class="note">No flagged sample is predicted as another class.</p>')
    else:
        parts.append(
            "<p>Flagged samples whose ensemble prediction differs from the given label, by "
            "(given, predicted) pair; <code>truly_wrong</code>: how many of those given labels "
            "really are wrong.</p>"
        )
        parts.append(html_table(pairs.head(10)))
    cols = [c for c in LABEL_ISSUE_COLUMNS if c in table]
    top = table.head(top_k).copy()
    parts.append(f"<h3>The {top_k} most suspect labels</h3>")
    cells, why = _thumbnail_cells(row, [int(i) for i in top["index"]])
    if cells is None:
        parts.append(f'<p class="note">No thumbnails: {_esc(why)}.</p>')
        parts.append(html_table(top, cols))
    else:
        parts.append(html_table(top, cols, images=cells))
    parts.append("</section>")
    return "".join(parts)


def paper_table_section(table: paper_table.PaperTable) -> str:
    """The "Paper table" section of a paper grid: `analysis.paper_table`'s table as HTML."""
    frame = paper_table.display_frame(table)
    statuses = table.rows["status"].tolist()

    def row_class(row) -> str:
        status = statuses[row.name]
        return "bad" if "failed" in status or "incomplete" in status else ""

    parts = [
        '<section id="paper-table"><h2>Paper table</h2>',
        f"<p>{_esc(paper_table.headline(table))}</p>",
        html_table(frame, row_class=row_class, right=paper_table.RIGHT_ALIGNED),
        f'<p class="meta">{_esc(paper_table.EXPLANATION)}</p>',
    ]
    if table.notes:
        parts.append("<h3>Notes (what is not averaged, and why)</h3><ul>")
        parts += [f"<li><b>{_esc(c)}</b>: {_esc(n)}</li>" for c, n in table.notes.items()]
        parts.append("</ul>")
    parts.append("</section>")
    return "".join(parts)


def _search_summary(c: Comparison, top: pd.Series, corr: dict) -> list[str]:
    """The summary of a search: best objective, best setting, does the objective pick the test
    winner."""
    ranked = c.ranked
    body = [
        _card(_pct(top[c.rank_by]), f"best objective ({c.rank_by})"),
        _card(_pct(top["test_acc_final"]), "its final test accuracy"),
        _card(_pct(ranked["test_acc_best"].max()), "best test accuracy, any trial"),
        _card(
            "–" if corr["spearman"] != corr["spearman"] else f"{corr['spearman']:.2f}",
            f"Spearman(objective, test), n = {corr['n']}",
        ),
        "</div>",
    ]
    head, _, rest = best_text(c).partition(": ")
    body.append(f"<p><b>{_esc(head)}:</b> {_esc(rest)}</p>")
    if corr["n"] >= 3 and corr["spearman"] == corr["spearman"]:
        caveat = correlation_caveat(corr["n"])
        verdict = (
            "agree well"
            if corr["spearman"] >= 0.7
            else "agree only partly"
            if corr["spearman"] >= 0.3
            else "do not agree"
        )
        if caveat:  # too few trials for a verdict: the number, not an adjective
            verdict = f"have a Spearman rank correlation of {corr['spearman']:.2f}"
        else:
            verdict += f" (Spearman {corr['spearman']:.2f})"
        body.append(
            f"<p><b>Does the objective pick what the test set would?</b> Over n = {corr['n']} "
            f"trials the noisy-validation ranking and the test ranking {verdict}. Trusting the "
            f"objective gives {corr['picked_test']:.2f}% "
            f"test accuracy against {corr['best_test']:.2f}% for the best trial on test "
            f"(regret {corr['regret']:.2f} points).</p>"
        )
        if caveat:
            body.append(f'<p class="note">{_esc(caveat)}</p>')
    else:
        body.append(
            f'<p class="note">Rank correlation needs at least 3 trials with both '
            f"accuracies (have {corr['n']}).</p>"
        )
    return body


def render_html(
    comparison: Comparison,
    plot_paths: dict[str, Path],
    notes: dict[str, str],
    *,
    sample_row=None,
    sample_frame=None,
    top_k: int = 20,
    paper: paper_table.PaperTable | None = None,
) -> str:
    """The page. `paper`: a paper grid's table (`analysis.paper_table.paper_table`), shown as
    the "Paper table" section after the summary."""
    c = comparison
    sweep: Sweep = c.sweep
    ranked = c.ranked
    top = c.top_trial()
    corr = c.correlation
    statuses = ranked["outcome"].value_counts().to_dict()
    title = "Paper grid report" if paper is not None else "Sweep report"
    body = [
        f"<header><h1>{title}: {_esc(sweep.experiment)}</h1>",
        f'<p class="meta">MLflow {_esc(sweep.tracking_uri)} · experiment id '
        f"{_esc(sweep.experiment_id)} · generated {_esc(time.strftime('%Y-%m-%d %H:%M'))}</p>"
        "</header>",
        '<section id="summary"><h2>Summary</h2><div class="cards">',
        _card(str(len(ranked)), "trials: " + ", ".join(f"{v} {k}" for k, v in statuses.items())),
    ]
    if paper is not None:  # a grid searches nothing: its result is the paper table below
        counts = paper.status_counts()
        body += [
            _card(
                f"{len(paper.cells)}", "cells: " + ", ".join(f"{v} {k}" for k, v in counts.items())
            ),
            _card(
                str(int(paper.seeds["counted"].sum())), "seed runs averaged (finished every epoch)"
            ),
            _card(_pct(ranked["test_acc_best"].max()), "best test accuracy, any trial"),
            "</div>",
        ]
    else:
        body += _search_summary(c, top, corr)
    body.append("</section>")
    if paper is not None:  # a paper grid: its results table comes first
        body.append(paper_table_section(paper))

    def row_class(row):
        if row["run_id"] == top["run_id"]:
            return "best"
        return "bad" if row["status"] in ("FAILED", "KILLED") else ""  # stopped early is fine

    body += [
        '<section id="trials"><h2>Trials, ranked by the objective</h2>',
        f'<p class="meta">{_esc(SUMMARY_COLUMNS["val_acc_final"])}; AUC / precision / recall: '
        "clean detection at the end, mean of the two nets.</p>",
        html_table(ranked, display_columns(c), display_headers(c), row_class=row_class),
        "</section>",
        '<section id="groups"><h2>Stability across seeds</h2>',
    ]
    if c.groups is not None:
        body.append(
            f"<p>Mean ± sample std (ddof=1) per {_esc(grouping_label(c.group_by))}, over the "
            "trials that ran to the end; failed, running or early-stopped ones would skew it and "
            "are named under <i>not averaged</i>.</p>"
        )
        body.append(html_table(groups_table(c.groups, c.group_by)))
    else:
        body.append(
            '<p class="note">No setting was repeated with different seeds; pass '
            "<code>--group-by PARAM</code> to group by a parameter.</p>"
        )
    body.append("</section>")
    body.append('<section id="plots"><h2>Plots</h2>')
    for name, path in plot_paths.items():
        if name == "loss_histogram":
            continue
        caption = PLOT_CAPTIONS.get(name, name)
        if name in notes and name == "param_importances":
            caption += f" ({notes[name]})"
        body.append(f"<figure>{_img(path, name)}<figcaption>{_esc(caption)}</figcaption></figure>")
    body.append("</section>")
    body.append(
        _label_issue_section(sample_row, sample_frame, top_k, plot_paths.get("loss_histogram"))
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dmx sweep report: {_esc(sweep.experiment)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def build_report(
    sweep: Sweep,
    out_dir: str | Path,
    *,
    group_by: list[str] | None = None,
    top_k: int = 20,
    trial_id: str | None = None,
) -> tuple[Path, dict[str, Path]]:
    """Write OUT/report.html, the PNGs and the compare.py tables; returns (html path, plots).
    The per-sample section shows `trial_id` (default: the best trial with clean_probs.parquet)."""
    out = Path(out_dir)
    comparison = compare(sweep, group_by=group_by)
    write_outputs(comparison, out)
    paper = paper_table.paper_table(sweep) if sweep.is_grid else None
    if paper is not None:
        paper_table.write_outputs(paper, out)
    sample_row, sample_frame = plots.sample_table_for(comparison.sweep, trial_id)
    thr = plots.trial_p_threshold(sample_row)
    title = ""
    if sample_row is not None:
        title = f"Per-sample loss at the end of trial {sample_row['trial_id']}, with the fitted GMM"
    paths, notes = plots.make_sweep_plots(
        sweep, out / "plots", sample_frame=sample_frame, sample_title=title, p_threshold=thr
    )
    page = render_html(
        comparison,
        paths,
        notes,
        sample_row=sample_row,
        sample_frame=sample_frame,
        top_k=top_k,
        paper=paper,
    )
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for report.html and its plots")
    parser.add_argument(
        "--group-by",
        action="append",
        default=None,
        metavar="PARAM",
        help="mean ± std per value of PARAM (default: over seeds when repeated)",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=20,
        metavar="K",
        help="suspected label errors listed for the best trial (default 20)",
    )
    parser.add_argument(
        "--trial",
        default=None,
        help="trial id of the per-sample section (default: the best trial with clean_probs)",
    )
    parser.add_argument(
        "--log-to-mlflow",
        action="store_true",
        help="also log the plots and report.html under plots/ of the sweep run",
    )
    args = parser.parse_args(argv)
    try:
        sweep = load_from_args(args)
        html_path, paths = build_report(
            sweep, args.out, group_by=args.group_by, top_k=args.top, trial_id=args.trial
        )
    except (LookupError, KeyError, FileNotFoundError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {html_path} (open it in a browser)")
    if args.log_to_mlflow:
        target, logged = plots.log_plots_to_mlflow(sweep, [*paths.values(), html_path])
        print(f"logged {len(logged)} files under plots/ of run {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
