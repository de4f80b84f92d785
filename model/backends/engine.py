"""Prompt -> tokens -> InternVL generate -> text, shared by the ``medrega`` and ``tiny`` backends.

Faithful to InternVL-Chat-V1.2's ``chat()`` (the path MedRegA's demo uses): Hermes-2 template,
``<image>`` expanded to ``image_seq_length`` ``<IMG_CONTEXT>`` tokens, one 448x448 tile per image,
greedy decoding with one beam, at least one and at most ``max_new_tokens`` new tokens, stop at
``<|im_end|>``. Unlike ``chat()``, which encodes the image again for every question, the vision
tower runs once per distinct image and its features serve every prompt about that image
(:meth:`InternVLEngine.generate_ids`); prompts of several images share a batch, ordered by length. Unlike ``chat()``, answers are decoded with special tokens kept, so ``<ref>`` and
``<box>`` reach the parser; the text before ``<|im_end|>`` is returned, stripped.

Imports torch/transformers: only imported by a backend that loads a model.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from ..pixel_input import pixel_values
from ..template import IM_END, IMG_CONTEXT, build_query

__all__ = ["InternVLEngine"]


class InternVLEngine:
    """A loaded native InternVL model (v1 pixel shuffle aware) and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int, feature_cache_size: int = 32) -> None:
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
        #: Images encoded by the vision tower since the engine was made (benchmarks, tests).
        self.vit_images = 0
        #: Image features kept for images still alive: id -> (weak reference, features).
        self._feature_cache: OrderedDict[int, tuple[weakref.ref[Image.Image], torch.Tensor]] = OrderedDict()
        self.feature_cache_size = feature_cache_size

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
        """The projected image tokens the language model receives, (N, image_seq_length, hidden).

        The only place the vision tower runs: one forward pass over ``images``;
        :attr:`vit_images` counts the images it encoded.
        """
        features = self.model.model.get_image_features(pixel_values=self.pixel_tensor(images)).pooler_output
        self.vit_images += len(images)
        return features

    def _encoded(self, features: torch.Tensor) -> dict[str, Any]:
        """``features`` as transformers' pre-encoded multimodal input (one row per prompt)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"image": BaseModelOutputWithPooling(pooler_output=features.to(self._text_device()))}

    @torch.inference_mode()
    def first_step_logits(self, question: str, image: Image.Image) -> torch.Tensor:
        """Raw next-token logits at the last prompt position (before any logits processor)."""
        input_ids, attention_mask = self.encode([question])
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_encoder_outputs=self._encoded(self.image_features([image])),
        )
        return out.logits[0, -1]

    @torch.inference_mode()
    def generate_from_features(
        self, questions: Sequence[str], features: torch.Tensor, max_new_tokens: int | None = None
    ) -> list[list[int]]:
        """Greedy new token ids per prompt; ``features[i]`` are the image tokens of ``questions[i]``.

        Up to and including ``<|im_end|>`` when reached. The features go to ``generate`` as
        pre-encoded multimodal outputs, so the vision tower does not run again here.
        """
        from transformers import GenerationConfig

        if len(questions) != features.shape[0]:
            raise ValueError("one row of image features per question")
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
            mm_encoder_outputs=self._encoded(features),
            generation_config=config,
        )
        new = out[:, input_ids.shape[1] :].tolist()
        result = []
        for ids in new:
            if self.eos_token_id in ids:
                ids = ids[: ids.index(self.eos_token_id) + 1]
            result.append(ids)
        return result

    def _features_of(self, images: Sequence[Image.Image], step: int) -> torch.Tensor:
        """Features of distinct ``images``: from the cache, the others encoded ``step`` at a time."""
        cached = [self._cached(image) for image in images]
        missing = [image for image, f in zip(images, cached) if f is None]
        fresh = [self.image_features(missing[i : i + step]) for i in range(0, len(missing), step)]
        new = iter(torch.cat(fresh)) if fresh else iter(())
        rows = []
        for image, f in zip(images, cached):
            if f is None:
                f = next(new)
                self._remember(image, f)
            rows.append(f)
        return torch.stack(rows)

    def clear_feature_cache(self) -> None:
        """Forget every kept image feature (benchmarks measure a study from a cold start)."""
        self._feature_cache.clear()

    def _cached(self, image: Image.Image) -> torch.Tensor | None:
        entry = self._feature_cache.get(id(image))
        if entry is None or entry[0]() is not image:
            return None
        self._feature_cache.move_to_end(id(image))
        return entry[1]

    def _remember(self, image: Image.Image, features: torch.Tensor) -> None:
        """Keep ``features`` while ``image`` lives (a weak reference drops them with it), at most
        :attr:`feature_cache_size` images, the least recently used dropped first."""
        key = id(image)

        def forget(ref: "weakref.ref[Image.Image]", key: int = key) -> None:
            entry = self._feature_cache.get(key)
            if entry is not None and entry[0] is ref:
                del self._feature_cache[key]

        self._feature_cache[key] = (weakref.ref(image, forget), features)
        while len(self._feature_cache) > self.feature_cache_size:
            self._feature_cache.popitem(last=False)

    def prompt_lengths(self, questions: Sequence[str]) -> list[int]:
        """Number of tokens of each full prompt (image tokens included), unpadded."""
        return [len(ids) for ids in self.tokenizer([self.query(q) for q in questions])["input_ids"]]

    def generate_ids(
        self,
        questions: Sequence[str],
        images: Sequence[Image.Image],
        max_new_tokens: int | None = None,
        *,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """Greedy new token ids per (question, image), in the order given; ``progress(done,
        total)`` after each batch.

        The schedule: the vision tower encodes each distinct image once (images are the same
        when they are the same object, as all the prompts of one prepared image are), in
        batches of ``batch_size`` images, and keeps its features while the image object lives
        (a later call about the same image, such as a follow-up question, reuses them); the prompts, whatever their image, are ordered by
        prompt length (so a batch pads little) and generated ``batch_size`` at a time (all at
        once when ``batch_size`` is None), each with its image's features.
        """
        if len(questions) != len(images):
            raise ValueError("one image per question")
        if not questions:
            return []
        step = batch_size or len(questions)
        slot: dict[int, int] = {}
        distinct: list[Image.Image] = []
        which = []
        for image in images:
            if id(image) not in slot:
                slot[id(image)] = len(distinct)
                distinct.append(image)
            which.append(slot[id(image)])
        features = self._features_of(distinct, step)
        lengths = self.prompt_lengths(questions)
        order = sorted(range(len(questions)), key=lambda i: (lengths[i], i))
        result: list[list[int]] = [[] for _ in questions]
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            rows = features[torch.tensor([which[i] for i in chunk], device=features.device)]
            for i, ids in zip(chunk, self.generate_from_features([questions[i] for i in chunk], rows, max_new_tokens)):
                result[i] = ids
            if progress is not None:
                progress(min(start + step, len(order)), len(order))
        return result

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Text before ``<|im_end|>``, special tokens kept (``<ref>``, ``<box>``), stripped."""
        ids = list(ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=False).strip()

    def answer(
        self,
        questions: Sequence[str],
        images: Sequence[Image.Image],
        max_new_tokens: int | None = None,
        *,
        batch_size: int | None = None,
    ) -> list[str]:
        ids = self.generate_ids(questions, images, max_new_tokens, batch_size=batch_size)
        return [self.decode_answer(i) for i in ids]
