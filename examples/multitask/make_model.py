"""A tiny random Llama and a word-level tokenizer over the example's vocabulary, built offline.

    python examples/multitask/make_model.py WORKDIR/model

It knows nothing: it lets the example run end to end on any machine. For real results give a
pretrained causal LM folder to make_data.py --model (or model.path in fedbip.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from make_data import vocabulary  # noqa: E402


def main() -> None:
    from fedbip_cli.testing.tiny_models import build_tiny_llama

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("model")
    build_tiny_llama(folder, vocabulary(), hidden=64, layers=2)
    print(f"wrote a tiny random Llama ({len(vocabulary()) + 4} tokens) to {folder}")


if __name__ == "__main__":
    main()
