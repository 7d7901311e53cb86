"""Shared CLI plumbing: one-line errors with the exit codes of fedbip_cli/errors.py (2 bad input, 3 round
conflict, 75 not ready yet), workspace + overrides, JSON or rich output.

Start-up (issue 21): every `fedbip ... --help` imports this module, so it loads no rich. The consoles are
made on first use, and typer is told to format help and usage errors with click's plain formatter:
typer's rich formatter imports rich, markdown-it and pygments and renders panels, about half of the CPU
time of a `--help` (docs/results.md, Start-up).
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, cast

import typer
import typer.core

from fedbip_cli import __version__
from fedbip_cli.errors import EXIT_BAD_INPUT, UserError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

# typer formats help with rich whenever rich is installed, even with rich_markup_mode=None (it still imports
# typer.rich_utils to escape every "[default: ...]", which click then prints as "\\[default: ...]"); this switch
# is the one it reads. rich stays in use for fedbip's own tables, bars and error lines.
typer.core.HAS_RICH = False


class _LazyConsole:
    """A rich Console made on first use, so that importing the CLI (every `--help`) does not import rich.
    Attribute reads and writes and `with` go to the real Console; `get()` returns it."""

    def __init__(self, **kwargs: Any) -> None:
        object.__setattr__(self, "_kwargs", kwargs)
        object.__setattr__(self, "_console", None)

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console  # on first use: see the module docstring

            object.__setattr__(self, "_console", Console(**self._kwargs))
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.get(), name, value)

    def __enter__(self) -> Console:
        return self.get().__enter__()

    def __exit__(self, *exc: object) -> None:
        self.get().__exit__(*exc)


console = cast("Console", _LazyConsole(stderr=True))
out = cast("Console", _LazyConsole())

WorkspaceOpt = typer.Option(Path("."), "--workspace", "-w", help="Workspace folder (holds fedbip.yaml).",
                            show_default=True)
SetOpt = typer.Option(None, "--set", help="Override a config value, e.g. --set training.epochs=2 (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of tables.")
RoundOpt = typer.Option(..., "--round", "-r", help="Round number (0 is the first).", min=0)
SpaceOpt = typer.Option(None, "--space", help="factor (A, B elementwise) or delta (exact ΔW = s·B·A, refactored "
                                               "to rank r); default: aggregation.space of fedbip.yaml.")
ClientOpt = typer.Option(..., "--client", "-c", help="Client (site) name as configured in fedbip.yaml.")
SiteRoundOpt = typer.Option(None, "--round", "-r", min=0,
                            help="Round number (default: the site's current round, the newest one holding an "
                                 "adapter for the client).")


EXIT_CODES_HELP = ("Exit codes: 0 done (or already done, nothing to do); 2 bad input; 3 round conflict (the round's "
                   "adapters exist and would change: nothing changed, --force redoes it); 75 not ready yet (too few "
                   "task vectors, an upload in progress, an earlier round not finished): retry later.")


def fail(message: str | list[str], code: int = EXIT_BAD_INPUT, label: str = "error") -> None:
    """Print one line to stderr (one line per message for a list) and exit with `code` (2: bad input unless
    told otherwise). A message's own brackets and line breaks, which may come from a file another site
    wrote, are printed as text: never read as markup, never an extra line."""
    # lazy: rich, on the first error only (module docstring)
    from rich.markup import escape

    colour = "bold red" if code == EXIT_BAD_INPUT else "bold yellow"
    for line in [message] if isinstance(message, str) else message:
        line = line.replace("\r", "\\r").replace("\n", "\\n")
        console.print(f"[{colour}]{label}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_LABELS = {3: "conflict", 75: "not ready"}


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError and its kinds (and file-system errors) into one line and their exit code.

    The command runs in a write scope (core/files/targets.py): it may write only under the workspace it
    opens and the --out paths it names (`allow_out`). Warnings raised meanwhile (numpy's RuntimeWarning
    on a hostile tensor, a library's deprecation notice) are held back: printed after a command that
    succeeds, dropped when it fails, so an error is the one line and nothing else."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # lazy: `fedbip --help` imports this module (module docstring)
        from fedbip_cli.core.files.targets import write_scope

        held: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as held, write_scope():
                result = fn(*args, **kwargs)
            for w in held:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
            return result
        except UserError as e:
            fail(getattr(e, "lines", None) or str(e), e.exit_code, _LABELS.get(e.exit_code, "error"))
        except PermissionError as e:
            fail(f"{e.filename}: permission denied")
        except OSError as e:
            if e.errno == 28:
                fail(f"{e.filename or 'disk'}: no space left on device")
            raise

    return wrapper


@contextmanager
def step_progress(*, disable: bool = False) -> Iterator[Progress]:
    """A progress bar for a long step (description, bar, an `info` field, time left) on stderr. It stays on
    the screen when the step succeeds and vanishes when it fails, so that an error is the one line."""
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn  # on first use, as the consoles
    from rich.progress import Progress as _Progress

    bar = _Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), console=console, disable=disable, transient=False)
    with bar:
        try:
            yield bar
        except BaseException:
            bar.live.transient = True  # not printed: a terminal erases it, a log file never gets it
            raise


def open_workspace(path: Path, overrides: Optional[list[str]] = None):
    """The workspace with its config loaded and `--set` overrides applied."""
    # lazy: yaml and the config, which `--help` does not need (module docstring)
    from fedbip_cli.workspace.config import override
    from fedbip_cli.workspace.layout import Workspace

    ws = Workspace.open(path)
    allow_out(ws.root)
    for key, value in parse_sets(overrides).items():
        override(ws.config, key, value, f"--set {key}")
    return ws


def allow_out(path: Path) -> Path:
    """Let this command write under `path`: a workspace, or a file or folder the user named (--out)."""
    # lazy: `fedbip --help` imports this module (module docstring)
    from fedbip_cli.core.files.targets import allow

    allow(path)
    return path


def site_round(ws, client: str, round_: Optional[int]) -> int:
    """--round as given, else the round the workspace knows the site is in (Workspace.current_round)."""
    ws.client(client)
    return round_ if round_ is not None else ws.current_round(client)


def parse_sets(items: Optional[list[str]]) -> dict[str, str]:
    """`--set KEY=VALUE` items as {key: raw value}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


app = typer.Typer(
    name="fedbip",
    help="Bi-level personalized federated fine-tuning of foundation models (FedBip). Each step reads and "
         "writes files in a workspace, so a round can run by hand, from cron or across sites.",
    epilog=EXIT_CODES_HELP, no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedbip {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors and --json output "
                                                                  "(no progress, tables or notes).")) -> None:
    """fedbip command line."""
    if quiet:
        console.quiet = True
        out.quiet = True
