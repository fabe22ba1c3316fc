"""Markdown tables and the bytes-vs-mAP plot of the retrieval benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offshelf.io import atomic_write, atomic_write_bytes


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def seconds_table(doc: dict[str, Any]) -> list[str]:
    rows = [(stage, f"{sec:.1f}") for stage, sec in doc["seconds"].items()]
    return ["## Time (seconds, wall clock, shared 2-core machine)", "", *md_table(["stage", "seconds"], rows)]


def report_header(title: str, doc: dict[str, Any], method_doc: str = "docs/retrieval.md") -> list[str]:
    env = doc["environment"]
    quick = " — QUICK smoke run (tiny subset; numbers not meaningful)" if doc["quick"] else ""
    return [f"# {title}{quick}", "",
            f"{doc['started']}; {env['cores']} cores ({env['machine']}); python {env['python']}, offshelf "
            f"{env['offshelf']}, onnxruntime {env['onnxruntime']}, faiss {env['faiss']}, scikit-learn "
            f"{env['scikit-learn']}. Load average at start {env['load_average_at_start'][0]:.1f}, at end "
            f"{env.get('load_average_at_end', [0])[0]:.1f} (the machine is shared). Method: {method_doc}.", ""]


def copy_detection_md(doc: dict[str, Any], family_order: Sequence[str]) -> str:
    proto, methods = doc["protocol"], doc["methods"]
    families = [f for f in family_order if f in proto["families"]] + [
        f for f in proto["families"] if f not in family_order]
    lines = report_header("Copy detection (Copydays-style, offline data)", doc)
    dist = ", ".join(f"{n:,} {s}" for s, n in proto["distractors"].items())
    lines += [f"{proto['n_originals']} originals, {proto['n_queries']} queries ({len(families)} families x "
              f"{max(len(v) for v in proto['families'].values())} strengths), database {proto['database_size']:,} "
              f"= originals + {proto['n_distractors']:,} distractors ({dist}). One relevant item per query: "
              f"AP = 1/rank of the original. Post-processing: {proto['pipeline']}.", ""]
    lines += ["## mAP, overall and per family", ""]
    rows = [(name, m["dim"], fmt(m["mAP"]), fmt(m["recall_at_1"]), fmt(m["recall_at_10"]),
             *(fmt(m["families"][f]["mAP"]) for f in families)) for name, m in methods.items()]
    lines += md_table(["method", "dim", "mAP", "R@1", "R@10", *families], rows)
    lines += ["", "## recall@1 per family", ""]
    rows = [(name, *(fmt(m["families"][f]["recall_at_1"]) for f in families)) for name, m in methods.items()]
    lines += md_table(["method", *families], rows)
    lines += ["", "## mAP per strength (mildest first)", ""]
    names = list(methods)
    keys = [(f, s) for f in families for s in proto["families"][f]]
    rows = [(f, s, *(fmt(methods[n]["families"][f]["strengths"][s]["mAP"]) for n in names)) for f, s in keys]
    lines += ["Columns: " + "; ".join(f"({i + 1}) {n}" for i, n in enumerate(names)), ""]
    lines += md_table(["family", "strength", *(f"({i + 1})" for i in range(len(names)))], rows, "ll" + "r" * len(names))
    lines += [""]
    if proto.get("spatial"):
        lines += [f"Spatial search: {proto['spatial']['windows_per_image']} windows per database image "
                  f"({proto['spatial']['layout']}); the query is the full image.", ""]
    return "\n".join(lines + seconds_table(doc)) + "\n"


def class_retrieval_md(doc: dict[str, Any]) -> str:
    proto = doc["protocol"]
    lines = report_header("Class-level retrieval on Open Clip Art", doc)
    lines += [f"{proto['images']} images, {len(proto['classes'])} classes ({', '.join(proto['classes'])}); "
              f"{proto['queries']}. Post-processing fitted on {proto['pipeline_fit']}.", ""]
    rows = [(name, m["dim"], m["post"], fmt(m["mAP"]), fmt(m["precision_at_1"]), fmt(m["precision_at_10"]))
            for name, m in doc["methods"].items()]
    lines += md_table(["method", "dim", "post-processing", "mAP", "P@1", "P@10"], rows, "lrlrrr") + [""]
    return "\n".join(lines + seconds_table(doc)) + "\n"


def bytes_vs_map_md(doc: dict[str, Any]) -> str:
    lines = report_header("Bytes per vector vs copy-detection mAP", doc)
    if not doc.get("rows"):
        return "\n".join(lines + ["(not run: needs efficientnet-lite0)"]) + "\n"
    lines += [f"{doc['model']}; full post-processed dimension {doc['pipeline_dim']}. `code bytes`: what one "
              "database vector costs; `index B/vec`: measured serialized FAISS index / vectors (codebooks, "
              "coarse centroids and 8-byte ids included — large at this database size). Re-ranking reads the "
              f"float32 vectors of the top {doc['rerank_depth']} candidates (not counted in code bytes). All "
              "quantizers trained on the distractors only.", ""]
    float_bytes = doc["rows"][1]["code_bytes"]
    rows = [(r["name"], f"{r['code_bytes']:g}", f"{float_bytes / r['code_bytes']:.3g}x",
             "—" if r.get("index_bytes_per_vector") is None else f"{r['index_bytes_per_vector']:.0f}",
             fmt(r["mAP"]), fmt(r["recall_at_1"]), f"{r['fraction_of_float_mAP']:.1%}") for r in doc["rows"]]
    lines += md_table(["representation", "code bytes", "smaller than float32", "index B/vec", "mAP", "R@1",
                     "of float mAP"], rows)
    goal = doc.get("goal")
    if goal:
        lines += ["", f"**Goal** ({goal['statement']}): {goal['binary_row']} reaches mAP {goal['binary_mAP']:.3f} "
                  f"= {goal['fraction']:.1%} of {goal['float_row']} ({goal['float_mAP']:.3f}): "
                  f"**{'met' if goal['met'] else 'not met'}**."]
    lines += ["", "![bytes vs mAP](bytes_vs_map.png)", ""]
    return "\n".join(lines + seconds_table(doc)) + "\n"


def bytes_vs_map_png(doc: dict[str, Any], path: Path) -> bool:
    """Write the plot; False if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    styles = {"float": ("o", "C0", "float32 / float16"), "float16": ("o", "C0", None), "pca": ("s", "C1", "PCA (float32)"),
              "pq": ("^", "C2", "PQ"), "ivfpq": ("v", "C4", "IVF-PQ"), "binary": ("x", "C3", "binary ITQ"),
              "binary+rerank": ("D", "C5", f"binary ITQ + re-rank top {doc['rerank_depth']}")}
    seen = set()
    for row in doc["rows"]:
        marker, colour, label = styles[row["kind"]]
        show = label if label and label not in seen else None
        seen.add(label)
        ax.scatter(row["code_bytes"], row["mAP"], marker=marker, color=colour, label=show, s=45)
        short = row["name"].split(" (")[0].replace("pipeline ", "").replace(" + float re-rank", " +rr")
        ax.annotate(short, (row["code_bytes"], row["mAP"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per database vector (codes only)")
    ax.set_ylabel("copy-detection mAP")
    ax.set_title(f"{doc['model']}: bytes per vector vs mAP")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return True


def write_reports(out: Path, copy_detection: dict[str, Any], class_retrieval: dict[str, Any],
                  bytes_doc: dict[str, Any], family_order: Sequence[str]) -> list[Path]:
    """Write the Markdown files (and the PNG); returns every path written, JSON included."""
    files = []
    for name, text in (("copy_detection", copy_detection_md(copy_detection, family_order)),
                       ("class_retrieval", class_retrieval_md(class_retrieval)),
                       ("bytes_vs_map", bytes_vs_map_md(bytes_doc))):
        atomic_write_bytes(out / f"{name}.md", text.encode())
        files += [out / f"{name}.json", out / f"{name}.md"]
    if bytes_doc.get("rows") and bytes_vs_map_png(bytes_doc, out / "bytes_vs_map.png"):
        files.append(out / "bytes_vs_map.png")
    return files
