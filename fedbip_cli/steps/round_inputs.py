"""Where a round's task vectors are read from: `--inputs` resolved against the workspace.

The usage fedbip is specified by, `fedbip aggregate --round 3 --inputs deltas/`, means the round's
own deltas folder wherever the command runs. A relative --inputs is looked up in the round folder,
then the workspace root, then the current folder; the first that exists is used.
"""

from __future__ import annotations

from pathlib import Path

from fedbip_cli.errors import NotReady, UserError
from fedbip_cli.workspace.layout import Workspace


def resolve_inputs(ws: Workspace, t: int, inputs: str | Path | None) -> Path:
    """The folder of round t's task vectors. A missing folder is NotReady (exit 75) when it is the
    round's own deltas/ (nothing has arrived yet), bad input otherwise."""
    if inputs is None:
        candidates = [ws.deltas_dir(t)]
    else:
        p = Path(inputs)
        candidates = [p] if p.is_absolute() else [ws.round_dir(t) / p, ws.root / p, Path.cwd() / p]
    for folder in candidates:
        if folder.is_dir():
            return folder
    if any(_same(c, ws.deltas_dir(t)) for c in candidates):
        raise NotReady(f"{ws.deltas_dir(t)}: no task vector has arrived for round {t} yet")
    tried = ", ".join(dict.fromkeys(str(c.absolute()) for c in candidates))
    raise UserError(f"--inputs {inputs}: folder not found (looked in {tried})")


def _same(a: Path, b: Path) -> bool:
    return a.absolute().resolve() == b.absolute().resolve()
