"""The converter on a tiny random checkpoint in MedRegA's original layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import InternVLModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from model.backends.medrega import load_engine
from model.backends.tiny import build_tiny_tokenizer
from model.convert import ConversionError, convert_checkpoint, map_tensor_name

D, HEADS, MLP, LAYERS = 32, 2, 64, 2  # vision
H, T_LAYERS = 48, 1  # language model


def original_config(vocab: int) -> dict:
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "downsample_ratio": 0.5,
        "dynamic_image_size": False,
        "use_thumbnail": False,
        "force_image_size": 448,
        "ps_version": "v1",
        "select_layer": -1,
        "template": "Hermes-2",
        "llm_config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": H, "intermediate_size": 96, "num_hidden_layers": T_LAYERS,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 5000000.0, "rope_scaling": None, "max_position_embeddings": 4096,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 4, "pad_token_id": 0,
            "max_length": 20, "top_k": 50, "temperature": 1.0,
        },
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": D,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": MLP,
            "hidden_act": "gelu", "layer_norm_eps": 1e-6, "patch_size": 14, "image_size": 448,
            "num_channels": 3, "qk_normalization": True, "qkv_bias": False, "use_flash_attn": True,
            "drop_path_rate": 0.0, "initializer_factor": 0.1,
        },
    }


def original_tensors(vocab: int, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    t = {
        "vision_model.embeddings.class_embedding": r(1, 1, D),
        "vision_model.embeddings.position_embedding": r(1, 1025, D),
        "vision_model.embeddings.patch_embedding.weight": r(D, 3, 14, 14, scale=0.05),
        "vision_model.embeddings.patch_embedding.bias": r(D),
    }
    for n in range(LAYERS):
        p = f"vision_model.encoder.layers.{n}."
        t |= {
            p + "attn.qkv.weight": r(3 * D, D), p + "attn.q_norm.weight": 1 + r(D), p + "attn.k_norm.weight": 1 + r(D),
            p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
            p + "mlp.fc1.weight": r(MLP, D), p + "mlp.fc1.bias": r(MLP), p + "mlp.fc2.weight": r(D, MLP), p + "mlp.fc2.bias": r(D),
            p + "norm1.weight": 1 + r(D), p + "norm2.weight": 1 + r(D), p + "ls1": r(D), p + "ls2": r(D),
        }
    t |= {
        "mlp1.0.weight": 1 + r(4 * D), "mlp1.0.bias": r(4 * D), "mlp1.1.weight": r(H, 4 * D), "mlp1.1.bias": r(H),
        "mlp1.3.weight": r(H, H), "mlp1.3.bias": r(H),
        "language_model.model.embed_tokens.weight": r(vocab, H), "language_model.model.norm.weight": 1 + r(H),
        "language_model.lm_head.weight": r(vocab, H),
    }
    for n in range(T_LAYERS):
        p = f"language_model.model.layers.{n}."
        t |= {
            p + "self_attn.q_proj.weight": r(H, H), p + "self_attn.k_proj.weight": r(24, H), p + "self_attn.v_proj.weight": r(24, H),
            p + "self_attn.o_proj.weight": r(H, H), p + "mlp.gate_proj.weight": r(96, H), p + "mlp.up_proj.weight": r(96, H),
            p + "mlp.down_proj.weight": r(H, 96), p + "input_layernorm.weight": 1 + r(H), p + "post_attention_layernorm.weight": 1 + r(H),
        }
    return t


def write_original(folder: Path, tensors: dict[str, torch.Tensor] | None = None, *, shards: int = 1) -> dict[str, torch.Tensor]:
    tokenizer = build_tiny_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(original_config(len(tokenizer))), encoding="utf-8")
    tensors = tensors if tensors is not None else original_tensors(len(tokenizer))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
    else:
        weight_map: dict[str, str] = {}
        for s in range(shards):
            part = {k: tensors[k] for k in names[s::shards]}
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, folder / fname)
            weight_map |= {k: fname for k in part}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def v1_features(original: dict[str, torch.Tensor], last_hidden: torch.Tensor) -> torch.Tensor:
    """InternVL-Chat-V1.2's extract_feature, written out independently (numpy indexing)."""
    x = last_hidden[0, 1:].reshape(32, 32, -1).numpy()  # [row, col, C]
    tokens = []
    for c2 in range(16):  # v1 keeps the column-major order of the merged 2x2 blocks
        for r2 in range(16):
            tokens.append(np.concatenate([x[2 * r2, 2 * c2], x[2 * r2, 2 * c2 + 1], x[2 * r2 + 1, 2 * c2], x[2 * r2 + 1, 2 * c2 + 1]]))
    h = torch.from_numpy(np.stack(tokens))[None].float()
    h = torch.nn.functional.layer_norm(h, (h.shape[-1],), original["mlp1.0.weight"].float(), original["mlp1.0.bias"].float())
    h = torch.nn.functional.linear(h, original["mlp1.1.weight"].float(), original["mlp1.1.bias"].float())
    h = torch.nn.functional.gelu(h)
    return torch.nn.functional.linear(h, original["mlp1.3.weight"].float(), original["mlp1.3.bias"].float())


def test_convert_maps_every_tensor_and_keeps_the_v1_shuffle(tmp_path: Path) -> None:
    src, dst = tmp_path / "original", tmp_path / "converted"
    original = write_original(src, shards=2)
    report = convert_checkpoint(src, dst, max_shard_bytes=200_000)
    assert report.source_tensors == len(original)
    assert report.native_tensors == len(original) + 2 * LAYERS  # qkv -> q, k, v
    assert report.shards > 1 and (dst / "model.safetensors.index.json").is_file()
    assert not (dst / ".incomplete").exists()
    config = json.loads((dst / "config.json").read_text())
    assert config["ps_version"] == "v1" and config["model_type"] == "internvl"
    assert config["text_config"]["rope_parameters"]["rope_theta"] == 5000000.0
    assert "max_length" not in config["text_config"] and "top_k" not in config["text_config"]
    assert config["vision_config"]["norm_type"] == "rms_norm" and config["vision_config"]["use_qk_norm"] is True
    assert config["image_token_id"] == build_tiny_tokenizer().convert_tokens_to_ids("<IMG_CONTEXT>")

    # The fused qkv is split row-wise.
    index = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.vision_tower.encoder.layer.1.attention.k_proj.weight"
    with safe_open(str(dst / index[name]), "pt") as f:
        assert torch.equal(f.get_tensor(name), original["vision_model.encoder.layers.1.attn.qkv.weight"][D : 2 * D])

    engine = load_engine(dst, device="cpu", dtype="float32")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    pixels = engine.pixel_tensor([image])
    with torch.inference_mode():
        hidden = engine.model.model.vision_tower(pixel_values=pixels).last_hidden_state
        expected = v1_features(original, hidden)
        got = engine.image_features([image])
        native_v2 = InternVLModel.pixel_shuffle  # transformers' own (v2), the class the v1 model extends
        shuffled = native_v2(engine.model.model, hidden[:, 1:].reshape(1, 32, 32, -1))
        v2 = engine.model.model.multi_modal_projector(shuffled.reshape(1, 256, -1))
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    assert not torch.allclose(got, v2, atol=1e-3), "v1 and v2 must differ on random weights"
    assert torch.allclose(got.sum(1), v2.sum(1), atol=1e-3)  # same tokens, other order


def test_dtype_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "bf16"
    write_original(src, original_tensors(len(build_tiny_tokenizer()), dtype=torch.bfloat16))
    report = convert_checkpoint(src, tmp_path / "out")
    assert report.dtype == "bfloat16" and report.shards == 1
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_unmapped_or_missing_tensors_are_refused(tmp_path: Path) -> None:
    tensors = original_tensors(len(build_tiny_tokenizer()))
    write_original(tmp_path / "extra", tensors | {"vision_model.encoder.layers.0.attn.rogue": torch.zeros(2)})
    with pytest.raises(ConversionError, match="rogue"):
        convert_checkpoint(tmp_path / "extra", tmp_path / "out1")
    assert not (tmp_path / "out1").exists()
    partial = dict(tensors)
    del partial["language_model.lm_head.weight"]
    write_original(tmp_path / "missing", partial)
    with pytest.raises(ConversionError, match="missing \\['lm_head.weight'\\]"):
        convert_checkpoint(tmp_path / "missing", tmp_path / "out2")
    wrong = dict(tensors)
    wrong["mlp1.1.weight"] = torch.zeros(H, 4 * D + 1)
    write_original(tmp_path / "wrong", wrong)
    with pytest.raises(ConversionError, match="mlp1.1.weight"):
        convert_checkpoint(tmp_path / "wrong", tmp_path / "out3")


def test_map_tensor_name_covers_the_layout() -> None:
    assert map_tensor_name("language_model.lm_head.weight")[0][0] == "lm_head.weight"
    assert [n for n, _ in map_tensor_name("vision_model.encoder.layers.7.attn.qkv.weight")] == [
        f"model.vision_tower.encoder.layer.7.attention.{p}_proj.weight" for p in "qkv"
    ]
    assert map_tensor_name("vision_model.encoder.layers.3.ls2")[0][0] == "model.vision_tower.encoder.layer.3.lambda_2"
    assert map_tensor_name("something.else") == []


def test_cli(tmp_path: Path) -> None:
    """``medrega-gateway model convert``: the Typer command around :func:`convert_checkpoint`."""
    from typer.testing import CliRunner

    from gateway.cli import app

    src, dst = tmp_path / "original", tmp_path / "dst"
    write_original(src)

    def convert(*args: str, code: int) -> str:
        result = CliRunner().invoke(app, ["model", "convert", *args])
        assert result.exit_code == code, result.output
        return result.stderr

    assert "wrote" in convert(str(src), str(dst), "--max-shard-gb", "0.0002", code=0).lower()
    assert len(list(dst.glob("model-*.safetensors"))) > 1  # --max-shard-gb reached the converter
    assert (dst / "model.safetensors.index.json").is_file()
    message = convert(str(src), str(dst), code=2)  # not empty, no --overwrite
    assert message.startswith("medrega-gateway: model convert: ") and "not empty" in message
    convert(str(src), str(dst), "--overwrite", code=0)
    assert (dst / "config.json").is_file() and not (dst / ".incomplete").exists()
    assert "config.json not found" in convert(str(tmp_path / "nowhere"), str(tmp_path / "x"), code=2)