"""The `hmdf` command: a thin typer application over the `hmdf_deploy` library."""

from __future__ import annotations

import sys
import warnings

import typer

from hmdf_deploy import __version__
from hmdf_deploy.cli import ui
from hmdf_deploy.cli.deploy import inspect, quantize
from hmdf_deploy.cli.export import export
from hmdf_deploy.cli.importer import import_checkpoint
from hmdf_deploy.cli.run import data, run
from hmdf_deploy.cli.train import train
from hmdf_deploy.errors import HmdfWarning

app = typer.Typer(
    name="hmdf",
    help="Train, quantize, export and stream HM-DF spiking neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hmdf {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of user errors too."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    ui.settings["debug"] = debug
    warnings.simplefilter("always", HmdfWarning)  # one line per file it concerns, not once per session
    warnings.showwarning = ui.show_warning


app.command(no_args_is_help=False)(train)
app.command(no_args_is_help=True)(quantize)
app.command(no_args_is_help=True)(inspect)
app.command(no_args_is_help=True)(export)
app.command("import", no_args_is_help=True)(import_checkpoint)
app.command(no_args_is_help=True)(run)
app.add_typer(data, name="data")


def main() -> None:
    """The `hmdf` entry point. Click's usage errors (a missing option, a value of the wrong type)
    are user errors too, so they print one `error:` line like the commands' own (DESIGN.md "CLI
    conventions") instead of click's usage box."""
    try:
        code = app(standalone_mode=False, prog_name="hmdf")
    except _USAGE_ERROR as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `hmdf` or `hmdf run` alone: the help, as asked for
            if e.format_message():  # (typer's rich help has printed itself already)
                ui.out.print(e.format_message(), markup=False, highlight=False)
            sys.exit(0)
        hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        ui.fail_line(f"{e.format_message()}{hint}")
        code = 2
    except typer.Abort:  # Ctrl-C while the command line was being read
        ui.fail_line("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


#: Click's UsageError, whichever click typer runs on (recent typers carry their own copy of click).
_USAGE_ERROR = typer.BadParameter.__mro__[1]
