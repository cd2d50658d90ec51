"""What every revision shares: downgrades are refused.

A downgrade would drop columns and tables that hold clinical records (a flagged film's cause, where its score was
calibrated, how often it was received, the SR/SC objects not yet on the PACS), and nothing could bring them back.
An administrator who must return to an older pneumoscan restores the copy of the database taken before the upgrade
(``docs/store.md``); an older pneumoscan refuses a newer database by itself, with a message that says so.
"""

from __future__ import annotations

from pneumoscan.store.errors import StoreError

__all__ = ["refuse_downgrade"]


def refuse_downgrade(revision: str) -> None:
    """Raise: downgrades are not supported (see the module).

    Raises:
        StoreError: always.
    """
    raise StoreError(f"downgrading the worklist database below schema revision {revision} is refused: it would "
                     "drop stored results, reviews and DICOM objects. To run an older pneumoscan, restore the copy "
                     "of the database taken before the upgrade (docs/store.md)")
