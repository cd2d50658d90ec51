"""The ``pneumoscan`` command: thin commands over the library.

Each command parses its arguments, makes one library call and writes the output. Errors the user can fix (bad file,
bad config, bad data folder) are printed as one line, never as a traceback; ``--debug`` shows the traceback.

The commands live in one module per area (:mod:`.data_cmds`, :mod:`.model_cmds`, :mod:`.predict_cmd`,
:mod:`.drift_cmd`, :mod:`.serve_cmd`) and are registered on :data:`app` here, in the order ``--help`` lists them.
Each command imports the library inside its function, so that ``pneumoscan --help`` starts without loading torch.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer
from typer import echo

from pneumoscan import __version__
from pneumoscan.cli import adapt_cmd, data_cmds, db_cmd, dicom_cmd, drift_cmd, model_cmds, predict_cmd, serve_cmd
from pneumoscan.cli.common import click_errors as _click_errors

__all__ = ["app", "main", "run"]

log = logging.getLogger("pneumoscan")

app = typer.Typer(
    name="pneumoscan",
    help="Decision support for pneumonia on pediatric chest X-rays: train, evaluate, explain and serve a CNN. "
    "Not a diagnosis: a second reader for a clinician.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(data_cmds.data_app, name="data")
app.command("train")(model_cmds.train_cmd)
app.command("predict")(predict_cmd.predict_cmd)
app.command("drift")(drift_cmd.drift_cmd)
app.command("adapt")(adapt_cmd.adapt_cmd)
app.command("export")(model_cmds.export_cmd)
app.command("serve")(serve_cmd.serve_cmd)
app.command("dicom-listen")(dicom_cmd.dicom_listen_cmd)
app.command("evaluate")(model_cmds.evaluate_cmd)
app.command("calibrate")(adapt_cmd.calibrate_cmd)
app.add_typer(db_cmd.db_app, name="db")

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"pneumoscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """pneumoscan: find pneumonia on pediatric chest X-rays (decision support, not a diagnosis)."""
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )


def _known_errors() -> tuple[type[BaseException], ...]:
    from pneumoscan.errors import PneumoscanError

    return (PneumoscanError, FileNotFoundError, PermissionError, IsADirectoryError)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point. Returns the exit code (0 ok, 1 a problem with the input, 2 a bad invocation)."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        result = command.main(args=args, prog_name="pneumoscan", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except getattr(_click_errors, "NoArgsIsHelpError", ()) as exc:
        # A bare group shows its help; that is not an error for a person exploring the tool.
        echo(exc.ctx.get_help())
        return 0
    except _click_errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        echo(f"pneumoscan: error: {exc.format_message()}{hint}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        echo("pneumoscan: aborted", err=True)
        return 130
    except _click_errors.ClickException as exc:
        echo(f"pneumoscan: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        echo("pneumoscan: interrupted", err=True)
        return 130
    except Exception as exc:
        if _state["debug"]:
            raise
        known = isinstance(exc, _known_errors())
        msg = str(exc).replace("\n", " ")
        if not known:
            msg = f"{type(exc).__name__}: {msg} (run with --debug for the traceback)"
        echo(f"pneumoscan: error: {msg}", err=True)
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
