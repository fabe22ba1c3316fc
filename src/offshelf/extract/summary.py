"""What one `embed` run did."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EmbedSummary:
    """Counts of one `embed` run: `skipped` files were already in the store, unchanged; `removed` files were
    left out because they were removed from the store (re-add them with `readd`); `failures`
    lists each file that could not be embedded in this run with the reason; `index` reports how the
    store's ANN index (if it has one) was updated with the new rows."""

    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    removed: int = 0
    seconds: float = 0.0
    store: str = ""
    failures: list[dict[str, str]] = field(default_factory=list)
    index: dict[str, object] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

