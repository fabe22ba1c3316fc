"""Markdown tables and the training-pairs curve of the backward-compatibility benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compat import REFERENCE_LABELS
from benchmarks.harness.retrieval_report import fmt, md_table, report_header, seconds_table
from offshelf.io import atomic_write, atomic_write_bytes

BENCH_TITLES = {"copy": "copy detection", "class": "Open Clip Art class retrieval"}


def _mark(ok: bool) -> str:
    return "yes" if ok else "no"


def _curve_stats(curve: list[dict[str, Any]], method: str, key: str) -> dict[int, tuple[float, float]]:
    """n_pairs -> (mean, std over seeds) of `key` for `method`."""
    out: dict[int, tuple[float, float]] = {}
    for n in sorted({r["n_pairs"] for r in curve}):
        values = [r[key] for r in curve if r["method"] == method and r["n_pairs"] == n]
        if values:
            out[n] = (float(np.mean(values)), float(np.std(values)))
    return out


def _pair_md(pair: dict[str, Any], methods: list[str]) -> list[str]:
    ref, checks = pair["reference"], pair["criteria"]
    lines = [f"## {pair['old']} (old, {pair['dims']['old']}-d) <- {pair['new']} (new, {pair['dims']['new']}-d)", "",
             f"Maps fitted on all {pair['pool']:,} training pairs. Criteria per benchmark: >= M(old, old) / "
             ">= 90 % of M(new, new).", ""]
    rows = []
    for name, scores in ref.items():
        rows.append((REFERENCE_LABELS[name], fmt(scores["copy"]["mAP"]), fmt(scores["copy"]["recall_at_1"]),
                     fmt(scores["class"]["mAP"]), fmt(scores["class"]["precision_at_1"]), "", "", ""))
    for method in methods:
        scores, c = pair["full_pool"][method], checks[method]
        rows.append((f"M(new via {method}, old)", fmt(scores["copy"]["mAP"]), fmt(scores["copy"]["recall_at_1"]),
                     fmt(scores["class"]["mAP"]), fmt(scores["class"]["precision_at_1"]),
                     f"{_mark(c['copy']['at_least_old_old'])} / {c['copy']['fraction_of_new_new']:.0%}",
                     f"{_mark(c['class']['at_least_old_old'])} / {c['class']['fraction_of_new_new']:.0%}",
                     _mark(c["copy"]["both"] and c["class"]["both"])))
    lines += md_table(["", "copy mAP", "copy R@1", "class mAP", "class P@1", "copy: >= old,old / of new,new",
                       "class: >= old,old / of new,new", "goal"], rows, "lrrrrrrl")
    goal = pair["goal"]
    lines += ["", f"**Goal {'met' if goal['met'] else 'not met'}**"
              + (f" by {', '.join(goal['methods'])}." if goal["met"] else "."), ""]
    lines += _fidelity_md(pair["fidelity"], methods)
    lines += ["### mAP against the number of training pairs (mean ± std over seeds; copy / class)", ""]
    stats = {(m, b): _curve_stats(pair["curve"], m, f"{b}_mAP") for m in methods for b in ("copy", "class")}
    sizes = sorted({r["n_pairs"] for r in pair["curve"]})
    rows = [(f"{n:,}", *(f"{stats[(m, 'copy')][n][0]:.3f}±{stats[(m, 'copy')][n][1]:.3f} / "
                         f"{stats[(m, 'class')][n][0]:.3f}±{stats[(m, 'class')][n][1]:.3f}" for m in methods))
            for n in sizes]
    lines += md_table(["pairs", *methods], rows)
    lines += ["", "### Training pairs needed (smallest curve size whose mean reaches it; — = none)", ""]
    needed = pair["pairs_needed"]
    rows = [(m, *(str(needed[m][b][k] or "—") for b in ("copy", "class")
                  for k in ("at_least_old_old", "at_least_90pct_new_new"))) for m in methods]
    lines += md_table(["method", "copy >= M(old,old)", "copy >= 90 % M(new,new)", "class >= M(old,old)",
                       "class >= 90 % M(new,new)"], rows)
    return lines + [""]


def _fidelity_md(fidelity: dict[str, Any], methods: list[str]) -> list[str]:
    names = list(fidelity["sets"])
    lines = [f"### How the map carries over: mean cosine between mapped new and old vector (fitted on "
             f"{fidelity['n_train']:,} pool pairs)", ""]
    rows = [(m, *(f"{fidelity[m]['mean_cosine'][name]:.3f}" for name in names)) for m in methods]
    lines += md_table(["method", *(f"{name} ({fidelity['sets'][name]})" for name in names)], rows)
    mlp = [fidelity[m]["mlp"] for m in methods if "mlp" in fidelity[m]]
    if mlp:
        lines += ["", f"mlp: best validation error at epoch {mlp[0]['best_epoch']} of {mlp[0]['epochs_run']} "
                  f"({mlp[0]['val_error_best']:.4f} against {mlp[0]['val_error_start']:.4f} for the linear map "
                  "alone); the residual is kept only as far as it helps on held-out pairs."]
    return lines + [""]


def markdown(doc: dict[str, Any]) -> str:
    proto = doc["protocol"]
    methods = proto["methods"]
    lines = report_header("Model upgrades: cross-model retrieval through a map", doc, "docs/upgrade.md")
    dist = ", ".join(f"{n:,} {s}" for s, n in proto["distractors"].items())
    lines += [f"Copy detection: {proto['n_queries']} queries against {proto['n_originals']} originals + "
              f"{proto['n_distractors']:,} distractors ({dist}). Class retrieval: {proto['class_images']} Open Clip "
              f"Art images in {len(proto['classes'])} classes. Features: {proto['features']}. Training pairs: "
              f"{proto['training_pool']}; curve sizes {', '.join(map(str, proto['sizes']))} and the whole pool, "
              f"{proto['repeats']} seed(s) each. Comparison: {proto['comparison']}.", ""]
    for pair in doc["pairs"]:
        lines += _pair_md(pair, methods)
    return "\n".join(lines + seconds_table(doc)) + "\n"


def curve_png(doc: dict[str, Any], path: Path) -> bool:
    """mAP against training pairs, one panel per (pair, benchmark); False if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pairs, methods = doc["pairs"], doc["protocol"]["methods"]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 4 * len(pairs)), dpi=100, squeeze=False)
    for row, pair in zip(axes, pairs):
        for ax, bench in zip(row, ("copy", "class")):
            for i, method in enumerate(methods):
                stats = _curve_stats(pair["curve"], method, f"{bench}_mAP")
                n = list(stats)
                mean = np.array([stats[k][0] for k in n])
                std = np.array([stats[k][1] for k in n])
                ax.plot(n, mean, marker="o", ms=3, color=f"C{i}", label=method)
                ax.fill_between(n, mean - std, mean + std, color=f"C{i}", alpha=0.15)
            old_old = pair["reference"]["old_old"][bench]["mAP"]
            new_new = pair["reference"]["new_new"][bench]["mAP"]
            ax.axhline(old_old, color="k", ls="--", lw=1, label="M(old, old)")
            ax.axhline(new_new, color="k", ls=":", lw=1, label="M(new, new)")
            ax.axhline(0.9 * new_new, color="grey", ls="-.", lw=1, label="90 % of M(new, new)")
            ax.set_xscale("log")
            ax.set_xlabel("training pairs")
            ax.set_ylabel("mAP")
            ax.set_title(f"{pair['old']} <- {pair['new']}: {BENCH_TITLES[bench]}", fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return True


def write_reports(out: Path, doc: dict[str, Any]) -> list[Path]:
    """Write compat.md (and compat.png); returns every path written, compat.json included."""
    atomic_write_bytes(out / "compat.md", markdown(doc).encode())
    files = [out / "compat.json", out / "compat.md"]
    if curve_png(doc, out / "compat.png"):
        files.append(out / "compat.png")
    return files
