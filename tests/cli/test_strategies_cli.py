"""`fedbip strategies`, `strategies --json` and the `--help` texts list the same strategies, from the registry."""

from __future__ import annotations

import json

from fedbip_cli.core.strategies.registry import CATALOGUE, all_strategies


def test_strategies_json_text_and_help_list_the_same_set(cli):
    doc = json.loads(cli("strategies", "--json").stdout)
    assert list(doc) == list(CATALOGUE)
    assert doc["fedavg-ft"]["after_receive"] == "finetune" and doc["tap"]["after_receive"] == "tap"
    fedamp = {p["name"]: p for p in doc["fedamp"]["params"]}
    assert fedamp["lamda"]["default"] == 1.0 and fedamp["sigma"]["optional"] and doc["fedamp"]["differs_from_reference"]
    text = cli("strategies").stdout
    listed = [line.split(":", 1)[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert [n for n in listed if n in CATALOGUE] == list(CATALOGUE)
    for cls in all_strategies().values():
        for p in cls.params:
            assert f"aggregation.{p.name} = " in text
    for command in (("strategies", "--help"), ("simulate", "--help")):
        help_text = "".join(cli(*command).stdout.replace("│", "").split())  # rich wraps and boxes the help
        assert ",".join(CATALOGUE) in help_text, command
