"""task.type causal-lm on a tiny random Llama: response-only loss mask, generation, LoRA targets, the
file pipeline (finetune -> taskvec -> similarity -> aggregate -> eval) and PEFT loadability."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from fedbip_cli.errors import UserError
from helpers import build_lm_workspace, write_jsonl


def run(*args: object) -> dict | list:
    from fedbip_cli.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args] + ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def lm_round(tiny_llama, tmp_path_factory):
    """Three clients, one instruction task each, through one round of the real commands."""
    ws = build_lm_workspace(tmp_path_factory.mktemp("lm") / "ws", tiny_llama,
                            {"copy": "copy", "reverse": "reverse", "first": "first"})
    out = {"finetune": {}, "eval": {}}
    for c in ("copy", "reverse", "first"):
        out["finetune"][c] = run("finetune", "-c", c, "-r", 0, "-w", ws)
        run("taskvec", "-c", c, "-r", 0, "-w", ws)
    out["similarity"] = run("similarity", "-r", 0, "-w", ws)
    out["aggregate"] = run("aggregate", "-r", 0, "-w", ws)
    out["eval"] = {c: run("eval", "-c", c, "-r", 1, "-w", ws) for c in ("copy", "first")}
    return ws, out


def test_response_only_loss_mask_token_by_token(tiny_llama):
    # Prepare
    from fedbip_cli.client.tasks.causal_lm.data import (
        IGNORE,
        Pair,
        collate_lm,
        encode_pairs,
    )
    from fedbip_cli.client.tasks.text.model import load_tokenizer
    from fedbip_cli.workspace.config import Config, ModelConfig, TaskConfig

    tok = load_tokenizer(Config(model=ModelConfig(path=str(tiny_llama))))
    task = TaskConfig()
    pairs = [Pair(task.prompt_template.format(prompt="copy red cat"), "red cat"),
             Pair(task.prompt_template_with_input.format(prompt="reverse", input="one two three"), "three two one")]
    # Execute
    data = encode_pairs(tok, pairs, max_length=64, tasks=False)
    batch = collate_lm(data, [0, 1], tok.pad_token_id)
    # Assert: prompt tokens and padding carry IGNORE, every response token (and the closing EOS) its own id
    for row, pair in enumerate(pairs):
        prompt = tok(pair.prompt)["input_ids"]
        response = tok(pair.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert data.input_ids[row] == prompt + response and data.prompt_lengths[row] == len(prompt)
        for j in range(batch["input_ids"].shape[1]):
            label, token = int(batch["labels"][row, j]), int(batch["input_ids"][row, j])
            if j < len(prompt):
                assert label == IGNORE, (row, j)
            elif j < len(prompt) + len(response):
                assert label == token == response[j - len(prompt)], (row, j)
                assert batch["attention_mask"][row, j] == 1
            else:
                assert label == IGNORE and token == tok.pad_token_id and batch["attention_mask"][row, j] == 0
        assert tok.decode([t for t in batch["labels"][row].tolist() if t != IGNORE], skip_special_tokens=True) \
            == pair.response


def test_loss_is_the_mean_nll_of_response_tokens_only(tiny_llama):
    from fedbip_cli.client.tasks import make_task
    from fedbip_cli.client.tasks.causal_lm.data import (
        IGNORE,
        Pair,
        collate_lm,
        encode_pairs,
    )
    from fedbip_cli.workspace.config import Config, ModelConfig, TaskConfig

    task = make_task(Config(model=ModelConfig(path=str(tiny_llama)), task=TaskConfig(type="causal-lm")))
    model = task.build_base_model(0)
    data = encode_pairs(task.processor, [Pair("copy red cat", "red cat"), Pair("first one two", "one")], 32, False)
    batch = collate_lm(data, [0, 1], task.pad_id)
    loss, response_logits = task.loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), -1)
    terms = [-logp[r, j - 1, batch["labels"][r, j]] for r in range(2) for j in range(1, logits.shape[1])
             if batch["labels"][r, j] != IGNORE]
    assert len(terms) == (2 + 1) + (1 + 1)  # response words + EOS of each example
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    assert response_logits.shape == (len(terms), logits.shape[-1])  # the predicting positions' rows only


def test_response_position_logits_give_the_full_logits_loss_and_gradient(tiny_llama, monkeypatch):
    """The loss on the logits of the response positions only (causal_lm/loss.py) equals, with its gradient
    on the LoRA factors, the mean NLL over every position's logits masked to the response tokens, on
    right-padded rows of different prompt and response lengths; so does the fallback for models
    without a boolean `logits_to_keep`."""
    # Prepare
    from peft import LoraConfig, get_peft_model

    from fedbip_cli.client.tasks import make_task
    from fedbip_cli.client.tasks.causal_lm import loss as lm_loss
    from fedbip_cli.client.tasks.causal_lm.data import Pair, collate_lm, encode_pairs
    from fedbip_cli.client.tasks.causal_lm.metrics import shifted_nll
    from fedbip_cli.workspace.config import Config, ModelConfig, TaskConfig

    task = make_task(Config(model=ModelConfig(path=str(tiny_llama)), task=TaskConfig(type="causal-lm")))
    torch.manual_seed(0)
    model = get_peft_model(task.build_base_model(0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # B = 0 would give A no gradient to compare
    pairs = [Pair("copy red cat blue dog", "red cat blue dog"), Pair("first one two", "one"),
             Pair("reverse one", "one")]
    batch = collate_lm(encode_pairs(task.processor, pairs, 32, False), [0, 1, 2], task.pad_id)

    def loss_and_grads(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for _, p in model.named_parameters() if p.requires_grad]

    def full() -> torch.Tensor:  # the computation before: every position's logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return shifted_nll(logits, batch["labels"]).sum() / (batch["labels"][:, 1:] != -100).sum()

    # Execute
    reference, reference_grads = loss_and_grads(full)
    fast, fast_grads = loss_and_grads(lambda: task.loss(model, batch)[0])
    uses_mask = lm_loss.takes_position_mask(type(model.get_base_model()))
    monkeypatch.setattr(lm_loss, "takes_position_mask", lambda cls: False)
    fallback, fallback_grads = loss_and_grads(lambda: task.loss(model, batch)[0])
    # Assert
    assert uses_mask
    for value, grads in ((fast, fast_grads), (fallback, fallback_grads)):
        assert torch.allclose(value, reference, atol=1e-6)
        assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, reference_grads))


def test_fit_keeps_the_response_and_the_bos():
    from fedbip_cli.client.tasks.causal_lm.data import fit

    prompt, response = [2] + list(range(10, 30)), list(range(100, 120))
    p, r = fit(prompt, response, 16, keep_first=True)
    assert len(p) + len(r) == 16 and r == response[:8] and p[0] == 2 and p[1:] == prompt[-7:]
    assert fit([2, 5], [7, 8], 16, True) == ([2, 5], [7, 8])


def test_alpaca_rows_templates_and_line_numbered_errors(tmp_path):
    from fedbip_cli.client.tasks.causal_lm.data import read_pairs
    from fedbip_cli.workspace.config import TaskConfig

    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"instruction": "reverse", "input": "a b", "output": "b a"},
                       {"instruction": "say hi", "input": "", "output": "hi"}, {"prompt": "p", "response": "r"}])
    task = TaskConfig(prompt_template="Q: {prompt}\nA:", prompt_template_with_input="Q: {prompt} [{input}]\nA:")
    pairs = read_pairs(path, task)
    assert [p.prompt for p in pairs] == ["Q: reverse [a b]\nA:", "Q: say hi\nA:", "Q: p\nA:"]
    assert [p.response for p in pairs] == ["b a", "hi", "r"]
    write_jsonl(path, [{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    with pytest.raises(UserError, match=r"d.jsonl:2: field 'response' must be a non-empty string"):
        read_pairs(path, task)
    write_jsonl(path, [{"question": "p"}])
    with pytest.raises(UserError, match=r"d.jsonl:1: expected fields 'prompt' and 'response'"):
        read_pairs(path, task)


def test_bad_template_is_one_line_naming_the_key():
    from fedbip_cli.workspace.config import parse_config

    with pytest.raises(UserError, match="task.prompt_template: template must use {prompt}"):
        parse_config({"model": {"path": "m"}, "task": {"type": "causal-lm", "prompt_template": "{question}"}})
    assert parse_config({"task": {"type": "causal-lm"}}).model.path is None  # the packaged decoder serves it
    with pytest.raises(UserError, match="model.path: task.type image-classification needs a model folder"):
        parse_config({"task": {"type": "image-classification"}})


def test_pipeline_metrics_and_targets(lm_round, tiny_llama):
    ws, out = lm_round
    sim = out["similarity"]["similarity"]
    assert len(sim) == 3 and all(abs(sim[i][i] - 1) < 1e-6 for i in range(3))
    assert all(info["steps"] >= 1 and math.isfinite(info["final_loss"]) for info in out["finetune"].values())
    for metrics in out["eval"].values():
        assert {"loss", "perplexity", "rouge1", "rouge2", "rougeL", "exact_match", "token_f1"} <= set(metrics)
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
        assert all(0 <= metrics[k] <= 1 for k in ("rouge1", "rouge2", "rougeL", "exact_match", "token_f1"))
        assert metrics["examples"] == 4
    config = json.loads((ws / "initial/adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and not config.get("modules_to_save")


def test_every_adapter_loads_with_peft(lm_round, tiny_llama):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ws, _ = lm_round
    folders = [ws / "initial", ws / "rounds/0001/global"] + [ws / f"rounds/{d}/{c}"
                                                            for d in ("0000/trained", "0001/start")
                                                            for c in ("copy", "reverse", "first")]
    for folder in folders:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), folder)
        live = dict(model.named_parameters())
        for name, tensor in load_file(str(folder / "adapter_model.safetensors")).items():
            assert torch.equal(live[name.replace(".weight", ".default.weight")].detach(), tensor), (folder, name)


def test_greedy_generation_is_bounded_and_batching_does_not_change_it(tiny_llama):
    from fedbip_cli.client.tasks import make_task
    from fedbip_cli.client.tasks.causal_lm.metrics import greedy_generate
    from fedbip_cli.workspace.config import Config, ModelConfig, TaskConfig

    task = make_task(Config(model=ModelConfig(path=str(tiny_llama)), task=TaskConfig(type="causal-lm")))
    model = task.build_base_model(0)
    prompts = [task.processor(p)["input_ids"] for p in ("copy red", "first one two three four", "say")]
    kw = dict(max_new_tokens=5, pad_id=task.pad_id, eos_id=task.processor.eos_token_id)
    together = greedy_generate(model, prompts, batch_size=3, **kw)
    alone = greedy_generate(model, prompts, batch_size=1, **kw)
    assert together == alone and all(len(g) <= 5 for g in together)


def test_target_modules_override_and_unknown_names(tmp_path, tiny_llama):
    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.workspace.config import (
        Config,
        LoraSettings,
        ModelConfig,
        TaskConfig,
    )

    cfg = Config(model=ModelConfig(path=str(tiny_llama)), task=TaskConfig(type="causal-lm"),
                 lora=LoraSettings(r=2, target_modules=["q_proj", "k_proj", "o_proj"]))
    cm = ClientModel(cfg, 0)
    assert sorted(cm.model.peft_config["default"].target_modules) == ["k_proj", "o_proj", "q_proj"]
    cfg.lora.target_modules = ["query"]
    with pytest.raises(UserError, match="lora.target_modules: query not found in the model"):
        ClientModel(cfg, 0)


def test_labels_command_refuses_causal_lm(lm_round):
    from fedbip_cli.cli.app import app

    ws, _ = lm_round
    result = CliRunner().invoke(app, ["labels", "-w", str(ws)])
    assert result.exit_code == 2 and "has no labels" in result.output


def test_response_nll_per_example_equals_the_full_logits_sums(tiny_llama):
    """Evaluation's per-example response NLL (projection at the response positions only) is the sum of
    the full logits' NLL over each example's response tokens, whatever the batching."""
    from fedbip_cli.client.tasks import make_task
    from fedbip_cli.client.tasks.causal_lm.data import Pair, collate_lm, encode_pairs
    from fedbip_cli.client.tasks.causal_lm.metrics import response_nll, shifted_nll
    from fedbip_cli.workspace.config import Config, ModelConfig, TaskConfig

    task = make_task(Config(model=ModelConfig(path=str(tiny_llama)), task=TaskConfig(type="causal-lm")))
    model = task.build_base_model(0)
    data = encode_pairs(task.processor, [Pair("copy red cat blue dog", "red cat blue dog"), Pair("first one", "one"),
                                         Pair("reverse one two", "two one")], 32, False)
    full = collate_lm(data, [0, 1, 2], task.pad_id)
    with torch.no_grad():
        expected = shifted_nll(model(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits,
                               full["labels"])
    for batch_size in (1, 2, 3):
        nll, counts = response_nll(model, data, task.pad_id, batch_size)
        assert counts == [5, 2, 3]  # response words + EOS
        assert torch.allclose(torch.tensor(nll), expected, atol=1e-5), batch_size


def test_eval_line_leads_with_the_headline_rouge_l(lm_round, cli):
    ws, _ = lm_round
    r = cli("eval", "-c", "copy", "-r", 1, "-w", ws)
    assert r.exit_code == 0, r.output
    line = " ".join(r.output.split())
    assert line.startswith("copy round 1 test: ROUGE-L ") and "ROUGE-1" in line and "token F1" in line
    assert line.index("ROUGE-L") < line.index("exact match") < line.index("perplexity")
