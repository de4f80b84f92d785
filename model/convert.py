"""MedRegA's original checkpoint -> a folder transformers' native InternVL class loads.

:func:`convert_checkpoint`; on the command line ``medrega-gateway model convert SRC DST``
(:func:`gateway.cli.commands.model_convert`).

SRC is MedRegA as published (``Luxuriant16/medrega``: ``InternVLChatModel`` config.json,
safetensors weights under the original parameter names, the Yi tokenizer with InternVL's nine
added tokens). DST gets:

* ``config.json``: an ``InternVLConfig`` (vision ``InternVLVisionConfig``, text ``LlamaConfig``)
  with ``"ps_version": "v1"`` recorded, which :mod:`model.internvl_v1` honours, and a
  ``medrega_gateway`` block saying where it came from;
* ``model*.safetensors`` (+ index when sharded) under the native parameter names, in the source
  dtype; the fused vision ``qkv`` is split into ``q_proj``/``k_proj``/``v_proj``;
* the tokenizer files (and a ``tokenizer.json`` made from a SentencePiece ``tokenizer.model``
  when the source has none) and a ``generation_config.json`` whose stop token is ``<|im_end|>``.

Weights stream tensor by tensor through ``safetensors.safe_open``: at most one output shard
(``max_shard_bytes``) is held in memory, never the whole 80 GB. Every source tensor must map to
exactly one native parameter (or three, for ``qkv``) and every native parameter must be produced
with the shape the native model expects, otherwise :class:`ConversionError` names the offenders
and nothing is left at DST that a loader would mistake for a complete checkpoint.

The mapping is the one given by the parity fixture's README (``../shared/medrega-parity``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .template import IM_END, IM_START, IMG_CONTEXT, MEDREGA_SPECIAL_TOKENS

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ConversionError",
    "ConversionReport",
    "convert_checkpoint",
    "convert_config",
    "map_tensor_name",
    "DEFAULT_MAX_SHARD_BYTES",
]

#: Tokenizer files copied verbatim when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
)
DEFAULT_MAX_SHARD_BYTES = 4 * 1024**3
PS_VERSION = "v1"


class ConversionError(RuntimeError):
    """The source is not a MedRegA (InternVL-Chat-V1.2) checkpoint we can convert faithfully."""


# -- config ---------------------------------------------------------------------------------

_LLAMA_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "tie_word_embeddings",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "head_dim",
    "pretraining_tp",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_VISION_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "patch_size",
    "num_channels",
    "initializer_range",
)


def _text_config(llm: dict[str, Any]) -> dict[str, Any]:
    architectures = llm.get("architectures") or []
    if llm.get("model_type") != "llama" and "LlamaForCausalLM" not in architectures:
        raise ConversionError(
            f"llm_config is {llm.get('model_type')!r} {architectures}: only Llama language models "
            "(MedRegA's Nous-Hermes-2-Yi-34B) are supported"
        )
    text = {k: llm[k] for k in _LLAMA_KEYS if k in llm and llm[k] is not None}
    text["model_type"] = "llama"
    rope: dict[str, Any] = dict(llm.get("rope_scaling") or {})
    if "type" in rope:  # 4.x spelling
        rope["rope_type"] = rope.pop("type")
    rope.setdefault("rope_type", "default")
    rope["rope_theta"] = float(llm.get("rope_theta", 10000.0))
    text["rope_parameters"] = rope
    return text


def _vision_config(original: dict[str, Any]) -> dict[str, Any]:
    vc = original["vision_config"]
    vision = {k: vc[k] for k in _VISION_KEYS if k in vc and vc[k] is not None}
    vision["image_size"] = original.get("force_image_size") or vc["image_size"]
    vision["use_qk_norm"] = bool(vc.get("qk_normalization", False))
    vision["attention_bias"] = bool(vc.get("qkv_bias", False))
    # InternViT-6B uses RMSNorm and has no field for it; later InternViTs say so in norm_type.
    vision["norm_type"] = vc.get("norm_type", "rms_norm")
    # InternViT has no norm after the last layer: the native class's final norm is then identity.
    vision["use_mean_pooling"] = True
    vision["model_type"] = "internvl_vision"
    return vision


def convert_config(original: dict[str, Any], image_token_id: int) -> dict[str, Any]:
    """Translate an ``InternVLChatConfig`` dict into ``InternVLConfig`` keyword arguments."""
    if "vision_config" not in original or "llm_config" not in original:
        raise ConversionError("config.json has no vision_config/llm_config: not an InternVL-Chat checkpoint")
    if original.get("dynamic_image_size") or original.get("use_thumbnail"):
        raise ConversionError(
            "dynamic_image_size/use_thumbnail are set: this is not an InternVL-Chat-V1.2 (MedRegA) "
            "checkpoint, which uses one 448x448 tile"
        )
    ps_version = original.get("ps_version", "v1")
    if ps_version not in ("v1", "v2"):
        raise ConversionError(f"unknown ps_version {ps_version!r}")
    select_layer = int(original.get("select_layer", -1))
    vision = _vision_config(original)
    ratio = float(original.get("downsample_ratio", 0.5))
    image_size = vision["image_size"]
    patch = vision["patch_size"]
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    image_seq_length = int((image_size // patch) ** 2 * ratio**2)
    return {
        "vision_config": vision,
        "text_config": _text_config(original["llm_config"]),
        "downsample_ratio": ratio,
        "vision_feature_layer": select_layer,
        "vision_feature_select_strategy": "default",  # CLS token dropped
        "projector_hidden_act": "gelu",
        "image_token_id": int(image_token_id),
        "image_seq_length": image_seq_length,
        "tie_word_embeddings": bool(original["llm_config"].get("tie_word_embeddings", False)),
        "ps_version": ps_version,
        "template": original.get("template", "Hermes-2"),
    }


# -- tensor names -----------------------------------------------------------------------------

_V = "model.vision_tower."
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^vision_model\.embeddings\.class_embedding$"), _V + "embeddings.cls_token"),
    (re.compile(r"^vision_model\.embeddings\.position_embedding$"), _V + "embeddings.position_embeddings"),
    (
        re.compile(r"^vision_model\.embeddings\.patch_embedding\.(weight|bias)$"),
        _V + r"embeddings.patch_embeddings.projection.\1",
    ),
    (
        re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.(weight|bias)$"),
        _V + r"encoder.layer.\1.attention.\2.\3",
    ),
    (
        re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)$"),
        _V + r"encoder.layer.\1.attention.projection_layer.\2",
    ),
    (
        re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$"),
        _V + r"encoder.layer.\1.mlp.\2.\3",
    ),
    (
        re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)$"),
        _V + r"encoder.layer.\1.layernorm_before.\2",
    ),
    (
        re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)$"),
        _V + r"encoder.layer.\1.layernorm_after.\2",
    ),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.ls1$"), _V + r"encoder.layer.\1.lambda_1"),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.ls2$"), _V + r"encoder.layer.\1.lambda_2"),
    (re.compile(r"^mlp1\.0\.(weight|bias)$"), r"model.multi_modal_projector.layer_norm.\1"),
    (re.compile(r"^mlp1\.1\.(weight|bias)$"), r"model.multi_modal_projector.linear_1.\1"),
    (re.compile(r"^mlp1\.3\.(weight|bias)$"), r"model.multi_modal_projector.linear_2.\1"),
    (re.compile(r"^language_model\.model\.(.+)$"), r"model.language_model.\1"),
    (re.compile(r"^language_model\.lm_head\.weight$"), "lm_head.weight"),
]
_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")


def map_tensor_name(name: str) -> list[tuple[str, Callable[["torch.Tensor"], "torch.Tensor"]]]:
    """Native name(s) of one original tensor, each with the function that makes its value.

    Returns an empty list when the name is unknown (the caller reports it).
    """
    m = _QKV.match(name)
    if m:
        layer, kind = m.groups()

        def part(i: int) -> Callable[["torch.Tensor"], "torch.Tensor"]:
            def take(t: "torch.Tensor") -> "torch.Tensor":
                if t.shape[0] % 3:
                    raise ConversionError(f"{name}: first dimension {t.shape[0]} is not 3 x hidden")
                d = t.shape[0] // 3
                return t[i * d : (i + 1) * d].clone()

            return take

        base = f"{_V}encoder.layer.{layer}.attention."
        return [(f"{base}{p}_proj.{kind}", part(i)) for i, p in enumerate("qkv")]
    for pattern, replacement in _RULES:
        if pattern.match(name):
            return [(pattern.sub(replacement, name), lambda t: t)]
    return []


# -- files ------------------------------------------------------------------------------------


def _source_weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (src / f).is_file()]
        if missing:
            raise ConversionError(f"{src}: shards listed in the index are missing: {', '.join(missing)}")
        return [src / f for f in files]
    single = src / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(p.name for p in src.glob("*.safetensors"))
    if found:
        return [src / f for f in found]
    if any(src.glob("*.bin")):
        raise ConversionError(
            f"{src}: only PyTorch .bin weights found; convert needs safetensors (streamed, never "
            "unpickled). Download the safetensors revision of Luxuriant16/medrega."
        )
    raise ConversionError(f"{src}: no *.safetensors weights found")


def _special_token_ids(src: Path) -> dict[str, int]:
    """Ids of the chat and image tokens, read from the tokenizer files (no tokenizer loaded)."""
    ids: dict[str, int] = {}
    tc = src / "tokenizer_config.json"
    if tc.is_file():
        for key, entry in (json.loads(tc.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}).items():
            ids.setdefault(entry["content"], int(key))
    at = src / "added_tokens.json"
    if at.is_file():
        for content, key in json.loads(at.read_text(encoding="utf-8")).items():
            ids.setdefault(content, int(key))
    tj = src / "tokenizer.json"
    if tj.is_file():
        for entry in json.loads(tj.read_text(encoding="utf-8")).get("added_tokens") or []:
            ids.setdefault(entry["content"], int(entry["id"]))
    return ids


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_checkpoint` did."""

    dst: Path
    source_tensors: int
    native_tensors: int
    shards: int
    dtype: str
    ps_version: str


def _expected_native_shapes(config_kwargs: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], Any]:
    """Parameter names and shapes of the native model, built on the meta device (no memory)."""
    import torch
    from transformers import InternVLConfig

    from .internvl_v1 import MedRegAForConditionalGeneration

    config = InternVLConfig(**config_kwargs)
    with torch.device("meta"):
        model = MedRegAForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, config


def _iter_source_tensors(files: list[Path]) -> Iterator[tuple[str, "torch.Tensor"]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _source_names(files: list[Path]) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names.extend(f.keys())
    return names


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _convert_tokenizer(src: Path, dst: Path) -> Any:
    """Copy the tokenizer files; make tokenizer.json when the source only has SentencePiece."""
    copied = False
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied = True
    if not copied:
        raise ConversionError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(dst), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds here
        raise ConversionError(
            f"the tokenizer in {src} cannot be loaded ({type(exc).__name__}: {exc}); a SentencePiece "
            "tokenizer.model needs the 'sentencepiece' and 'protobuf' packages on the machine that "
            "converts (the converted folder then carries tokenizer.json and needs neither)"
        ) from exc
    if not (dst / "tokenizer.json").is_file():
        tokenizer.save_pretrained(str(dst))
    return tokenizer


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> ConversionReport:
    """Convert MedRegA's original checkpoint folder ``src`` into a native folder ``dst``."""
    from safetensors.torch import save_file

    say = log or (lambda _msg: None)
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: config.json not found (expected MedRegA's original checkpoint folder)")
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise ConversionError(f"{dst} exists and is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(dst)
    original = json.loads((src / "config.json").read_text(encoding="utf-8"))
    files = _source_weight_files(src)

    token_ids = _special_token_ids(src)
    missing_tokens = [t for t in MEDREGA_SPECIAL_TOKENS + (IM_START, IM_END) if t not in token_ids]
    if missing_tokens:
        raise ConversionError(f"{src}: the tokenizer lacks MedRegA's tokens {missing_tokens}")
    config_kwargs = convert_config(original, token_ids[IMG_CONTEXT])

    # Plan: every source tensor maps, every native parameter is produced exactly once.
    expected, config = _expected_native_shapes(config_kwargs)
    names = _source_names(files)
    unmapped = [n for n in names if not map_tensor_name(n)]
    if unmapped:
        raise ConversionError(f"{len(unmapped)} source tensors have no native name: {unmapped[:10]}")
    produced = [native for n in names for native, _ in map_tensor_name(n)]
    duplicates = sorted(p for p, n in Counter(produced).items() if n > 1)
    unexpected = sorted(set(produced) - set(expected))
    missing = sorted(set(expected) - set(produced))
    if duplicates or unexpected or missing:
        raise ConversionError(
            "the checkpoint does not match the native model: "
            f"missing {missing[:10]}, unexpected {unexpected[:10]}, duplicated {duplicates[:10]}"
        )

    dst.mkdir(parents=True, exist_ok=True)
    partial = dst / ".incomplete"
    partial.write_text("conversion in progress\n", encoding="utf-8")
    tokenizer = _convert_tokenizer(src, dst)
    if tokenizer.convert_tokens_to_ids(IMG_CONTEXT) != config_kwargs["image_token_id"]:
        raise ConversionError("the loaded tokenizer disagrees with its files about the <IMG_CONTEXT> id")

    # Stream: one shard in memory at a time.
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0
    shard_files: list[str] = []
    weight_map: dict[str, str] = {}
    total_bytes = 0
    dtypes: set[torch.dtype] = set()

    def flush() -> None:
        nonlocal shard, shard_bytes
        if not shard:
            return
        name = f"model-{len(shard_files) + 1:05d}.safetensors"
        save_file(shard, str(dst / name), metadata={"format": "pt"})
        shard_files.append(name)
        for key in shard:
            weight_map[key] = name
        say(f"wrote {name} ({shard_bytes / 1e9:.2f} GB, {len(shard)} tensors)")
        shard, shard_bytes = {}, 0

    for name, tensor in _iter_source_tensors(files):
        for native, make in map_tensor_name(name):
            value = make(tensor).contiguous()
            if tuple(value.shape) != expected[native]:
                raise ConversionError(
                    f"{name} -> {native}: shape {tuple(value.shape)}, native model expects {expected[native]}"
                )
            size = value.numel() * value.element_size()
            if shard and shard_bytes + size > max_shard_bytes:
                flush()
            shard[native] = value
            shard_bytes += size
            total_bytes += size
            dtypes.add(value.dtype)
        del tensor
    flush()

    if len(shard_files) == 1:
        (dst / shard_files[0]).rename(dst / "model.safetensors")
    else:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    dtype = str(next(iter(dtypes))).removeprefix("torch.") if len(dtypes) == 1 else "float32"
    config.dtype = dtype
    config.architectures = ["InternVLForConditionalGeneration"]
    config.medrega_gateway = {
        "converted_from": "InternVLChatModel (MedRegA original layout)",
        "source_config_sha256": _digest([src / "config.json"]),
        "source_weight_files": [p.name for p in files],
        "source_tensors": len(names),
    }
    config.save_pretrained(str(dst))
    _write_generation_config(dst, token_ids)
    partial.unlink()
    report = ConversionReport(dst, len(names), len(produced), len(shard_files), dtype, config_kwargs["ps_version"])
    say(f"converted {report.source_tensors} tensors into {report.native_tensors} ({report.shards} shard(s), {dtype})")
    return report


def _write_generation_config(dst: Path, token_ids: dict[str, int]) -> None:
    """MedRegA's demo generation settings; the worker passes them explicitly as well."""
    gen = {
        "eos_token_id": token_ids[IM_END],
        "pad_token_id": token_ids.get("<unk>", 0),
        "do_sample": False,
        "num_beams": 1,
        "min_new_tokens": 1,
        "max_new_tokens": 400,
    }
    if "<|startoftext|>" in token_ids:
        gen["bos_token_id"] = token_ids["<|startoftext|>"]
    (dst / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
