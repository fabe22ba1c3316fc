"""Markdown tables and the bar chart of `python -m benchmarks.classify` (see `classify`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from offshelf.errors import OffshelfError
from offshelf.io import atomic_write

BASELINE_LABELS = {"raw_pixels": "raw pixels", "color_histogram": "colour hist.", "hog": "HOG", "lbp": "LBP"}
MODEL_LABELS = {"efficientnet-lite0": "lite0", "efficientnet-lite2": "lite2", "open-nsfw-resnet": "nsfw-resnet"}
MODE_MARKS = {"sum_of_scores": "Σ", "mean_of_views": "μ"}
KIND_COLOURS = {"baseline": "#9e9e9e", "plain": "#1f77b4", "augmented": "#ff7f0e"}


def _model(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def column_label(column: dict[str, Any]) -> str:
    if column["kind"] == "baseline":
        return BASELINE_LABELS.get(column["key"], column["key"])
    return f"{_model(column['model'])} {'plain' if column['kind'] == 'plain' else 'aug'}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _table(result: dict[str, Any], metric: str) -> list[str]:
    columns = result["columns"]
    lines = [
        "| task | train / test | " + " | ".join(column_label(c) for c in columns) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for task in result["tasks"].values():
        cells = task["cells"]
        values = [cells[c["key"]][metric] for c in columns]
        best = max(v for v in values if v is not None)
        row = []
        for column, value in zip(columns, values):
            text = _pct(value)
            if column["kind"] == "augmented":
                text += MODE_MARKS[cells[column["key"]]["reported"]]
            row.append(f"**{text}**" if value == best else text)
        lines.append(f"| {task['title']} | {task['n_train']} / {task['n_test']} | " + " | ".join(row) + " |")
    return lines


def _augmented_detail(result: dict[str, Any]) -> list[str]:
    lines = [
        "| task | model | plain (L2) | plain (L2, power) | aug, mean of views | aug, sum of scores | C plain / aug |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for task in result["tasks"].values():
        for model in result["models"]:
            plain = task["cells"][f"{model}/plain"]
            aug = task["cells"][f"{model}/augmented"]
            power = task["extra"][f"{model}/plain+power"]
            lines.append(
                f"| {task['title']} | {model} | {_pct(plain['accuracy'])} | {_pct(power['accuracy'])} | "
                f"{_pct(aug['mean_of_views']['accuracy'])} | {_pct(aug['sum_of_scores']['accuracy'])} | "
                f"{plain['C']:g} / {aug['C']:g} |"
            )
    return lines


def _noise(result: dict[str, Any]) -> str:
    """How much one test image and sampling noise move an accuracy, per task."""
    parts = []
    for task in result["tasks"].values():
        n = task["n_test"]
        parts.append(f"{task['title']} (n = {n}): one image = {100 / n:.2f} points, 95% interval of an 85% "
                     f"accuracy ±{196 * math.sqrt(0.85 * 0.15 / n):.1f} points")
    return ("Test sets are small, read differences accordingly: " + "; ".join(parts) + ". Columns of a row "
            "share their test images, so differences between them are less noisy than these intervals suggest.")


def _findings(result: dict[str, Any]) -> list[str]:
    labels = {c["key"]: column_label(c) for c in result["columns"]}
    lines = [_noise(result), ""]
    for key, found in result["findings"].items():
        title = result["tasks"][key]["title"]
        bar = found["best_baseline"]
        beats = [labels[k] for k, ok in found["cnn_beats_every_baseline"].items() if ok]
        loses = [labels[k] for k, ok in found["cnn_beats_every_baseline"].items() if not ok]
        lines.append(
            f"- **{title}**: best baseline {labels[bar['column']]} {_pct(bar['accuracy'])}; best CNN column "
            f"{labels[found['best_cnn']['column']]} {_pct(found['best_cnn']['accuracy'])}. "
            f"Above every baseline: {', '.join(beats) or 'none'}."
            + (f" Not above: {', '.join(loses)}." if loses else "")
        )
        ge = [_model(m) for m, ok in found["augmented_ge_plain"].items() if ok]
        lt = [_model(m) for m, ok in found["augmented_ge_plain"].items() if not ok]
        lines.append(
            f"  Augmented >= plain for: {', '.join(ge) or 'none'}"
            + (f"; below plain for: {', '.join(lt)}" if lt else "") + "."
        )
    return lines


def _paper(result: dict[str, Any]) -> list[str]:
    ref = result["paper_reference"]
    return [
        "| | " + " | ".join(f"{name} ({v['metric']})" for name, v in ref.items()) + " |",
        "| --- | " + " | ".join("---:" for _ in ref) + " |",
        "| OverFeat plain | " + " | ".join(f"{v['plain']:.1f}" for v in ref.values()) + " |",
        "| OverFeat augmented | " + " | ".join(f"{v['augmented']:.1f}" for v in ref.values()) + " |",
    ]


def markdown(result: dict[str, Any]) -> str:
    """The human-readable report (`paper_table.md`)."""
    machine, seconds = result["machine"], result["seconds"]
    quick = " **Quick mode** (tiny subsets: a smoke test, not a measurement)." if result["quick"] else ""
    lines = [
        "# Recognition: off-the-shelf CNN features vs hand-crafted baselines",
        "",
        f"{result['started']}; offshelf {result['offshelf']}; {machine['cores']} cores, load average "
        f"{machine['load_average_at_start'][0]} at start / {machine['load_average_at_end'][0]} at end (shared "
        f"machine); whole run {seconds['total']:.0f} s.{quick}",
        "",
        "Test-split **accuracy (%)**. Linear SVM (one-vs-rest), one C per task and column chosen by 3-fold "
        "cross-validated accuracy on the train split. Baselines and plain CNN features: L2; augmented: L2 then "
        "signed square root. *plain*: global average pooling of the default (last conv) layer; *aug*: the "
        "paper's 16 views, SVM trained on the mean-of-views descriptor and tested with the mean-of-views "
        "descriptor (μ), the combination fixed in advance; the sum of the 16 views' scores (Σ) is in the details "
        "below, never chosen on the test split. "
        "Best per row in bold.",
        "",
        *_table(result, "accuracy"),
        "",
        "## mAP (%)",
        "",
        "Mean over classes of the one-vs-rest average precision, same classifiers.",
        "",
        *_table(result, "mAP"),
        "",
        "## Findings",
        "",
        *_findings(result),
        "",
        "## Augmented views in detail (accuracy %)",
        "",
        "Plain (L2, power) is the plain descriptor with the augmented column's post-processing: it separates "
        "the effect of the views from that of the signed square root.",
        "",
        *_augmented_detail(result),
        "",
        "## The paper (Razavian et al. 2014, OverFeat 4096-d, linear SVM)",
        "",
        *_paper(result),
        "",
        "Not comparable number for number: different data (see docs/classification.md), different networks.",
        "",
        "## Data",
        "",
        *[f"- {task['title']}: {task['note']}; {len(task['classes'])} classes." for task in result["tasks"].values()],
        "",
        "## Time (s)",
        "",
        "| stage | wall seconds | CPU seconds |",
        "| --- | ---: | ---: |",
        *[f"| {kind} | {value:.1f} | {seconds['cpu_by_kind'].get(kind, 0.0):.1f} |"
          for kind, value in seconds["by_kind"].items()],
        f"| **total** | {seconds['total']:.1f} | {seconds['cpu_total']:.1f} |",
        "",
        "CPU seconds are this process's, all threads: divided by the number of cores they estimate the wall time "
        "on an idle machine. Per-stage times are in paper_table.json (`seconds.stages`, `seconds.cpu_stages`). "
        "Features come from caches when present (a first run embeds; re-runs only fit).",
    ]
    if "sweep" in result:
        lines += ["", "## Layer x pooling sweep (efficientnet-lite0)", ""]
        for key, found in result["sweep"].items():
            if key == "files":
                continue
            best, default = found["best"], found["default"]
            lines.append(
                f"- {result['tasks'][key]['title']}: best by CV {best['layer']}/{best['pool']} "
                f"{_pct(best['accuracy'])} (default head/gap {_pct(default['accuracy'])}); see classify_sweep.md."
            )
    return "\n".join(lines) + "\n"


def sweep_markdown(sweep: dict[str, Any]) -> str:
    """The sweep report (`classify_sweep.md`)."""
    lines = [
        f"# Layer x pooling sweep: {sweep['model']}, plain features",
        "",
        "Test-split accuracy (%) of the linear SVM (L2; one C per cell by 3-fold CV on the train split), "
        "3-fold CV accuracy on the train split in parentheses. The reported best is chosen by CV accuracy; "
        f"the best on test is shown for reference. Sweep time {sweep['seconds']:.0f} s.",
    ]
    for task in sweep["tasks"].values():
        cell = {(c["layer"], c["pool"]): c for c in task["grid"]}
        lines += [
            "",
            f"## {task['title']} ({task['n_train']} train / {task['n_test']} test)",
            "",
            "| layer (dim) | " + " | ".join(sweep["pools"]) + " |",
            "| --- | " + " | ".join("---:" for _ in sweep["pools"]) + " |",
        ]
        for layer in sweep["layers"]:
            dim = cell[(layer, sweep["pools"][0])]["dim"]
            row = [f"{_pct(cell[(layer, p)]['accuracy'])} ({_pct(cell[(layer, p)]['cv_accuracy'])})"
                   for p in sweep["pools"]]
            lines.append(f"| {layer} ({dim}) | " + " | ".join(row) + " |")
        best, on_test, default = task["best"], task["best_on_test"], task["default"]
        lines += [
            "",
            f"Best by CV: **{best['layer']} / {best['pool']}**, test accuracy {_pct(best['accuracy'])}, "
            f"mAP {_pct(best['mAP'])} (default head / gap: {_pct(default['accuracy'])}). "
            f"Best on test: {on_test['layer']} / {on_test['pool']} {_pct(on_test['accuracy'])}.",
        ]
    return "\n".join(lines) + "\n"


def bar_chart(result: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars of test accuracy, one panel per task, written atomically as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OffshelfError("the chart needs matplotlib: pip install 'offshelf[bench]'") from None
    columns = result["columns"]
    tasks = list(result["tasks"].values())
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(7.0, 0.85 * len(columns) + 2), 3.2 * len(tasks)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        values = [100 * task["cells"][c["key"]]["accuracy"] for c in columns]
        colours = [KIND_COLOURS[c["kind"]] for c in columns]
        bars = ax.bar(range(len(columns)), values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=2)
        best_baseline = max(v for v, c in zip(values, columns) if c["kind"] == "baseline")
        ax.axhline(best_baseline, color="#555555", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(columns)), [column_label(c) for c in columns], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{task['title']} ({task['n_train']} train / {task['n_test']} test)", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in KIND_COLOURS.values()]
    fig.legend(handles, ["hand-crafted", "CNN plain", "CNN augmented (16 views)"], loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    target = Path(path)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return target
