"""The facts of an adapter's model card, gathered from the workspace (site, coordinator and export).

Rendering is core/files/model_card.py (numpy-only, shared with the coordinator); this module only
knows where in a workspace each fact lives.
"""

from __future__ import annotations

from typing import Any

from fedbip_cli.core.files.model_card import CardFacts, render_card, top_contributors
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.layout import Workspace
from fedbip_cli.workspace.model_path import base_fingerprint, base_name
from fedbip_cli.workspace.task_types import task_type

CARD_FILE = "README.md"


def base_facts(ws: Workspace, kind: str, t: int | None, client: str | None = None,
               fingerprint: str | None = None) -> CardFacts:
    """What every card of this workspace says: base model (portable name), task, labels, fingerprint."""
    cfg = ws.config
    if fingerprint is None:
        fingerprint = model_fingerprint_or_none(cfg)
    labels = None
    spec = task_type(cfg.task.type)
    if spec.uses_labels:
        try:
            labels = ws.labels()
        except UserError:  # a coordinator may hold no label map: the card then says nothing about labels
            labels = None
    return CardFacts(base_name(cfg), cfg.task.type, kind, t, client,
                     strategy=cfg.aggregation.strategy, base_fingerprint=fingerprint, labels=labels,
                     pipeline_tag=spec.pipeline_tag)


def model_fingerprint_or_none(cfg: Any) -> str | None:
    """The base model's fingerprint, or None where the model is not on this machine (a coordinator)."""
    try:
        return base_fingerprint(cfg)
    except (UserError, OSError, ValueError):
        return None


def site_card(ws: Workspace, kind: str, t: int | None, client: str | None = None,
              training: dict[str, Any] | None = None) -> str:
    """README.md of an adapter a site writes (initial, trained, TAP's personal adapter)."""
    facts = base_facts(ws, kind, t, client)
    if kind == "initial":
        facts.strategy = None
    if training:
        keep = ("num_examples", "steps", "examples_seen", "final_loss", "mean_loss", "seed")
        facts.training = {k: training[k] for k in keep if k in training}
    return render_card(facts)


def aggregate_cards(ws: Workspace, t: int, clients: list[str], matrix: Any, strategy: str,
                    fingerprint: str | None) -> list[str]:
    """README.md of each personalized adapter of round t+1 (row i of `matrix`: what client i received),
    then of the global adapter."""
    cards = []
    for i, client in enumerate(clients):
        facts = base_facts(ws, "personalized", t + 1, client, fingerprint)
        row = [float(w) for w in matrix[i]]
        facts.strategy, facts.own_weight = strategy, row[i]
        facts.contributors = top_contributors(clients, row)
        cards.append(render_card(facts))
    facts = base_facts(ws, "global", t + 1, None, fingerprint)
    facts.strategy = strategy
    cards.append(render_card(facts))
    return cards
