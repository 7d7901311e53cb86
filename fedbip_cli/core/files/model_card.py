"""The model card (README.md) of an adapter: what it is, where it came from, how it scored.

Rendered from plain facts (no torch), so the coordinator writes cards for the adapters it
aggregates and the sites for the adapters they train; `fedbip export` adds evaluation metrics.
The card names the base model by its portable name only: never a path of the writing machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedbip_cli import __version__

KINDS = {
    "initial": "the shared round-0 adapter every site starts from (seeded, identical at every site)",
    "trained": "this site's adapter after local fine-tuning in this round (it stays at the site)",
    "personalized": "this site's personalized aggregate, made by the coordinator for the next round",
    "global": "the example-weighted mean of the round's adapters, for sites that join later",
    "kept": "this site's previous adapter, kept because it sent no task vector this round",
    "export": "this site's personalized adapter, exported for deployment",
    "personal": "this site's private personal adapter (TAP), never sent to the coordinator",
    "adapter": "an adapter written by fedbip",
}


@dataclass
class CardFacts:
    """Everything a card states; None fields are left out."""

    base_model: str
    task: str
    kind: str
    round: int | None = None
    client: str | None = None
    strategy: str | None = None
    own_weight: float | None = None
    contributors: list[tuple[str, float]] = field(default_factory=list)
    base_fingerprint: str | None = None
    labels: list[str] | None = None
    metrics: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    layout: str | None = None
    """How to load it (export writes the route it chose)."""
    pipeline_tag: str | None = None
    """The hub's pipeline tag of the task type (its registry line, workspace/task_types.py)."""


def top_contributors(clients: list[str], row: list[float], limit: int = 5) -> list[tuple[str, float]]:
    """The clients with the largest weights in one row of the mixing matrix (non-zero, largest first)."""
    pairs = sorted(((c, float(w)) for c, w in zip(clients, row) if abs(float(w)) > 1e-12), key=lambda p: -p[1])
    return pairs[:limit]


def render_card(facts: CardFacts) -> str:
    """README.md text: YAML front matter the hub reads, then the facts as short sections."""

    pipeline = facts.pipeline_tag
    lines = ["---", f"base_model: {facts.base_model}", "library_name: peft",
             *( [f"pipeline_tag: {pipeline}"] if pipeline else []),
             "tags:", "- fedbip", "- lora", "- federated-learning", "---", ""]
    who = f" for client `{facts.client}`" if facts.client else ""
    when = f", round {facts.round}" if facts.round is not None else ""
    lines += [f"# fedbip adapter{who}{when}", "",
              f"A LoRA adapter of `{facts.base_model}` ({facts.task}): {KINDS.get(facts.kind, facts.kind)}.", "",
              "## Provenance", "",
              f"- fedbip version: {__version__}",
              f"- base model: `{facts.base_model}`"]
    if facts.base_fingerprint:
        lines.append(f"- base-model fingerprint (its config and weight layout): `{facts.base_fingerprint}`")
    if facts.client:
        lines.append(f"- client: `{facts.client}`")
    if facts.round is not None:
        lines.append(f"- round: {facts.round}")
    if facts.strategy:
        lines.append(f"- aggregation strategy: `{facts.strategy}`")
    if facts.labels:
        lines.append(f"- labels (class index order): {', '.join(f'`{x}`' for x in facts.labels)}")
    if facts.own_weight is not None or facts.contributors:
        lines += ["", "## Aggregation weights received", ""]
        if facts.own_weight is not None:
            lines.append(f"- own weight: {facts.own_weight:.4f}")
        if facts.contributors:
            lines += ["", "| client | weight |", "|---|---|"]
            lines += [f"| `{c}` | {w:.4f} |" for c, w in facts.contributors]
    if facts.training:
        lines += ["", "## Local training", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in facts.training.items()]
    if facts.metrics:
        lines += ["", "## Evaluation", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in facts.metrics.items() if not isinstance(v, (dict, list))]
    if facts.layout:
        lines += ["", "## How to load", "", facts.layout]
    return "\n".join(lines).rstrip() + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
