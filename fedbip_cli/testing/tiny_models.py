"""Tiny random models built offline, for tests and runnable examples: a Llama-style decoder with a
word-level tokenizer, and a ViT image classifier.

No pretrained decoder or vision model ships in a package this project can install, so these exercise
the mechanics (loss masks, generation, LoRA targets, aggregation, PEFT loading) in seconds. They know
nothing: real quality needs a real pretrained model given by model.path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]


def build_tiny_llama(folder: str | Path, words: Iterable[str], *, hidden: int = 32, layers: int = 2,
                     seed: int = 0) -> Path:
    """A random LlamaForCausalLM and a whitespace word-level tokenizer (adds <s>; decodes words joined by
    spaces) over `words`, saved in `folder` so AutoModelForCausalLM / AutoTokenizer load them by path."""
    # lazy: torch and transformers; fedbip_cli.testing serves numpy-only tests too
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from fedbip_cli.client.loading import quiet_transformers

    quiet_transformers()
    folder = Path(folder)
    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(words) - set(SPECIAL)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def build_tiny_vit(folder: str | Path, *, image_size: int = 8, channels: int = 3, num_labels: int = 2,
                   hidden: int = 32, layers: int = 2, processor: bool = True, seed: int = 0) -> Path:
    """A random ViTForImageClassification (patch 4) and, with `processor`, its ViTImageProcessor."""
    # lazy: torch and transformers; fedbip_cli.testing serves numpy-only tests too
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from fedbip_cli.client.loading import quiet_transformers

    quiet_transformers()
    folder = Path(folder)
    names = [f"LABEL_{i}" for i in range(num_labels)]  # the label maps num_labels= makes (an untyped keyword)
    cfg = ViTConfig(image_size=image_size, patch_size=4, num_channels=channels, hidden_size=hidden,
                    num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                    id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(seed)
    ViTForImageClassification(cfg).save_pretrained(folder)
    if processor:
        from transformers import ViTImageProcessor

        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
