"""The ``tiny`` backend: MedRegA's model class at toy size, random weights, CPU in seconds.

Same class (:class:`~model.internvl_v1.MedRegAForConditionalGeneration`, v1 pixel shuffle),
same 448x448 input and 256 image tokens, same template, generation and decoding as ``medrega``;
only the sizes (2 layers, hidden 64) and the tokenizer differ: a byte-level BPE trained
in-process (tokenizers library) on the prompt library, holding Yi's chat tokens at ids 0-5 and
InternVL's nine tokens last, as MedRegA's tokenizer does. Its answers are noise; it exists so the
whole path runs in tests. It never claims to be MedRegA.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..prompts import prompt_library
from ..template import MEDREGA_SPECIAL_TOKENS, YI_SPECIAL_TOKENS
from .base import EngineBackend, ModelIdentity

if TYPE_CHECKING:  # pragma: no cover
    from common.settings import ModelSettings

__all__ = ["TinyBackend", "build_tiny_tokenizer", "tiny_config"]

TINY_NAME = "tiny-random-internvl (test model, not MedRegA)"
_EXTRA_CORPUS = (
    "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>: No focal consolidation.",
    "<ref>胰腺癌</ref><box>[[661, 528, 743, 599]]</box>：胰尾部见一稍低密度肿块。",
    "Findings: The heart size is normal. Impression: No acute cardiopulmonary process.",
    "影像诊断：未见异常。影像结论：未见明显异常。",
)


@lru_cache(maxsize=1)
def build_tiny_tokenizer(vocab_size: int = 640) -> Any:
    """A deterministic byte-level BPE tokenizer with MedRegA's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(YI_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [p.template for p in prompt_library().values()] + list(_EXTRA_CORPUS)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(list(MEDREGA_SPECIAL_TOKENS), special_tokens=True)
    return fast


def tiny_config(vocab_size: int, image_token_id: int) -> Any:
    """InternVL-Chat-V1.2 topology at toy size (v1 shuffle, RMSNorm, QK-norm, Llama)."""
    from transformers import InternVLConfig

    return InternVLConfig(  # type: ignore[call-arg]  # ps_version: not a declared InternVLConfig field; PreTrainedConfig keeps it (config.json)
        vision_config={
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "use_qk_norm": True,
            "attention_bias": False,
            "norm_type": "rms_norm",
            "use_mean_pooling": True,
            "image_size": 448,
            "patch_size": 14,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0},
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        },
        downsample_ratio=0.5,
        image_token_id=image_token_id,
        image_seq_length=256,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
        ps_version="v1",
    )


class TinyBackend(EngineBackend):
    """A toy-size random model with MedRegA's whole inference path."""

    def __init__(self, seed: int = 0, *, max_new_tokens: int = 400, batch_size: int = 4, device: str = "cpu") -> None:
        import torch

        from ..internvl_v1 import MedRegAForConditionalGeneration
        from ..template import IMG_CONTEXT
        from .engine import InternVLEngine

        tokenizer = build_tiny_tokenizer()
        config = tiny_config(len(tokenizer), tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = MedRegAForConditionalGeneration(config)
        finally:
            torch.random.set_rng_state(generator_state)
        if device not in ("auto", "cpu"):
            # transformers types its decorated PreTrainedModel.to as unbound (the model as first argument)
            model = model.to(device)  # type: ignore[arg-type]  # see above
        self.engine = InternVLEngine(model, tokenizer, max_new_tokens=max_new_tokens)
        self.batch_size = batch_size
        self.identity = ModelIdentity(
            backend="tiny", name=TINY_NAME, version="1", weights_id=f"tiny-seed-{seed}"
        )

    @classmethod
    def from_settings(cls, settings: "ModelSettings") -> "TinyBackend":
        return cls(
            settings.tiny_seed,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            device=settings.device,
        )
