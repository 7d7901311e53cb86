"""TAP's client stages (arXiv 2509.26524) on fedbip's files: margin-gated replacement and distillation.

The personal adapter lives in `personal/<client>/<task>/adapter/` and never leaves the site: task
vectors are always made from the received start adapter and the trained one, never from it. Every
decision is appended to `personal/<client>/decisions.jsonl` with both losses.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedbip_cli.client.splits import task_indices
from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.adapter import copy_adapter
from fedbip_cli.core.files.hashes import stable_seed
from fedbip_cli.core.site.margin_gate import decide, margin_for
from fedbip_cli.errors import UserError
from fedbip_cli.steps.cards import CARD_FILE, site_card
from fedbip_cli.steps.site import SiteRuntime
from fedbip_cli.workspace.layout import Workspace


def personal_root(ws: Workspace, client: str) -> Path:
    return ws.root / "personal" / client


def personal_dir(ws: Workspace, client: str, task: str) -> Path:
    return personal_root(ws, client) / task / "adapter"


def _log(ws: Workspace, client: str, record: dict[str, Any]) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": client, **record}
    atomic.append_line(personal_root(ws, client) / "decisions.jsonl", json.dumps(record))


def check_personal_writes(ws: Workspace, client: str) -> None:
    """The personal adapters' folder and the decision log, checked before any work (Workspace.check_writes)."""
    ws.check_writes(personal_root(ws, client) / "decisions.jsonl", folders=[personal_root(ws, client)])


def gate_split(ws: Workspace, client: str) -> str:
    """TAP compares training losses; a held-out validation split is better when there is one."""
    return "validation" if ws.client(client).validation else "train"


def accept(ws: Workspace, client: str, t: int, *, margin: float | None = None,
           runtime: SiteRuntime | None = None) -> list[dict[str, Any]]:
    """Compare the adapter received for round t with the personal adapter(s), per task, and replace
    each personal adapter only where loss(received) + margin < loss(personal)."""
    ws.client(client)
    check_personal_writes(ws, client)
    rt = runtime or SiteRuntime(ws)
    cm = rt.model_for(client)
    received = ws.resolve_start(t, client, site=True)
    split = gate_split(ws, client)
    data = rt.split(client, split)
    tap = ws.config.tap
    decisions = []
    for task in data.task_names():
        subset = data.for_task(task)
        cm.load(received)
        received_loss = rt.task.evaluate(cm, subset, rt.pad_id)["loss"]
        mine = personal_dir(ws, client, task)
        personal_loss = None
        if mine.is_dir():
            cm.load(mine)
            personal_loss = rt.task.evaluate(cm, subset, rt.pad_id)["loss"]
        m = margin if margin is not None else margin_for(task, tap.margin, tap.margins)
        d = decide(task, received_loss, personal_loss, m)
        if d.action in ("seed", "replace"):
            copy_adapter(received, mine)
        record = {"stage": "accept", "round": t, "split": split, "received": str(received), **d.to_json()}
        _log(ws, client, record)
        decisions.append(record)
    return decisions


def distill(ws: Workspace, client: str, t: int, *, runtime: SiteRuntime | None = None) -> list[dict[str, Any]]:
    """After the last round: fine-tune the final federated adapter locally (the teacher), then train each
    personal adapter on local data with CE + w T^2 KL(teacher || student).

    Classification distils the teacher's class logits; causal-lm distils token by token on the
    response tokens, with the teacher's outputs computed batch by batch (its adapter swapped in)."""

    # lazy: torch (~3 s); `accept` needs none
    from fedbip_cli.client.losses import distillation_kl
    from fedbip_cli.client.train import distillation_gap, train

    ws.client(client)
    check_personal_writes(ws, client)
    rt = runtime or SiteRuntime(ws)
    cm = rt.model_for(client)
    received = ws.resolve_start(t, client, site=True)
    data = rt.split(client, "train")
    tc, tap = ws.config.training, ws.config.tap
    teacher_dir = personal_root(ws, client) / "teacher"
    cm.load(received)
    train(cm, data, tc, stable_seed(tc.seed, client, "teacher", t), rt.pad_id)
    cm.save(teacher_dir, extra_files={CARD_FILE: site_card(ws, "trained", t, client)})
    logits = rt.task.uses_labels  # class logits fit in memory; per-token logits are computed per batch
    teacher = rt.task.predict_logits(cm, data, rt.pad_id) if logits else None
    teacher_state = None if logits else {k: v.detach().clone() for k, v in cm.trainable_state().items()}
    student_tc = replace(tc, max_steps=tap.distill_steps, batch_size=tap.distill_batch_size,
                         learning_rate=tap.distill_learning_rate or tc.learning_rate)

    def gap(subset, targets) -> float:
        if teacher_state is None:  # class logits: `targets` holds the teacher's
            return float(distillation_kl(rt.task.predict_logits(cm, subset, rt.pad_id), targets, tap.temperature))
        return distillation_gap(cm, subset, rt.pad_id, teacher_state, tap.temperature, tap.distill_batch_size)

    results = []
    for task in data.task_names():
        idx = task_indices(data.tasks, len(data), task)
        subset, targets = data.for_task(task), (teacher[idx] if teacher is not None else None)
        mine = personal_dir(ws, client, task)
        if not mine.is_dir():
            copy_adapter(received, mine)
        cm.load(mine)
        kl_before = gap(subset, targets)
        res = train(cm, subset, student_tc, stable_seed(tc.seed, client, "distill", task, t), rt.pad_id,
                    teacher_logits=targets, kd_weight=tap.kd_weight, kd_temperature=tap.temperature,
                    teacher_state=teacher_state)
        kl_after = gap(subset, targets)
        cm.save(mine, extra_files={CARD_FILE: site_card(ws, "personal", t, client)})
        record = {"stage": "distill", "round": t, "task": task, "steps": res.steps, "kd_weight": tap.kd_weight,
                  "temperature": tap.temperature, "kl_before": kl_before, "kl_after": kl_after,
                  "final_loss": res.final_loss}
        _log(ws, client, record)
        results.append(record)
    return results


def personal_adapter(ws: Workspace, client: str, task: str = "default") -> Path:
    """The personal adapter of one task (for `fedbip eval --adapter`)."""
    folder = personal_dir(ws, client, task)
    if not folder.is_dir():
        raise UserError(f"{folder}: no personal adapter yet (run `fedbip accept --client {client}` first)")
    return folder
