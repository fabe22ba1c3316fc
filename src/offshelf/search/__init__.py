"""Search: the `Searcher` over a store (its index or exact), query expansion, and spatial re-ranking."""

from offshelf.search.searcher import Hit, Searcher, search, search_text

__all__ = ["Hit", "Searcher", "search", "search_text"]
