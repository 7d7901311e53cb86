"""image-classification data: a folder of class sub-folders of image files, or an .npz of an image
array and a label array, served as H x W x C uint8 arrays with the model's channel count.

Folder images are decoded when a batch needs them (a site's image folder may not fit in memory as
float tensors); an .npz is loaded once (allow_pickle=False: never unpickle data).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedbip_cli.client.splits import PerTask
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import TaskConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class ImageData(PerTask):
    """Images (files or H x W x C uint8 arrays) and label indices of one split."""

    images: list[Any]
    labels: list[int]
    tasks: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def read_images(path: Path, task: TaskConfig) -> tuple[list[Any], list[str]]:
    """(images, label names) of a class-folder tree or an .npz file."""
    path = Path(path)
    if path.is_dir():
        return _folder(path)
    if path.suffix.lower() == ".npz" and path.is_file():
        return _npz(path, task)
    if not path.exists():
        raise UserError(f"{path}: image data not found (a folder of class sub-folders, or an .npz file)")
    raise UserError(f"{path}: unsupported image data (use a folder of class sub-folders, or an .npz file)")


def _folder(path: Path) -> tuple[list[Path], list[str]]:
    images, labels = [], []
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in classes:
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        images += files
        labels += [d.name] * len(files)
    if not images:
        raise UserError(f"{path}: no images found (expected class sub-folders holding image files)")
    return images, labels


def _npz(path: Path, task: TaskConfig) -> tuple[list[np.ndarray], list[str]]:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: cannot read .npz: {e}") from None
    label_key = task.label_field if task.label_field in arrays else "labels"
    for key in (task.image_field, label_key):
        if key not in arrays:
            raise UserError(f"{path}: .npz holds no array {key!r} (has: {', '.join(arrays)})")
    images, labels = arrays[task.image_field], arrays[label_key]
    if labels.ndim != 1 or len(labels) != len(images) or len(images) == 0:
        raise UserError(f"{path}: {label_key!r} must be one label per image ({len(images)} images, "
                        f"labels of shape {list(labels.shape)})")
    if labels.dtype.kind not in "iuU" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise UserError(f"{path}: {label_key!r} must hold integers or strings, got {labels.dtype}")
    names = [str(int(v)) if labels.dtype.kind in "iuf" else str(v).strip() for v in labels]
    return list(to_uint8_hwc(images, path)), names


def to_uint8_hwc(images: np.ndarray, where: Any) -> np.ndarray:
    """N x H x W, N x H x W x C or N x C x H x W (C = 1, 3, 4) -> N x H x W x C uint8.

    Integer arrays are taken as 0..255; float arrays as 0..1 when their maximum is at most 1, else 0..255.
    """
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise UserError(f"{where}: images must be N x H x W(x C), got shape {list(images.shape)}")
    if images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3, 4):
        images = images.transpose(0, 2, 3, 1)
    if images.dtype.kind == "f":
        top = float(np.nanmax(images)) if images.size else 0.0
        images = np.nan_to_num(images) * (255.0 if top <= 1.0 else 1.0)
    elif images.dtype.kind not in "iub":
        raise UserError(f"{where}: images must be numeric, got {images.dtype}")
    return np.clip(images, 0, 255).astype(np.uint8)


def with_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """H x W x C uint8 -> H x W x `channels` (grey repeated, alpha dropped, colour averaged to grey)."""
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] == channels:
        return image
    if image.shape[-1] == 1:
        return np.repeat(image, channels, axis=-1)
    return image.mean(-1, keepdims=True).round().astype(np.uint8) if channels == 1 else image[..., :channels]


def load_image(item: Any, channels: int) -> np.ndarray:
    """One image as H x W x channels uint8 (decoding a file with Pillow)."""
    if isinstance(item, np.ndarray):
        return with_channels(item, channels)
    try:
        # lazy: Pillow, the optional [vision] extra (image files only; .npz needs none)
        from PIL import Image
    except ImportError:
        raise UserError("image folders need Pillow (pip install pillow), or give the images as an .npz") from None
    try:
        with Image.open(item) as im:
            array = np.asarray(im.convert("RGB" if channels >= 3 else "L"))
    except (OSError, ValueError) as e:
        raise UserError(f"{item}: cannot read image: {e}") from None
    return with_channels(array[..., None] if array.ndim == 2 else array, channels)
