"""The upgrade marker: `STORE/upgrade.json` names the store that replaced this one after `offshelf index upgrade`.

Every command resolves a store through `resolve_store`, so after the switch it acts on the new store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from offshelf.errors import OffshelfError
from offshelf.store.feature_store import FeatureStore

UPGRADE_MARKER = "upgrade.json"
MARKER_KIND = "offshelf-upgrade"
_MAX_HOPS = 16


def read_upgrade_marker(store_dir: str | Path) -> dict[str, Any] | None:
    """The upgrade marker of a store (where it was upgraded to), or None if it has not been upgraded."""
    path = Path(store_dir) / UPGRADE_MARKER
    try:
        marker = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # not upgraded, or not a store at all
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise OffshelfError(f"unreadable upgrade marker {path}: {exc}") from None
    if not isinstance(marker, dict) or marker.get("kind") != MARKER_KIND or not isinstance(marker.get("new_store"), str) \
            or not marker["new_store"]:
        raise OffshelfError(f"{path} is not an offshelf upgrade marker")
    return marker


def marker_target(store_dir: Path, marker: dict[str, Any]) -> Path:
    target = Path(marker["new_store"])
    return target if target.is_absolute() else (store_dir / target).resolve()


def resolve_store(store: FeatureStore | str | Path) -> FeatureStore:
    """The store to search for `store`: itself, or, if it was upgraded, the store its marker names (followed
    through successive upgrades). This is what `Searcher` uses, so an upgraded store is searched in the new
    model's space with queries embedded by the new model."""
    if isinstance(store, FeatureStore):
        target = resolve_store_root(store.root)
        return store if target == store.root else FeatureStore.open(target)
    return FeatureStore.open(resolve_store_root(store))


def resolve_store_root(store_dir: str | Path) -> Path:
    """The directory `resolve_store` opens for `store_dir`, found from the upgrade markers alone (no manifest
    is read, so `offshelf check` can report on a store whose manifest is damaged)."""
    current = Path(store_dir)
    seen = {current.resolve()}
    for _ in range(_MAX_HOPS):
        marker = read_upgrade_marker(current)
        if marker is None:
            return current
        current = marker_target(current, marker)
        if current.resolve() in seen:
            raise OffshelfError(f"upgrade markers form a loop at {current}")
        seen.add(current.resolve())
    raise OffshelfError(f"more than {_MAX_HOPS} chained upgrades from {store_dir}")
