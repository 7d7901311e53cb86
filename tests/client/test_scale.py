"""Foundation-model settings on the tiny models: device/dtype/quantization resolution, float32 LoRA and
heads over a bf16 base, gradient accumulation and checkpointing (same gradients), the learning-rate
schedules, and determinism. GPU-only checks are marked `cuda` and skip without CUDA."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedbip_cli.errors import UserError
from helpers import build_lm_workspace

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def lm_config(model, **training):
    from fedbip_cli.workspace.config import (
        Config,
        ModelConfig,
        TaskConfig,
        TrainingConfig,
    )

    return Config(model=ModelConfig(path=str(model), max_length=32), task=TaskConfig(type="causal-lm"),
                  training=TrainingConfig(**training))


def lm_data(task):
    from fedbip_cli.client.tasks.causal_lm.data import Pair, encode_pairs

    pairs = [Pair("copy red cat", "red cat"), Pair("first one two three four", "one"),
             Pair("reverse blue dog", "dog blue"), Pair("copy one", "one"),
             Pair("count red green blue", "three"), Pair("copy fish cow bird", "fish cow bird")]
    return encode_pairs(task.processor, pairs, 32, False)


def grads(cm) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in cm.model.named_parameters() if p.requires_grad}


def zero(cm) -> None:
    for p in cm.model.parameters():
        p.grad = None


# --- device, dtype, quantization -------------------------------------------------------------------


def test_device_and_dtype_resolution():
    from fedbip_cli.client.loading import dtype_keyword, resolve_device, resolve_dtype

    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # no fast bf16 on CPU
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    assert dtype_keyword() == ("dtype" if (major, minor) >= (4, 56) else "torch_dtype")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_cuda_device_refused_without_cuda():
    from fedbip_cli.client.loading import resolve_device

    with pytest.raises(UserError, match="model.device: cuda:1 asked for, but this torch sees no CUDA GPU"):
        resolve_device("cuda:1")


@cuda
def test_auto_on_a_gpu_is_bf16_when_supported():
    from fedbip_cli.client.loading import resolve_device, resolve_dtype

    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_dtype("auto", device) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


@pytest.mark.parametrize("key,value,message", [
    ("model.device", "gpu", "model.device: expected auto, cpu, mps, cuda or cuda:N, got 'gpu'"),
    ("model.dtype", "bf16", "model.dtype: expected 'auto' | 'bfloat16' | 'float16' | 'float32'"),
    ("model.quantization", "2bit", "model.quantization: expected 'none' | '4bit' | '8bit'"),
    ("training.gradient_accumulation_steps", "0", "training.gradient_accumulation_steps: must be in (0, 1048576]"),
    ("training.warmup_ratio", "1.5", "training.warmup_ratio: must be in [0, 1)"),
    ("training.max_grad_norm", "0", "training.max_grad_norm: must be > 0"),
    ("training.lr_scheduler", "step", "training.lr_scheduler: expected 'constant' | 'linear' | 'cosine'"),
])
def test_settings_are_validated(key, value, message):
    import re

    from fedbip_cli.workspace.config import Config, override

    with pytest.raises(UserError, match=re.escape(message)):
        override(Config(), key, value)


def test_warmup_steps_and_ratio_are_exclusive():
    from fedbip_cli.workspace.config import parse_config

    with pytest.raises(UserError, match="set one of them, not both"):
        parse_config({"training": {"warmup_steps": 2, "warmup_ratio": 0.1}})
    with pytest.raises(UserError, match="model.quantization: 4bit computes in bfloat16 or float16"):
        parse_config({"model": {"path": "x", "quantization": "4bit", "dtype": "float32"}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_quantization_refused_with_one_line_and_exit_2(tiny_llama, tmp_path, cli):
    from fedbip_cli.client.loading import check_quantization

    with pytest.raises(UserError,
                       match=r"model.quantization: 4bit needs .*a CUDA GPU \(model.device resolves to cpu\)"):
        check_quantization("4bit", torch.device("cpu"))
    ws = build_lm_workspace(tmp_path / "ws", tiny_llama, {"copy": "copy", "first": "first"})
    result = cli("finetune", "-c", "copy", "-r", "0", "-w", ws, "--set", "model.quantization=8bit")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "error" in line]  # (the progress bar aside)
    assert len(lines) == 1 and "model.quantization: 8bit needs" in lines[0] and "CUDA GPU" in lines[0]
    assert not (ws / "rounds" / "0000" / "trained").exists()  # nothing written


# --- float32 master weights over a bf16 base --------------------------------------------------------


def test_bf16_base_keeps_lora_and_head_float32_and_the_same_initial_adapter(build_workspace, tmp_path):
    from safetensors.torch import load_file

    from fedbip_cli.client.train import train
    from fedbip_cli.steps.site import SiteRuntime
    from fedbip_cli.workspace.config import override
    from fedbip_cli.workspace.layout import Workspace

    root = build_workspace(tmp_path / "ws", {"a": ["sport", "money"], "b": ["sport", "tech"]})
    adapters = {}
    for dtype in ("float32", "bfloat16"):
        ws = Workspace.open(root)
        override(ws.config, "model.dtype", dtype)
        rt = SiteRuntime(ws)
        cm = rt.model
        base = {p.dtype for n, p in cm.model.named_parameters() if "encoder.encoder" in n and "lora_" not in n}
        assert base == {getattr(torch, dtype)}
        trainable = {n: p.dtype for n, p in cm.model.named_parameters() if p.requires_grad}
        assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
        assert set(trainable.values()) == {torch.float32}
        cm.save(tmp_path / dtype)
        adapters[dtype] = load_file(str(tmp_path / dtype / "adapter_model.safetensors"))
        data = rt.split("a", "train")
        res = train(cm, data, dataclasses.replace(ws.config.training, max_steps=2), 0, rt.pad_id)
        assert math.isfinite(res.final_loss)
        assert rt.task.predict_logits(cm, data, rt.pad_id).dtype == torch.float32
    # the shared round-0 adapter is the same bytes whatever the base's dtype (float32 draws, no bf16 rounding)
    assert set(adapters["float32"]) == set(adapters["bfloat16"])
    for k, v in adapters["float32"].items():
        assert v.dtype == torch.float32 and torch.equal(v, adapters["bfloat16"][k]), k


def test_seeded_init_reproduces_peft_on_a_float32_base(tiny_llama):
    from peft import get_peft_model, get_peft_model_state_dict

    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.tasks import make_task

    cfg = lm_config(tiny_llama)
    cm = ClientModel(cfg, 0)
    task = make_task(cfg)
    base = task.build_base_model(0)
    torch.manual_seed(cfg.lora.init_seed)
    plain = get_peft_model_state_dict(get_peft_model(base, task.lora_config(cfg.lora, base)))
    mine = cm.trainable_state()
    assert set(plain) == set(mine) and len(mine) >= 4
    for k in plain:
        assert torch.equal(plain[k], mine[k]), k


def test_causal_lm_bf16_base_trains_and_evaluates(tiny_llama):
    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import train

    cfg = lm_config(tiny_llama, batch_size=3, max_steps=2, learning_rate=1e-2)
    cfg.model.dtype = "bfloat16"
    cm = ClientModel(cfg, 0)
    assert {p.dtype for n, p in cm.model.named_parameters() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in cm.model.named_parameters() if "q_proj.base_layer" in n} == {torch.bfloat16}
    data = lm_data(cm.task)
    res = train(cm, data, cfg.training, 0, cm.task.pad_id)
    metrics = cm.task.evaluate(cm, data, cm.task.pad_id)
    assert res.steps == 2 and math.isfinite(res.final_loss) and math.isfinite(metrics["loss"])
    assert {p.dtype for n, p in cm.model.named_parameters() if "lora_" in n} == {torch.float32}


# --- gradient accumulation and checkpointing ----------------------------------------------------------


def test_accumulating_k_micro_batches_equals_one_batch_of_k_times_the_size(tiny_llama):
    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import accumulate_gradients, train_mode

    cm = ClientModel(lm_config(tiny_llama), 0)
    with torch.no_grad():  # a non-zero B, so that every LoRA factor gets a gradient
        for n, p in cm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    data, pad = lm_data(cm.task), cm.task.pad_id
    train_mode(cm.model)
    micro = [[0, 1], [2, 3], [4, 5]]  # different lengths and response-token counts per micro-batch
    accumulate_gradients(cm, [cm.task.collate(data, idx, pad) for idx in micro])
    accumulated = grads(cm)
    zero(cm)
    accumulate_gradients(cm, [cm.task.collate(data, [0, 1, 2, 3, 4, 5], pad)])
    whole = grads(cm)
    for k in whole:
        assert whole[k].abs().max() > 0, k
        torch.testing.assert_close(accumulated[k], whole[k], atol=1e-6, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes(tiny_llama):
    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import accumulate_gradients, train_mode

    out = {}
    for checkpointing in (False, True):
        cm = ClientModel(lm_config(tiny_llama, gradient_checkpointing=checkpointing), 0)
        with torch.no_grad():
            for n, p in cm.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
        calls = []
        mlp = next(m for n, m in cm.model.named_modules() if n.endswith("layers.0.mlp"))
        mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))  # (post-hooks may not rerun: early stop)
        train_mode(cm.model, checkpointing)
        data = lm_data(cm.task)
        accumulate_gradients(cm, [cm.task.collate(data, [0, 1, 2, 3], cm.task.pad_id)])
        out[checkpointing] = grads(cm), len(calls)
    (plain, plain_calls), (ckpt, ckpt_calls) = out[False], out[True]
    assert plain_calls == 1 and ckpt_calls == 2  # the checkpointed layer ran again in the backward pass
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5)


# --- schedules, clipping, determinism -----------------------------------------------------------------


@pytest.mark.parametrize("kind,warmup", [("constant", 0), ("constant", 3), ("linear", 2), ("cosine", 3),
                                         ("linear", 0), ("cosine", 0)])
def test_schedules_step_as_transformers_would(kind, warmup):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    from fedbip_cli.client.schedule import make_scheduler
    from fedbip_cli.workspace.config import TrainingConfig

    total, lr = 10, 0.5

    def lrs(make) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched, seen = make(opt), []
        for _ in range(total):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    tc = TrainingConfig(lr_scheduler=kind, warmup_steps=warmup)
    reference = {"constant": lambda o: get_constant_schedule_with_warmup(o, warmup),
                 "linear": lambda o: get_linear_schedule_with_warmup(o, warmup, total),
                 "cosine": lambda o: get_cosine_schedule_with_warmup(o, warmup, total)}[kind]
    mine = lrs(lambda o: make_scheduler(o, tc, total))
    assert mine == pytest.approx(lrs(reference), abs=1e-12)
    if warmup:
        assert mine[0] == 0.0 and mine[warmup] == pytest.approx(lr)
    if kind != "constant":
        assert mine[-1] < mine[warmup] and all(a >= b for a, b in zip(mine[warmup:], mine[warmup + 1:]))


def test_warmup_ratio_counts_optimizer_steps():
    from fedbip_cli.client.schedule import warmup_steps
    from fedbip_cli.client.train import planned_steps
    from fedbip_cli.workspace.config import TrainingConfig

    tc = TrainingConfig(batch_size=4, gradient_accumulation_steps=3, epochs=2.0, warmup_ratio=0.25)
    total = planned_steps(50, tc)
    assert total == 2 * math.ceil(50 / 12)
    assert warmup_steps(tc, total) == math.ceil(0.25 * total)


def test_training_with_every_setting_is_deterministic(tiny_llama):
    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import train

    cfg = lm_config(tiny_llama, batch_size=2, gradient_accumulation_steps=2, max_steps=3, learning_rate=1e-2,
                    gradient_checkpointing=True, lr_scheduler="cosine", warmup_steps=1, max_grad_norm=1e-3)
    cm = ClientModel(cfg, 0)
    data = lm_data(cm.task)
    states = []
    for _ in range(2):
        cm.reset_to_initial()
        res = train(cm, data, cfg.training, 7, cm.task.pad_id)
        assert res.steps == 3 and res.examples == 3 * 4 - 2  # 6 examples: 2 + 1 micro-batch groups per epoch
        states.append({k: v.detach().clone() for k, v in cm.trainable_state().items()})
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    cm.reset_to_initial()
    start = cm.trainable_state()
    assert any(not torch.equal(states[0][k], start[k]) for k in start)  # it did train


def test_float32_from_a_bf16_checkpoint_reads_files_and_equals_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from fedbip_cli.client.loading import (
        Placement,
        half_checkpoint,
        load_pretrained,
        upcast_from_files,
    )

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "m")
    assert half_checkpoint(tmp_path / "m") == torch.bfloat16
    cpu32 = Placement(torch.device("cpu"), torch.float32)
    mine = load_pretrained(AutoModelForCausalLM, tmp_path / "m", cpu32, "a causal LM")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    ours, theirs = dict(mine.named_parameters()), dict(reference.named_parameters())
    assert set(ours) == set(theirs)
    for k in theirs:
        assert ours[k].dtype == torch.float32 and torch.equal(ours[k], theirs[k]), k
    assert mine.get_output_embeddings().weight is mine.get_input_embeddings().weight  # still tied
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(mine(input_ids=ids).logits, reference(input_ids=ids).logits, atol=0, rtol=0)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert upcast_from_files(again, tmp_path / "m") == len(theirs)  # every weight read from the file


def test_clients_of_different_ranks_share_one_base_in_memory(tiny_llama, tmp_path):
    from fedbip_cli.client import loading
    from fedbip_cli.steps.site import SiteRuntime
    from fedbip_cli.workspace.layout import Workspace

    root = build_lm_workspace(tmp_path / "ws", tiny_llama, {"copy": "copy", "first": "first"},
                              **{"test: data/first/test.jsonl": "test: data/first/test.jsonl\n    lora_r: 2"})
    loads, real = [], loading.load_pretrained
    loading.load_pretrained = lambda *a, **k: loads.append(a[1]) or real(*a, **k)  # counts, then really loads
    try:
        rt = SiteRuntime(Workspace.open(root))
        wide, narrow = rt.model_for("copy"), rt.model_for("first")
    finally:
        loading.load_pretrained = real
    assert wide is not narrow and len(loads) == 1
    ranks = {cm: {p.shape[0] for n, p in cm.model.named_parameters() if "lora_A" in n} for cm in (wide, narrow)}
    assert ranks[wide] == {8} and ranks[narrow] == {2}

    def base(cm):
        return {n: p.data_ptr() for n, p in cm.model.named_parameters() if not p.requires_grad}

    assert base(wide) == base(narrow)  # the same frozen tensors, not copies
    data = rt.split("first", "train")
    from fedbip_cli.client.train import train

    train(narrow, data, rt.ws.config.training, 0, rt.pad_id)  # training one leaves the other's adapter alone
    assert all(torch.equal(v, wide._initial[k]) for k, v in wide.trainable_state().items())


@cuda
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_gpu_bf16_and_4bit_train_and_evaluate(tiny_llama, quantization):
    if quantization != "none":
        pytest.importorskip("bitsandbytes")
    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import train

    cfg = lm_config(tiny_llama, batch_size=3, max_steps=2, learning_rate=1e-2, gradient_checkpointing=True)
    cfg.model.device, cfg.model.quantization = "cuda", quantization
    cm = ClientModel(cfg, 0)
    lora = [p for n, p in cm.model.named_parameters() if "lora_" in n]
    assert {p.device.type for p in lora} == {"cuda"} and {p.dtype for p in lora} == {torch.float32}
    data = lm_data(cm.task)
    res = train(cm, data, cfg.training, 0, cm.task.pad_id)
    metrics = cm.task.evaluate(cm, data, cm.task.pad_id)
    assert res.steps == 2 and math.isfinite(res.final_loss) and math.isfinite(metrics["loss"])
