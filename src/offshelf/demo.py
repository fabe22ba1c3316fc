"""The main job on the embedded default data: embed the real photos that ship with scikit-image, then
find each photo again from edited copies of it (crop, mirror, colour change)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from offshelf.extract import EmbedSummary, embed
from offshelf.images import real_photos
from offshelf.images.copies import DEMO_TRANSFORMS
from offshelf.models import offshelf_home
from offshelf.search import Hit, Searcher

DEMO_QUERIES = 4


@dataclass(frozen=True)
class DemoQuery:
    """One edited copy searched for, and what came back."""

    original: str
    transform: str
    hits: list[Hit]

    @property
    def original_rank(self) -> int | None:
        """Rank of the original photo among the hits (None if it was not returned)."""
        return next((hit.rank for hit in self.hits if hit.path == self.original), None)

    def to_dict(self) -> dict[str, object]:
        return {
            "original": self.original,
            "transform": self.transform,
            "original_rank": self.original_rank,
            "hits": [hit.to_dict() for hit in self.hits],
        }


def default_demo_store() -> Path:
    return offshelf_home() / "demo" / "store"


def run_demo(store: str | Path | None = None, *, k: int = 3, progress: bool = True) -> tuple[EmbedSummary, list[DemoQuery]]:
    """Embed the bundled photos into `store` and search with edited copies of the first few."""
    photos = real_photos()
    summary = embed(photos, store or default_demo_store(), progress=progress)
    searcher = Searcher(summary.store)
    queries: list[DemoQuery] = []
    with tempfile.TemporaryDirectory(prefix="offshelf-demo-") as tmp:
        for photo in photos[:DEMO_QUERIES]:
            with Image.open(photo) as opened:
                image = opened.convert("RGB")
            for name, transform in DEMO_TRANSFORMS.items():
                copy = Path(tmp) / f"{photo.stem}-{name.replace(' ', '_').replace('%', '')}.png"
                transform(image).save(copy)
                queries.append(DemoQuery(str(photo), name, searcher.search_files([copy], k)[0]))
    return summary, queries


def format_demo(summary: EmbedSummary, queries: list[DemoQuery]) -> str:
    """A readable table of the demo's searches."""
    found = sum(query.original_rank == 1 for query in queries)
    lines = [
        f"Embedded {summary.embedded} photos ({summary.skipped} already in the store, {summary.failed} failed) "
        f"into {summary.store}",
        "",
        f"{'query (edited copy of)':<28} {'edit':<10} {'rank of original':>16}   top hits (cosine similarity)",
        "-" * 100,
    ]
    for query in queries:
        tops = ", ".join(f"{Path(hit.path).name} {hit.score:.3f}" for hit in query.hits)
        rank = query.original_rank or "-"
        lines.append(f"{Path(query.original).name:<28} {query.transform:<10} {rank!s:>16}   {tops}")
    lines += ["", f"{found}/{len(queries)} edited copies found their original at rank 1."]
    return "\n".join(lines)
