"""Standard adapter metadata and model cards, without peft: portable base-model names, task types,
no auto_mapping into fedbip_cli, and cards that state what the adapter is."""

from __future__ import annotations

import pytest

from fedbip_cli.core.files.adapter_meta import (
    hub_id_from_cache_path,
    is_machine_path,
    portable_base_name,
    standard_config,
)
from fedbip_cli.core.files.model_card import CardFacts, render_card, top_contributors


@pytest.mark.parametrize("value, expected", [
    ("/home/ana/models/llama", True), ("~/models/llama", True), ("C:\\models\\llama", True),
    ("\\\\server\\share\\m", True), ("meta-llama/Llama-2-7b-hf", False), ("tiny-bert", False),
    ("models/llama", False), (None, False), ("", False)])
def test_machine_paths_are_recognised(value, expected):
    assert is_machine_path(value) is expected


def test_hub_id_from_a_hugging_face_cache_folder():
    snap = "/root/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/01c7f73d"
    assert hub_id_from_cache_path(snap) == "meta-llama/Llama-2-7b-hf"
    assert hub_id_from_cache_path("/data/models/llama") is None


def test_standard_config_overlays_metadata_and_drops_fedbip_auto_mapping():
    # Prepare
    config = {"peft_type": "LORA", "r": 4, "base_model_name_or_path": "/tmp/x/tiny-bert", "task_type": None,
              "auto_mapping": {"base_model_class": "SequenceClassifier", "parent_library": "fedbip_cli.client.x"}}
    # Execute
    doc = standard_config(config, {"base_model_name_or_path": "org/tiny-bert", "task_type": "SEQ_CLS"})
    # Assert
    assert doc == {"peft_type": "LORA", "r": 4, "base_model_name_or_path": "org/tiny-bert", "task_type": "SEQ_CLS",
                   "auto_mapping": None}
    assert config["base_model_name_or_path"] == "/tmp/x/tiny-bert"  # the input is not changed
    kept = {"base_model_class": "ViTForImageClassification", "parent_library": "transformers.models.vit.modeling_vit"}
    assert standard_config({"auto_mapping": kept}, {"base_model_name_or_path": "a/b"})["auto_mapping"] == kept
    with pytest.raises(ValueError):
        standard_config(config, {"base_model_name_or_path": "/tmp/x/tiny-bert"})


def test_portable_base_name_keeps_names_and_replaces_paths():
    assert portable_base_name("org/model", "fallback") == "org/model"
    assert portable_base_name("/srv/models/model", "fallback") == "fallback"
    assert portable_base_name(None, "fallback") == "fallback"


def test_card_states_provenance_weights_and_metrics():
    # Prepare
    facts = CardFacts("org/base", "text-classification", "personalized", 3, "site_a", strategy="fedbip",
                      pipeline_tag="text-classification", own_weight=0.625,
                      contributors=top_contributors(["site_a", "site_b", "site_c"], [0.625, 0.375, 0.0]),
                      base_fingerprint="abc123", labels=["money", "sport"], metrics={"accuracy": 0.75})
    # Execute
    card = render_card(facts)
    # Assert
    assert card.startswith("---\nbase_model: org/base\nlibrary_name: peft\npipeline_tag: text-classification\n")
    for text in ("client: `site_a`", "round: 3", "`fedbip`", "own weight: 0.6250", "| `site_b` | 0.3750 |",
                 "`abc123`", "`money`, `sport`", "accuracy: 0.7500"):
        assert text in card
    assert "site_c" not in card  # a zero weight contributed nothing
