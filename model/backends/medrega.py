"""The ``medrega`` backend: the converted MedRegA checkpoint on GPU(s), offline.

``model.path`` is a folder written by ``medrega-gateway model convert`` (:mod:`model.convert`).
It is loaded once per worker process (:func:`model.backends.load_backend` caches it) with
transformers' native InternVL and MedRegA's v1 pixel shuffle (:mod:`model.internvl_v1`):
bfloat16 by default, ``device_map="auto"`` spreading the 40B parameters over every visible GPU,
optionally 8-bit (bitsandbytes). Nothing is downloaded: ``local_files_only``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import EngineBackend, ModelIdentity, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from common.settings import ModelSettings

    from .engine import InternVLEngine

__all__ = ["MedRegABackend", "HOW_TO_GET", "check_folder", "weights_digest", "load_engine"]

HOW_TO_GET = (
    "To get one: on a machine with internet access download the original checkpoint "
    "(`huggingface-cli download Luxuriant16/medrega --local-dir medrega-original`), copy that folder "
    "to this machine and run `medrega-gateway model convert medrega-original <model.path>`."
)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"{index} is not a valid safetensors index ({exc}). {HOW_TO_GET}") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelLoadError(
                f"{folder} is incomplete: weight shards missing: {', '.join(missing)}. {HOW_TO_GET}"
            )
        return [folder / n for n in names]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise ModelLoadError(f"{folder} has no weights (model.safetensors or its index). {HOW_TO_GET}")


def check_folder(path: str | Path) -> tuple[Path, dict[str, Any], list[Path]]:
    """Validate a converted folder; raise :class:`ModelLoadError` naming what is missing."""
    if not str(path):
        raise ModelLoadError(f"model.path is empty: it must name the converted MedRegA folder. {HOW_TO_GET}")
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"model.path {folder} is not a folder. {HOW_TO_GET}")
    if (folder / ".incomplete").exists():
        raise ModelLoadError(f"{folder}: a conversion into it did not finish; convert again. {HOW_TO_GET}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} is incomplete: config.json is missing. {HOW_TO_GET}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}). {HOW_TO_GET}") from None
    if config.get("model_type") == "internvl_chat":
        raise ModelLoadError(
            f"{folder} is MedRegA's original layout, not converted: run "
            f"`medrega-gateway model convert {folder} <new folder>` and point model.path there."
        )
    if config.get("model_type") != "internvl" or "ps_version" not in config:
        raise ModelLoadError(
            f"{folder}/config.json is not a checkpoint converted by medrega-gateway "
            f"(model_type {config.get('model_type')!r}, ps_version missing). {HOW_TO_GET}"
        )
    files = _weight_files(folder)
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise ModelLoadError(f"{folder} is incomplete: tokenizer.json is missing. {HOW_TO_GET}")
    return folder, config, files


def weights_digest(folder: Path, files: Sequence[Path]) -> str:
    """sha256 over config.json, the index and every shard's safetensors header (names, dtypes,
    shapes, offsets): cheap at start-up, and changes whenever the checkpoint's layout does."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        p = folder / name
        if p.is_file():
            h.update(name.encode())
            h.update(p.read_bytes())
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            h.update(f.name.encode())
            h.update(fh.read(n))
    return "sha256:" + h.hexdigest()


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _device_map(device: str) -> Any:
    import torch

    if device == "auto":
        return "auto" if torch.cuda.is_available() else {"": "cpu"}
    return {"": device}


def load_engine(
    path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "bfloat16",
    load_in_8bit: bool = False,
    max_new_tokens: int = 400,
) -> "InternVLEngine":
    """Load a converted folder (offline) into an :class:`~model.backends.engine.InternVLEngine`."""
    folder, _config, _files = check_folder(path)
    from transformers import AutoTokenizer

    from ..internvl_v1 import MedRegAForConditionalGeneration
    from .engine import InternVLEngine

    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(dtype),
        "device_map": _device_map(device),
        "local_files_only": True,
    }
    if load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ModelLoadError("model.load_in_8bit needs the bitsandbytes package (and a CUDA GPU)") from None
        from transformers import BitsAndBytesConfig

        # The vision tower and projector stay in dtype: int8 there costs accuracy for little memory.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"]
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = MedRegAForConditionalGeneration.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {folder}: {exc}. {HOW_TO_GET}") from exc
    return InternVLEngine(model, tokenizer, max_new_tokens=max_new_tokens)


class MedRegABackend(EngineBackend):
    """MedRegA itself."""

    def __init__(self, engine: "InternVLEngine", identity: ModelIdentity, batch_size: int = 4) -> None:
        self.engine = engine
        self.identity = identity
        self.batch_size = batch_size

    @classmethod
    def from_settings(cls, settings: "ModelSettings") -> "MedRegABackend":
        folder, config, files = check_folder(settings.path)
        engine = load_engine(
            folder,
            device=settings.device,
            dtype=settings.dtype,
            load_in_8bit=settings.load_in_8bit,
            max_new_tokens=settings.max_new_tokens,
        )
        identity = ModelIdentity(
            backend="medrega",
            name="MedRegA",
            version="InternVL-Chat-V1.2 fine-tune (Luxuriant16/medrega), "
            f"{'int8' if settings.load_in_8bit else settings.dtype}",
            weights_id=weights_digest(folder, files),
        )
        return cls(engine, identity, batch_size=settings.batch_size)
