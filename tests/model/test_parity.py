"""Parity with MedRegA's original inference code (../shared/medrega-parity, see its README).

The fixture's original-layout checkpoint is converted with OUR converter, loaded with OUR
``medrega`` loading code (CPU, float32) and every field of expected.json is compared with its
tolerance. Nothing here knows variant A's sizes: they come from the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PARITY = REPO.parent / "shared" / "medrega-parity"


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    if not (PARITY / "expected.json").is_file() or not (PARITY / "original" / "config.json").is_file():
        pytest.fail(
            f"the MedRegA parity fixture is missing: expected {PARITY}/expected.json and "
            f"{PARITY}/original/ (the shared folder beside the repository)"
        )
    return PARITY


@pytest.fixture(scope="module")
def expected(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def engine(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    import torch

    from model.backends.medrega import load_engine
    from model.convert import convert_checkpoint

    torch.set_num_threads(min(2, torch.get_num_threads()))
    dst = tmp_path_factory.mktemp("converted")
    report = convert_checkpoint(fixture_dir / "original", dst, overwrite=True)
    assert report.ps_version == "v1"
    return load_engine(dst, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def image(fixture_dir: Path, expected: dict) -> Image.Image:
    with Image.open(fixture_dir / expected["image"]["file"]) as im:
        im.load()
        return im.convert("RGB")


def _close(name: str, actual, expected_value, expected: dict) -> None:
    tol = expected["tolerances"]["numeric"][name]
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected_value, dtype=np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != {e.shape}"
    limit = tol["atol"] + tol["rtol"] * np.abs(e)
    worst = np.max(np.abs(a - e) - limit)
    assert worst <= 0, f"{name}: off by up to {np.max(np.abs(a - e)):.3g} (atol {tol['atol']}, rtol {tol['rtol']})"


def _stats(prefix: str, t: np.ndarray, section: dict, expected: dict) -> None:
    """Compare the statistics a section of expected.json holds (float64 over float32 values)."""
    flat = t.astype(np.float64).ravel()
    assert list(t.shape) == section["shape"], f"{prefix}.shape"
    assert str(t.dtype) == section["dtype"], f"{prefix}.dtype"
    values = {
        "sum": flat.sum(),
        "mean": flat.mean(),
        "abs_sum": np.abs(flat).sum(),
        "sumsq": (flat * flat).sum(),
        "min": flat.min(),
        "max": flat.max(),
        "first16": flat[:16],
        "strided": flat[:: section["strided_step"]][: len(section["strided"])],
    }
    for key, value in values.items():
        _close(f"{prefix}.{key}", value, section[key], expected)


def test_tolerance_helper_rejects_a_real_difference(expected: dict) -> None:
    with pytest.raises(AssertionError):
        _close("first_step_logits.all", [1.0, 2.0], [1.0, 2.001], expected)


def test_query_and_input_ids(engine, expected: dict) -> None:
    query = engine.query(expected["question"])
    assert query == expected["query"]
    input_ids, _ = engine.encode([expected["question"]])
    ids = input_ids[0].tolist()
    assert ids == expected["input_ids"]
    assert ids.count(engine.model.config.image_token_id) == expected["n_image_context_tokens"]
    for token, token_id in expected["special_token_ids"].items():
        assert engine.tokenizer.convert_tokens_to_ids(token) == token_id, token


def test_pixel_values(engine, image, expected: dict) -> None:
    pv = engine.pixel_tensor([image]).numpy()
    section = expected["pixel_values"]
    _stats("pixel_values", pv, section, expected)
    _close("pixel_values.channel_sums", pv.astype(np.float64).sum(axis=(0, 2, 3)), section["channel_sums"], expected)


def test_vit_embeds_follow_v1_shuffle(engine, image, expected: dict) -> None:
    feats = engine.image_features([image]).numpy()
    section = expected["vit_embeds"]
    _stats("vit_embeds", feats, section, expected)
    _close("vit_embeds.token_sums", feats[0].astype(np.float64).sum(axis=1), section["token_sums"], expected)


def test_first_step_logits(engine, image, expected: dict) -> None:
    logits = engine.first_step_logits(expected["question"], image).numpy()
    section = expected["first_step_logits"]
    order = np.argsort(-logits.astype(np.float64), kind="stable")[:10]
    assert order.tolist() == section["top10_ids"]
    _close("first_step_logits.top10_values", logits[order], section["top10_values"], expected)
    _close("first_step_logits.all", logits, section["all"], expected)


def test_greedy_generation(engine, image, expected: dict) -> None:
    greedy = expected["greedy"]
    n = expected["generation"]["max_new_tokens"]
    ids = engine.generate_ids([expected["question"]], [image], max_new_tokens=n)[0]
    assert ids == greedy["ids"]
    assert (engine.eos_token_id in ids) == greedy["stopped_at_im_end"]
    tok = engine.tokenizer
    assert tok.decode(ids, skip_special_tokens=False) == greedy["text"]
    assert tok.decode(ids, skip_special_tokens=True) == greedy["text_skip_special"]
    chat_response = tok.decode(ids, skip_special_tokens=True).split("<|im_end|>")[0].strip()
    assert chat_response == greedy["chat_response"]
    # What the backend hands to the parser: special tokens kept, cut at <|im_end|>.
    assert engine.decode_answer(ids) == greedy["text"].split("<|im_end|>")[0].strip()
