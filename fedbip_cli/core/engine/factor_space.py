"""The factor-space engine: Gram matrices and outputs, one tensor name across all clients at a time.

Every tensor of every output is a linear combination of the round's parts (`core.coefficients`):
the distinct start adapters and the task vectors. So each tensor name costs one read of each part
it needs, one float32 matrix product for the Gram matrices and one for all outputs together.
Float32 is enough for both (inputs are float32 or narrower, a product of K x n by n x K sums at most
a few thousand terms per BLAS block, and the Gram matrices are summed across tensors in float64).
The delta-space engine uses the same functions for the dense tensors it does not factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedbip_cli.core.engine.coefficients import Parts, factor_parts, gram_of, used_parts
from fedbip_cli.core.engine.round_data import RoundData, RoundReader
from fedbip_cli.core.files.adapter import module_of
from fedbip_cli.core.strategies.similarity import add_gram
from fedbip_cli.errors import UserError


def parts_of(data: RoundData, scales: np.ndarray) -> Parts:
    """The factor-space parts of a round whose task vectors are multiplied by `scales` (clipping)."""
    group, reps = data.groups
    return factor_parts(group, len(reps), scales)


def _nonfinite(data: RoundData, name: str, rows: np.ndarray, used: np.ndarray) -> UserError:
    bad = [j for j, row in zip(used, rows) if not np.isfinite(row).all()]
    path = data.part_path(int(bad[0])) if bad else "inputs"
    return UserError(f"{path}: tensor {name!r} holds NaN or Inf values")


def grams(src: RoundReader, names: Sequence[str], need_model: bool, scales: np.ndarray,
          task: dict[str, np.ndarray], model: dict[str, np.ndarray] | None) -> None:
    """Add the task-vector (and trained-adapter) Gram matrices of `names`, grouped by module, of the
    task vectors times `scales`, into `task` and `model`. Start adapters are read only when the
    trained adapters' Grams are needed."""
    data = src.data
    parts = parts_of(data, scales)
    used = used_parts(parts.task, parts.trained) if need_model else used_parts(parts.task)
    full = np.zeros((parts.task.shape[1],) * 2)
    for name in names:
        y = src.parts_stack(name, used).reshape(len(used), -1)
        h = y @ y.T
        if not np.isfinite(np.diag(h)).all():
            raise _nonfinite(data, name, y, used)
        full[np.ix_(used, used)] = h
        add_gram(task, module_of(name), gram_of(parts.task, full))
        if model is not None:
            add_gram(model, module_of(name), gram_of(parts.trained, full))


def mix(src: RoundReader, name: str, coeffs: np.ndarray) -> np.ndarray:
    """Tensor `name` of every output: coeffs (T x parts) @ parts, as T x shape float32."""
    used = used_parts(coeffs)
    y = src.parts_stack(name, used)
    out = coeffs[:, used].astype(np.float32) @ y.reshape(len(used), -1)
    if not np.isfinite(out.sum()) and not np.isfinite(out).all():
        raise _nonfinite(src.data, name, y, used)
    return out.reshape((len(coeffs),) + y.shape[1:])
