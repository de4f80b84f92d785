"""Prompt -> tokens -> InternVL generate -> text, shared by the ``medrega`` and ``tiny`` backends.

Faithful to InternVL-Chat-V1.2's ``chat()`` (the path MedRegA's demo uses): Hermes-2 template,
``<image>`` expanded to ``image_seq_length`` ``<IMG_CONTEXT>`` tokens, one 448x448 tile per image,
greedy decoding with one beam, at least one and at most ``max_new_tokens`` new tokens, stop at
``<|im_end|>``. Unlike ``chat()``, answers are decoded with special tokens kept, so ``<ref>`` and
``<box>`` reach the parser; the text before ``<|im_end|>`` is returned, stripped.

Imports torch/transformers: only imported by a backend that loads a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..pixel_input import pixel_values
from ..template import IM_END, IMG_CONTEXT, build_query

__all__ = ["InternVLEngine"]


class InternVLEngine:
    """A loaded native InternVL model (v1 pixel shuffle aware) and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        config = model.config
        size = config.vision_config.image_size
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.image_seq_length = int(config.image_seq_length)
        self.max_new_tokens = max_new_tokens
        self.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
        image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        if image_token_id != config.image_token_id:
            raise ValueError(
                f"tokenizer's {IMG_CONTEXT} id {image_token_id} differs from config.image_token_id "
                f"{config.image_token_id}"
            )
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else tokenizer.unk_token_id

    # -- inputs ---------------------------------------------------------------------------------
    def query(self, question: str) -> str:
        return build_query(question, self.image_seq_length)

    def _text_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _vision_param(self) -> torch.Tensor:
        return self.model.model.vision_tower.embeddings.patch_embeddings.projection.weight

    def encode(self, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` for the prompts of ``questions``."""
        batch = self.tokenizer(
            [self.query(q) for q in questions], return_tensors="pt", padding=True
        )
        device = self._text_device()
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def pixel_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        values = torch.from_numpy(pixel_values(images, self.image_size))
        param = self._vision_param()
        return values.to(device=param.device, dtype=param.dtype)

    # -- model ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The projected image tokens the language model receives, (N, image_seq_length, hidden)."""
        return self.model.model.get_image_features(pixel_values=self.pixel_tensor(images)).pooler_output

    @torch.inference_mode()
    def first_step_logits(self, question: str, image: Image.Image) -> torch.Tensor:
        """Raw next-token logits at the last prompt position (before any logits processor)."""
        input_ids, attention_mask = self.encode([question])
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=self.pixel_tensor([image])
        )
        return out.logits[0, -1]

    @torch.inference_mode()
    def generate_ids(
        self, questions: Sequence[str], images: Sequence[Image.Image], max_new_tokens: int | None = None
    ) -> list[list[int]]:
        """Greedy new token ids per prompt (up to and including ``<|im_end|>`` when reached)."""
        from transformers import GenerationConfig

        if len(questions) != len(images):
            raise ValueError("one image per question")
        input_ids, attention_mask = self.encode(questions)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            min_new_tokens=1,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=self.pixel_tensor(images),
            generation_config=config,
        )
        new = out[:, input_ids.shape[1] :].tolist()
        result = []
        for ids in new:
            if self.eos_token_id in ids:
                ids = ids[: ids.index(self.eos_token_id) + 1]
            result.append(ids)
        return result

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Text before ``<|im_end|>``, special tokens kept (``<ref>``, ``<box>``), stripped."""
        ids = list(ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=False).strip()

    def answer(
        self, questions: Sequence[str], images: Sequence[Image.Image], max_new_tokens: int | None = None
    ) -> list[str]:
        return [self.decode_answer(ids) for ids in self.generate_ids(questions, images, max_new_tokens)]
