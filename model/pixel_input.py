"""RGB picture -> MedRegA's input tensor values (numpy; no torchvision).

InternVL-Chat-V1.2 ``build_transform(is_train=False, input_size=448)``: convert to RGB, resize to
448x448 with bicubic interpolation (no padding, aspect ratio not kept), ``ToTensor`` (/255) and
ImageNet normalisation. One tile, no thumbnail. Done in float32 with Pillow and numpy, this is
bit-identical to torchvision (checked by the parity test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "pixel_values"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def pixel_values(images: Sequence[Image.Image], image_size: int) -> np.ndarray:
    """Return a float32 array of shape (N, 3, image_size, image_size)."""
    out = np.empty((len(images), 3, image_size, image_size), dtype=np.float32)
    for i, image in enumerate(images):
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resized = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
        scaled = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        out[i] = ((scaled - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out
