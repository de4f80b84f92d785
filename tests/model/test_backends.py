"""Backends: tiny (whole path on CPU), replay, medrega loading errors, per-process cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.settings import ModelSettings
from model.backends import GenerationRequest, ModelLoadError, clear_cache, load_backend
from model.backends.base import EngineBackend
from model.parse import parse_answer
from model.plans import plan_for
from model.template import build_query

REPO = Path(__file__).resolve().parents[2]
PARITY = REPO.parent / "shared" / "medrega-parity"


def test_model_package_does_not_import_transformers_or_torch() -> None:
    code = (
        "import sys\n"
        "import model, model.backends, model.analysis, model.parse, model.imaging, model.selection, "
        "model.plans, model.prompts, model.geometry, model.convert, model.template, model.pixel_input\n"
        "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_template_and_image_token_expansion() -> None:
    q = build_query("What is this? <image>\nmore", 4)
    assert q == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n"
        "What is this? <img><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT></img>\nmore"
        "<|im_end|><|im_start|>assistant\n"
    )
    assert build_query("no placeholder", 1).count("<img><IMG_CONTEXT></img>\nno placeholder") == 1
    assert build_query("<image> twice <image>", 1).count("<image>") == 1  # only the first is expanded


@pytest.fixture(scope="module")
def tiny():
    clear_cache()
    return load_backend(ModelSettings(backend="tiny", device="cpu", max_new_tokens=8, batch_size=4, tiny_seed=3))


def test_tiny_identity_and_cache(tiny) -> None:
    assert tiny.identity.backend == "tiny" and tiny.identity.is_test_model
    assert "MedRegA" not in tiny.identity.name.replace("not MedRegA", "")
    assert tiny.identity.weights_id == "tiny-seed-3"
    same = load_backend(ModelSettings(backend="tiny", device="cpu", max_new_tokens=8, batch_size=4, tiny_seed=3))
    assert same is tiny


def test_tiny_tokenizer_has_medrega_special_tokens(tiny) -> None:
    tok = tiny.engine.tokenizer
    ids = tok.convert_tokens_to_ids(["<unk>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>"])
    assert ids == [0, 1, 2, 3, 4, 5]
    nine = tok.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"])
    assert nine == list(range(len(tok) - 9, len(tok)))
    # Chinese and special tokens survive a round trip, as MedRegA's answers need.
    text = "<ref>胰腺癌</ref><box>[[661, 528, 743, 599]]</box>：胰尾部"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=False) == text
    assert tok(text)["input_ids"][0] != tok.bos_token_id  # no BOS, like Yi


def test_tiny_whole_path(tiny) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    prompts = plan_for("DX", "CHEST")
    input_ids, mask = tiny.engine.encode([p.question for p in prompts])
    image_id = tiny.engine.model.config.image_token_id
    assert (input_ids == image_id).sum(dim=1).tolist() == [256] * len(prompts)
    assert mask[:, -1].all() and not mask[:, 0].all()  # left padding
    answers = tiny.generate([GenerationRequest(image, p.question, p.language) for p in prompts])
    assert len(answers) == len(prompts) and all(isinstance(a, str) for a in answers)
    for a in answers:
        parse_answer(a)
    # batched generation answers as one-by-one generation does
    single = [tiny.generate([GenerationRequest(image, p.question, p.language)])[0] for p in prompts[:2]]
    assert single == answers[:2]


def test_tiny_is_deterministic_per_seed(tiny) -> None:
    import torch

    from model.backends.tiny import TinyBackend

    other = TinyBackend(seed=3, max_new_tokens=8)
    third = TinyBackend(seed=4, max_new_tokens=8)
    a = tiny.engine.model.state_dict()["lm_head.weight"]
    assert torch.equal(a, other.engine.model.state_dict()["lm_head.weight"])
    assert not torch.equal(a, third.engine.model.state_dict()["lm_head.weight"])


def test_replay(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    lines = [
        {"answer": "uid-specific", "sop_instance_uid": "1.2.3", "language": "en"},
        {"answer": "grounded en", "language": "en", "prompt_contains": "report phrase grounding"},
        {"answer": "中文", "language": "zh"},
        {"answer": "fallback en", "language": "en"},
    ]
    path.write_text("# recorded\n\n" + "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    backend = load_backend(ModelSettings(backend="replay", path=str(path)))
    assert backend.identity.backend == "replay" and "not a live model" in backend.identity.name
    import hashlib

    assert backend.identity.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    im = Image.new("RGB", (4, 4))
    grounded = plan_for("DX", "CHEST")[1].question
    got = backend.generate([
        GenerationRequest(im, grounded, "en", sop_instance_uid="1.2.3"),
        GenerationRequest(im, grounded, "en", sop_instance_uid="9"),
        GenerationRequest(im, "anything", "zh"),
        GenerationRequest(im, "anything", "en"),
    ])
    assert got == ["uid-specific", "grounded en", "中文", "fallback en"]
    only_zh = tmp_path / "zh.jsonl"
    only_zh.write_text(json.dumps({"answer": "x", "language": "zh"}) + "\n")
    assert load_backend(ModelSettings(backend="replay", path=str(only_zh))).generate([GenerationRequest(im, "q", "en")]) == [""]


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json", "not JSON"), ('{"language": "en"}', "answer"), ('{"answer": "a", "lang": "en"}', "unknown keys"),
     ('{"answer": "a", "language": "fr"}', "language")],
)
def test_replay_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match=message):
        load_backend(ModelSettings(backend="replay", path=str(path)))
    with pytest.raises(ModelLoadError, match="not found"):
        load_backend(ModelSettings(backend="replay", path=str(tmp_path / "none.jsonl")))


def test_medrega_load_errors_name_what_is_missing(tmp_path: Path) -> None:
    def error(path: str) -> str:
        with pytest.raises(ModelLoadError) as info:
            load_backend(ModelSettings(backend="medrega", path=path, device="cpu", dtype="float32"))
        return str(info.value)

    assert "model.path is empty" in error("")
    message = error(str(tmp_path / "absent"))
    assert "Luxuriant16/medrega" in message and "medrega-gateway model convert" in message
    folder = tmp_path / "partial"
    folder.mkdir()
    assert "config.json is missing" in error(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "internvl", "ps_version": "v1"}))
    assert "no weights" in error(str(folder))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert "model-00002-of-00002.safetensors" in error(str(folder))
    if (PARITY / "original" / "config.json").is_file():
        assert "not converted" in error(str(PARITY / "original"))


def test_medrega_backend_on_the_converted_fixture(tmp_path: Path) -> None:
    if not (PARITY / "original").is_dir():
        pytest.fail(f"the parity fixture is missing: {PARITY}")
    from model.convert import convert_checkpoint

    convert_checkpoint(PARITY / "original", tmp_path / "medrega")
    settings = ModelSettings(backend="medrega", path=str(tmp_path / "medrega"), device="cpu", dtype="float32", max_new_tokens=5, batch_size=2)
    backend = load_backend(settings)
    assert backend.identity.backend == "medrega" and backend.identity.name == "MedRegA"
    assert backend.identity.weights_id.startswith("sha256:")
    with Image.open(PARITY / "image.png") as im:
        image = im.convert("RGB")
    expected = json.loads((PARITY / "expected.json").read_text())
    answers = backend.generate([GenerationRequest(image, expected["question"], "en")] * 3)
    assert isinstance(backend, EngineBackend)
    first5 = backend.engine.tokenizer.decode(expected["greedy"]["ids"][:5], skip_special_tokens=False).strip()
    assert answers == [first5] * 3


def _pictures(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (120 + 40 * i, 160, 3), dtype=np.uint8)) for i in range(n)]


def test_engine_encodes_each_image_once_and_batches_across_images(tiny, monkeypatch) -> None:
    """Issue 14: the vision tower runs once per image, the prompts of all images are batched
    together ordered by prompt length, and the greedy ids equal one-prompt-at-a-time generation
    with the image encoded for that prompt alone (float32)."""
    engine = tiny.engine
    pictures = _pictures(3)
    chest, abdomen = plan_for("DX", "CHEST"), plan_for("CT", "ABDOMEN")
    pairs = [(p.question, pictures[0]) for p in chest] + [
        (p.question, picture) for picture in pictures[1:] for p in abdomen
    ]
    questions, images = [q for q, _ in pairs], [i for _, i in pairs]
    batches: list[list[str]] = []
    original = engine.generate_from_features

    def recording(qs, features, max_new_tokens=None):
        batches.append(list(qs))
        return original(qs, features, max_new_tokens)

    monkeypatch.setattr(engine, "generate_from_features", recording)
    before = engine.vit_images
    batched = engine.generate_ids(questions, images, 6, batch_size=4)
    assert engine.vit_images - before == 3  # one encoding per image, not per prompt
    assert [len(b) for b in batches] == [4] * (len(pairs) // 4) + ([len(pairs) % 4] if len(pairs) % 4 else [])
    lengths = dict(zip(questions, engine.prompt_lengths(questions)))
    flat = [lengths[q] for b in batches for q in b]
    assert flat == sorted(flat)  # ordered by prompt length across the whole study
    owners = {q: {id(i) for q2, i in pairs if q2 == q} for q in questions}
    assert any(len(set().union(*(owners[q] for q in b))) > 1 for b in batches)  # batches span images
    monkeypatch.undo()
    # the same image objects again (a follow-up round): their features are reused
    again = engine.generate_ids(questions[:2], images[:2], 6)
    assert engine.vit_images - before == 3 and again == batched[:2]
    single = []
    for q, im in pairs:
        start = engine.vit_images
        single.append(engine.generate_ids([q], [im.copy()], 6)[0])  # a new object: encoded alone
        assert engine.vit_images == start + 1
    assert batched == single
    assert engine.answer(questions, images, 6, batch_size=4) == [engine.decode_answer(i) for i in single]


def test_engine_forgets_features_with_their_image(tiny) -> None:
    import gc

    engine = tiny.engine
    picture = _pictures(1, seed=5)[0]
    engine.generate_ids(["q"], [picture], 1)
    assert id(picture) in engine._feature_cache
    key = id(picture)
    del picture
    gc.collect()
    assert key not in engine._feature_cache
    size, engine.feature_cache_size = engine.feature_cache_size, 2
    try:
        kept = _pictures(3, seed=6)
        engine.generate_ids(["q"] * 3, kept, 1)
        assert len(engine._feature_cache) == 2 and id(kept[0]) not in engine._feature_cache
    finally:
        engine.feature_cache_size = size


def test_engine_backend_generates_a_study_in_one_schedule(tiny) -> None:
    """EngineBackend.generate hands all requests to one schedule: images shared by object."""
    pictures = _pictures(2, seed=1)
    prompts = plan_for("DX", "CHEST")
    requests = [GenerationRequest(im, p.question, p.language) for im in pictures for p in prompts]
    before = tiny.engine.vit_images
    answers = tiny.generate(requests)
    assert tiny.engine.vit_images - before == 2 and len(answers) == len(requests)
    assert tiny.generate([]) == []


def test_model_throughput_bench_quick(tmp_path: Path) -> None:
    """bench/model_throughput.py --quick: the old path encodes per prompt, the new per image,
    and both give the same greedy ids."""
    out = tmp_path / "throughput.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "model_throughput.py"), "--quick", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["old"]["vit_images"] == report["prompts"] > report["images"] == report["new"]["vit_images"]
    assert report["greedy_ids_equal"] == report["prompts"]
    assert report["old"]["new_tokens"] == report["new"]["new_tokens"] > 0
    assert "| new |" in run.stdout and "tokens per CPU s" in run.stdout


def test_engine_reports_progress_after_each_batch(tiny) -> None:
    """A long study keeps the worker's heartbeat going: progress after every batch."""
    pictures = _pictures(2, seed=7)
    prompts = plan_for("DX", "CHEST")[:3]
    requests = [GenerationRequest(im, p.question, p.language) for im in pictures for p in prompts]
    seen: list[tuple[int, int]] = []
    tiny.generate_answers(requests, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 6), (6, 6)]  # batch_size 4
