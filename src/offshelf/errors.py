"""Exceptions that mean "the user's input or usage is wrong" (CLI exit code 2), as opposed to bugs."""

from __future__ import annotations


class OffshelfError(Exception):
    """Base of the errors caused by bad input or usage; the message is one clear line."""


class StoreError(OffshelfError):
    """A feature store is missing, unreadable, or was asked to mix incompatible features."""


class UnknownItemsError(StoreError):
    """Items named by path or id are not (or no longer) in the store."""


class BusyError(OffshelfError):
    """Another process holds the lock on a store, index or cache entry; retry when it is done."""
