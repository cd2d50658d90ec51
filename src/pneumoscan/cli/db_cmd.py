"""``pneumoscan db ...``: the worklist database's schema, for administrators (which version it is at; bringing it
to this pneumoscan's)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

db_app = typer.Typer(help="The worklist database's schema: which version it is at, and upgrading it (serve and "
                          "dicom-listen also upgrade it when they start).", no_args_is_help=True)

DbOption = Annotated[Optional[str], typer.Option(
    "--db", metavar="PATH|URL",
    help="The worklist database: a SQLite file, or a URL such as postgresql://user@host/pneumoscan (psycopg). "
         "Default: worklist.db in $PNEUMOSCAN_DATA_DIR, else ~/.local/share/pneumoscan: the one serve and "
         "dicom-listen use without --db.")]


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Say which schema version the database is at and whether it needs 'pneumoscan db upgrade'. Changes
    nothing (a file that is not there is not created)."""
    from pneumoscan.store.admin import schema_report

    for line in schema_report(db).lines():
        typer.echo(line)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create the database's tables, or upgrade them to this pneumoscan's schema (alembic; all or nothing). A
    database from before alembic is recognised by its version and upgraded from there. Copy the database first:
    a downgrade is refused."""
    from pneumoscan.store.admin import upgrade

    before, version = upgrade(db)
    state = before.state
    if state is None or state.version is None:
        typer.echo(f"created the worklist tables in {before.where} at schema version {version}")
    elif state.version == version and not state.hand_written:
        typer.echo(f"{before.where} is already at schema version {version}; nothing to do")
    else:
        typer.echo(f"upgraded {before.where} from schema version {state.version}"
                   f"{' (from before alembic)' if state.hand_written else ''} to {version}")
