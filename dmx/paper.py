"""The DivideMix paper's own numbers, in one place (Li, Socher, Hoi, ICLR 2020, "DivideMix:
Learning with Noisy Labels as Semi-supervised Learning", arXiv:2002.07394).

Every number carries the table and row it comes from. `dmx presets` prints them beside the
presets; `python analysis/paper_table.py --experiment NAME` sets a paper grid's results beside
them (`analysis.paper_table` maps each number to the dmx metric it compares with). Test
accuracy in %, as the paper reports it: CIFAR "best" is the best test accuracy over all epochs
and "last" the mean over the last 10 epochs (paper, section 4.1); Clothing1M and WebVision are
single numbers of the checkpoint chosen on the clean validation set (Clothing1M) or at the end
of training (WebVision).
Standard library only: the command line imports it for `--help`-speed printing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperResult:
    """One cell group of the paper's results for DivideMix."""

    dataset: str
    """dmx dataset name (cifar10, cifar100, clothing1m, webvision)."""
    noise: str
    """The setting as the paper's column header names it (e.g. "sym 50%", "real-world")."""
    source: str
    """Table and row: e.g. "Table 1, row DivideMix, column CIFAR-10 Sym 50%"."""
    best: float | None = None
    """CIFAR: best test accuracy (%) over epochs."""
    last: float | None = None
    """CIFAR: mean test accuracy (%) of the last 10 epochs."""
    top1: float | None = None
    """Clothing1M / WebVision: top-1 test accuracy (%)."""
    top5: float | None = None
    """WebVision: top-5 accuracy (%)."""
    ilsvrc_top1: float | None = None
    """WebVision-trained model on the ILSVRC12 validation set, top-1 (%)."""
    ilsvrc_top5: float | None = None
    """... and top-5 (%)."""

    def numbers(self) -> dict[str, float]:
        """The reported numbers by field name, in the paper's column order: `{"best": 94.6,
        "last": 94.4}` (CIFAR) or `{"top1": ..., "top5": ..., "ilsvrc_top1": ...}`."""
        names = ("best", "last", "top1", "top5", "ilsvrc_top1", "ilsvrc_top5")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def table(self) -> str:
        """The table alone: "Table 1" (the README's short source column)."""
        return self.source.split(",")[0]

    def summary(self) -> str:
        """`best 94.6 / last-10 94.4` or `top-1 77.32 top-5 91.64 (ILSVRC12 75.20 / 90.84)`."""
        if self.best is not None:
            return f"best {self.best:.1f} / last-10 {self.last:.1f}"
        text = f"top-1 {self.top1:.2f}"
        if self.top5 is not None:
            text += f" top-5 {self.top5:.2f}"
        if self.ilsvrc_top1 is not None:
            text += f" (ILSVRC12 top-1 {self.ilsvrc_top1:.2f} top-5 {self.ilsvrc_top5:.2f})"
        return text


def _t1(column: str) -> str:
    return f"Table 1, row DivideMix, column {column}"


PAPER_RESULTS: dict[str, PaperResult] = {
    # ---- Table 1: CIFAR-10 / CIFAR-100, symmetric noise, Best and Last ----------------------
    "cifar10-sym-0.2": PaperResult("cifar10", "sym 20%", _t1("CIFAR-10 Sym 20%"), 96.1, 95.7),
    "cifar10-sym-0.5": PaperResult("cifar10", "sym 50%", _t1("CIFAR-10 Sym 50%"), 94.6, 94.4),
    "cifar10-sym-0.8": PaperResult("cifar10", "sym 80%", _t1("CIFAR-10 Sym 80%"), 93.2, 92.9),
    "cifar10-sym-0.9": PaperResult("cifar10", "sym 90%", _t1("CIFAR-10 Sym 90%"), 76.0, 75.4),
    "cifar100-sym-0.2": PaperResult("cifar100", "sym 20%", _t1("CIFAR-100 Sym 20%"), 77.3, 76.9),
    "cifar100-sym-0.5": PaperResult("cifar100", "sym 50%", _t1("CIFAR-100 Sym 50%"), 74.6, 74.2),
    "cifar100-sym-0.8": PaperResult("cifar100", "sym 80%", _t1("CIFAR-100 Sym 80%"), 60.2, 59.6),
    "cifar100-sym-0.9": PaperResult("cifar100", "sym 90%", _t1("CIFAR-100 Sym 90%"), 31.5, 31.0),
    # ---- Table 2: CIFAR-10, 40% asymmetric noise, Best and Last -----------------------------
    "cifar10-asym-0.4": PaperResult(
        "cifar10", "asym 40%", "Table 2, row DivideMix (CIFAR-10, 40% asymmetric)", 93.4, 92.1
    ),
    # ---- Table 3: Clothing1M (real-world noise), test accuracy ------------------------------
    "clothing1m": PaperResult(
        "clothing1m", "real-world", "Table 3, row DivideMix (Clothing1M)", top1=74.76
    ),
    # ---- Table 4: WebVision (first 50 classes) and ILSVRC12 val, top-1 / top-5 ---------------
    "webvision-50": PaperResult(
        "webvision",
        "real-world (mini WebVision)",
        "Table 4, row DivideMix (WebVision and ILSVRC12 columns)",
        top1=77.32,
        top5=91.64,
        ilsvrc_top1=75.20,
        ilsvrc_top5=90.84,
    ),
}
"""Keyed by dmx preset name: the paper-grid cell that runs the preset (`dmx.cell`) is this key."""


PAPER_TABLES: dict[str, tuple[str, ...]] = {
    "cifar": (  # Tables 1 and 2: CIFAR-10 sym 20/50/80/90 and asym 40, CIFAR-100 sym 20..90
        "cifar10-sym-0.2",
        "cifar10-sym-0.5",
        "cifar10-sym-0.8",
        "cifar10-sym-0.9",
        "cifar10-asym-0.4",
        "cifar100-sym-0.2",
        "cifar100-sym-0.5",
        "cifar100-sym-0.8",
        "cifar100-sym-0.9",
    ),
    "clothing1m": ("clothing1m",),  # Table 3
    "webvision": ("webvision-50",),  # Table 4
}
"""The paper's result tables as grids of dmx presets (`sweeps/paper.py --table NAME`)."""


def paper_result(name: str) -> PaperResult | None:
    """The paper's numbers for preset (or dataset) `name`, or None (e.g. digits-sym-0.5)."""
    return PAPER_RESULTS.get(name)


__all__ = ["PAPER_RESULTS", "PAPER_TABLES", "PaperResult", "paper_result"]
