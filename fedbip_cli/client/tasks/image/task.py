"""task.type image-classification: any AutoModelForImageClassification (ViT-style) by path, with a fresh
seeded head for the federation's label map, LoRA on the attention projections and the head trained
in full (modules_to_save); data as class folders or .npz (image_data.py).

Pixels go through the model's own image processor (preprocessor_config.json) when the folder has
one, else through `PlainProcessor`: resize to the model's image_size, scale to [0, 1], normalise
with mean 0.5 and std 0.5 (ViT's convention).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedbip_cli.client import loading
from fedbip_cli.client.loading import base_folder, quiet_transformers
from fedbip_cli.client.metrics import classification_metrics, classification_rows
from fedbip_cli.client.precision import keep_float32
from fedbip_cli.client.tasks.base import Task
from fedbip_cli.client.tasks.image.data import ImageData, load_image, read_images, to_uint8_hwc
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.labels import encode_labels

if TYPE_CHECKING:  # the session imports the tasks
    from fedbip_cli.client.session import ClientModel

HEAD_NAMES = ("classifier", "head", "fc", "score")
IMAGE_FIELD = "image"
"""`fedbip predict`: the field of a JSONL/CSV row holding an image file path, relative to the input file."""


class PlainProcessor:
    """Resize, scale to [0, 1] and normalise (x - 0.5) / 0.5, for model folders without an image processor."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, images: list[np.ndarray], return_tensors: str = "pt", **_: Any) -> dict[str, torch.Tensor]:
        out = []
        for image in images:
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
            out.append(F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)[0])
        return {"pixel_values": (torch.stack(out) - 0.5) / 0.5}


class ImageClassification(Task[ImageData]):
    export_auto_class = "AutoModelForImageClassification"

    @property
    def model_path(self) -> Path:
        return base_folder(self.cfg)

    @cached_property
    def channels(self) -> int:
        """Colour channels the model takes (config num_channels; 3 when it does not say)."""
        # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
        from transformers import AutoConfig

        return int(getattr(AutoConfig.from_pretrained(self.model_path), "num_channels", 3))

    def load_processor(self) -> Any:
        quiet_transformers()
        # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
        from transformers import AutoConfig, AutoImageProcessor

        if (self.model_path / "preprocessor_config.json").is_file():
            return AutoImageProcessor.from_pretrained(self.model_path)
        size = getattr(AutoConfig.from_pretrained(self.model_path), "image_size", 224)
        return PlainProcessor(size[0] if isinstance(size, (list, tuple)) else int(size))

    def build_base_model(self, num_labels: int, head_seed: int | None = None) -> nn.Module:
        # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
        from transformers import AutoModelForImageClassification

        model = loading.load_pretrained(AutoModelForImageClassification, self.model_path, self.placement,
                                        "an image classifier", keep=HEAD_NAMES, num_labels=num_labels,
                                        ignore_mismatched_sizes=True)
        head = keep_float32(self._head(model))  # float32 master weights, drawn in float32 below
        if head_seed is not None:  # the same fresh head at every site, whatever the checkpoint held
            torch.manual_seed(head_seed)
            for module in head.modules():
                if isinstance(module, nn.Linear):
                    cpu = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
                    module.weight.data.copy_(cpu.weight)  # drawn on the CPU: same bytes on any device
                    if module.bias is not None:
                        module.bias.data.copy_(cpu.bias)
        return model

    def _head_name(self, model: nn.Module) -> str:
        for name in HEAD_NAMES:
            if isinstance(getattr(model, name, None), nn.Module):
                return name
        raise UserError(f"model.path: {type(model).__name__} has no classification head named "
                        f"{' / '.join(HEAD_NAMES)}")

    def _head(self, model: nn.Module) -> nn.Module:
        return getattr(model, self._head_name(model))

    def head_modules(self, base: nn.Module) -> list[str]:
        return [self._head_name(base)]

    def read_labels(self, path: Path) -> list[str]:
        return read_images(path, self.cfg.task)[1]

    def load_split(self, path: Path, labels: list[str]) -> ImageData:
        images, names = read_images(path, self.cfg.task)
        return ImageData(images, encode_labels(names, labels, path))

    def collate(self, data: ImageData, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        processor = self.processor
        images = [load_image(data.images[i], self.channels) for i in idx]
        pixels = processor(images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        return {"pixel_values": pixels.float(), "labels": torch.tensor([data.labels[i] for i in idx])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        weight = next(p for p in model.parameters() if p.is_floating_point())  # pixels in the base's dtype
        logits = model(pixel_values=batch["pixel_values"].to(weight.dtype)).logits
        return F.cross_entropy(logits, batch["labels"]), logits

    @torch.inference_mode()
    def predict_logits(self, cm: ClientModel, data: ImageData, pad_id: int, batch_size: int = 64) -> torch.Tensor:
        cm.model.eval()
        out = torch.empty((len(data), cm.num_labels))
        for s in range(0, len(data), batch_size):
            idx = list(range(s, min(s + batch_size, len(data))))
            pixels = self.collate(data, idx, pad_id)["pixel_values"].to(cm.device, cm.placement.dtype)
            with cm.autocast():
                out[idx] = cm.model(pixel_values=pixels).logits.float().cpu()
        return out

    def evaluate(self, cm: ClientModel, data: ImageData, pad_id: int) -> dict[str, Any]:
        return classification_metrics(self.predict_logits(cm, data, pad_id), data.labels, cm.num_labels)

    def predict_file(self, path: Path) -> list[Any] | None:
        """An .npz input: its task.image_field array, one image per row; other files go row by row."""
        if path.suffix.lower() != ".npz":
            return None
        field = self.cfg.task.image_field
        try:
            with np.load(path, allow_pickle=False) as npz:
                if field not in npz:
                    raise UserError(f"{path}: no array {field!r} (task.image_field)")
                images = to_uint8_hwc(npz[field], path)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable .npz file: {e}") from None
        return list(images)

    def predict_item(self, path: Path, line: int, row: dict[str, Any]) -> Path:
        """The image file the row's `image` field names, relative to the input file; it must exist."""
        value = row.get(IMAGE_FIELD)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}:{line}: field {IMAGE_FIELD!r} must be an image file path")
        image = path.parent / value
        if not image.is_file():
            raise UserError(f"{path}:{line}: image {value!r} not found")
        return image

    def predict(self, cm: ClientModel, items: list[Any], labels: list[str]) -> list[dict[str, Any]]:
        """The label and every label's probability of each image, as one batch."""
        data = ImageData(items, [0] * len(items))
        pixels = self.collate(data, list(range(len(items))), self.pad_id)["pixel_values"]
        logits = cm.model(pixel_values=pixels.to(cm.device, cm.placement.dtype)).logits
        return classification_rows(logits.float(), labels)

    def export_base_arguments(self, num_labels: int) -> str:
        """A fresh head of the federation's size replaces the checkpoint's."""
        return f", num_labels={num_labels}, ignore_mismatched_sizes=True"
