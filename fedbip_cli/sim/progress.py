"""Rich progress for `simulate` and `demo`: rounds overall, the current client step, training steps."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fedbip_cli.sim.simulate import Reporter


class RichReporter(Reporter):
    """Two bars (strategy-rounds done; steps of the current client) and one line per finished round."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                                 disable=not enabled, transient=True)
        self.console = console
        self.enabled = enabled
        self._rounds = self._work = TaskID(-1)  # the bars begin() adds

    def __enter__(self) -> "RichReporter":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def begin(self, strategies: list[str], rounds: int, clients: list[str]) -> None:
        self._rounds = self.progress.add_task(
            "rounds", total=len(strategies) * rounds,
            info=f"{len(strategies)} strategies x {rounds} rounds, {len(clients)} clients")
        self._work = self.progress.add_task("", total=None, info="")

    def phase(self, strategy: str, t: int, what: str, client: str | None = None) -> None:
        label = f"{strategy} r{t} {what}" + (f" {client}" if client else "")
        self.progress.update(self._work, description=label, completed=0, total=None, info="")

    def step(self, done: int, total: int, loss: float) -> None:
        self.progress.update(self._work, completed=done, total=total, info=f"loss {loss:.3f}")

    def round_done(self, strategy: str, t: int, evaluation: dict[str, Any], resumed: bool) -> None:
        self.progress.advance(self._rounds)
        if self.enabled:
            note = " (done before, resumed)" if resumed else ""
            metric = evaluation.get("primary", "accuracy")
            self.console.print(f"{strategy:>13} round {t}: mean {metric.replace('_', ' ')} "
                               f"{evaluation[f'mean_{metric}']:.3f}, worst {evaluation[f'worst_{metric}']:.3f}{note}",
                               highlight=False)
