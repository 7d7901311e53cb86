"""Flan-style instruction tasks made from BBC News articles (datasets/bbc.py), offline and pure python.

Rows look like Flan's: an instruction whose text ends with `OPTIONS:\\n- a\\n- b` when the answer is a
choice among those options, free text when the answer is generated. Each task reads only an article's
title, lead (its first paragraph) and topic:

- topic:    the lead -> its topic, a choice among the five topics;
- headline: the lead -> the article's title (generated; ROUGE's kind of task);
- match:    a lead and a headline -> whether the headline is the article's own (yes/no); a "no" row
            shows the title of another article, so every row consumes two articles;
- opening:  a title -> the article's lead (generated, a sentence or two).

The tasks ask different things of the same kind of text, so clients holding different tasks pull an
adapter different ways (the paper's conflicting clients), while clients of the same task help each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from fedbip_cli.datasets.bbc import Article


def options(choices: Sequence[str]) -> str:
    """Flan's options block: `OPTIONS:` then one `- choice` line each."""
    return "OPTIONS:\n" + "\n".join(f"- {c}" for c in choices)


@dataclass(frozen=True)
class InstructionTask:
    """One task: how many articles a row consumes and how it turns them into (prompt, response)."""

    name: str
    choice: bool
    """Whether the answer is one of the OPTIONS listed in the prompt (else generated text)."""
    articles_per_row: int
    make: Callable[[Sequence[Article], Sequence[str], bool], tuple[str, str]]
    """(articles of the row, sorted topic names, a fair coin for the row) -> (prompt, response)."""


def _topic(a: Sequence[Article], topics: Sequence[str], _: bool) -> tuple[str, str]:
    return f"{a[0].lead}\n\nWhich topic is this news article about?\n\n{options(topics)}", a[0].topic


def _headline(a: Sequence[Article], _t: Sequence[str], _c: bool) -> tuple[str, str]:
    return f"Write a headline for this news article.\n\n{a[0].lead}", a[0].title


def _match(a: Sequence[Article], _t: Sequence[str], own: bool) -> tuple[str, str]:
    title = a[0].title if own else a[1].title
    return (f"Article: {a[0].lead}\n\nHeadline: {title}\n\nIs this the headline of the article?\n\n"
            f"{options(('yes', 'no'))}", "yes" if own else "no")


def _opening(a: Sequence[Article], _t: Sequence[str], _c: bool) -> tuple[str, str]:
    return f"Write the opening sentence of a news article with the headline \"{a[0].title}\".", a[0].lead


TASKS: dict[str, InstructionTask] = {t.name: t for t in (
    InstructionTask("topic", True, 1, _topic),
    InstructionTask("headline", False, 1, _headline),
    InstructionTask("match", True, 2, _match),
    InstructionTask("opening", False, 1, _opening),
)}
"""The instruction tasks, by name; the order is the default task order of a federation."""


def make_row(task: InstructionTask, articles: Sequence[Article], topics: Sequence[str], coin: bool) -> dict[str, str]:
    """A JSONL row (prompt, response, task) for causal-lm's default fields and task.task_field `task`."""
    prompt, response = task.make(articles, topics, coin)
    return {"prompt": prompt, "response": response, "task": task.name}
