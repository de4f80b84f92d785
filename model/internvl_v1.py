"""transformers' native InternVL with MedRegA's "v1" pixel shuffle.

MedRegA is InternVL-Chat-V1.2, whose ``pixel_shuffle`` (``ps_version`` "v1") stops before the
final height/width transpose that later InternVL releases (and transformers'
:class:`~transformers.InternVLModel`) apply: the v1 image tokens are the v2 tokens with rows and
columns swapped. Everything else (InternViT, projector, Llama) is the native implementation.

The converted checkpoint records ``"ps_version": "v1"`` in its ``config.json``
(:mod:`model.convert`); :class:`MedRegAForConditionalGeneration` reads it, so a folder without the
marker behaves like the native class.

This module imports transformers and torch: import it only where a model is loaded.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLModel, PreTrainedConfig
from transformers.models.internvl.modeling_internvl import InternVLPreTrainedModel

__all__ = ["PS_VERSION_KEY", "InternVLV1Model", "MedRegAForConditionalGeneration", "pixel_shuffle_v1"]

#: Name of the config attribute that selects the pixel shuffle variant ("v1" or "v2").
PS_VERSION_KEY = "ps_version"


def pixel_shuffle_v1(vision_features: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
    """InternVL-Chat-V1.2 pixel shuffle: (N, W, H, C) -> (N, H*s, W*s, C/s^2), no transpose back."""
    n, w, h, c = vision_features.size()
    if (h * scale_factor) % 1 or (w * scale_factor) % 1:
        raise ValueError("height and width must be divisible by 1/scale_factor")
    x = vision_features.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))


class InternVLV1Model(InternVLModel):
    """:class:`InternVLModel` whose pixel shuffle follows ``config.ps_version`` (default "v2")."""

    def pixel_shuffle(self, vision_features: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        if getattr(self.config, PS_VERSION_KEY, "v2") == "v1":
            return pixel_shuffle_v1(vision_features, scale_factor)
        return super().pixel_shuffle(vision_features, scale_factor)


class MedRegAForConditionalGeneration(InternVLForConditionalGeneration):
    """:class:`InternVLForConditionalGeneration` built on :class:`InternVLV1Model`.

    Same parameter names and shapes as the native class, so native checkpoints load unchanged.
    """

    def __init__(self, config: InternVLConfig) -> None:
        # Mirrors InternVLForConditionalGeneration.__init__, with the v1-aware inner model.
        InternVLPreTrainedModel.__init__(self, config)
        self.model = InternVLV1Model(config)
        text_config = config.text_config
        assert isinstance(text_config, PreTrainedConfig)  # a dict or None is made a config at construction
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
        self.post_init()
