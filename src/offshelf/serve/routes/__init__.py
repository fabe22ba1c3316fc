"""One router per resource: search, embed, classify, items, operations (health, metrics, stats), the page."""
