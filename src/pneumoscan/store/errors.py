"""The worklist database's errors, under :class:`~pneumoscan.errors.PneumoscanError`."""

from __future__ import annotations

from pneumoscan.errors import PneumoscanError

__all__ = ["ResultNotFoundError", "SchemaTooNewError", "StoreError"]


class StoreError(PneumoscanError, RuntimeError):
    """The worklist database cannot be opened or used (bad URL, missing driver, unreadable file, unknown tables)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer pneumoscan (its schema version is above the one this code knows)."""


class ResultNotFoundError(PneumoscanError, KeyError):
    """No worklist result has the requested id."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""
