"""Model throughput: the engine's old path (vision tower once per prompt) against the new one.

One study, one random model of MedRegA's topology (InternViT with RMSNorm and QK-norm, v1 pixel
shuffle, MLP projector, Llama), both paths in the same run, rounds interleaved:

* **old** (main before issue 14): the prompts in plan order, image after image, cut into batches
  of ``--batch-size``; each batch is one ``generate(pixel_values=...)`` call, so the vision
  tower encodes the image again for every prompt;
* **new** (:meth:`model.backends.engine.InternVLEngine.generate_ids`): every image through the
  vision tower once, the prompts of all images ordered by length and batched together, each
  generated from its image's features.

Reported per path: new tokens per second (wall), new tokens per CPU second of this process,
vision tower forward passes and images encoded per study (counted by a hook on the vision tower,
not by the engine), and whether the greedy ids of the two paths are equal.

    .venv/bin/python bench/model_throughput.py                 # mid-size model, CPU (minutes)
    .venv/bin/python bench/model_throughput.py --quick         # toy size, seconds (the test suite)
    .venv/bin/python bench/model_throughput.py --size gpu --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from model.backends.engine import InternVLEngine  # noqa: E402
from model.backends.tiny import build_tiny_tokenizer  # noqa: E402
from model.internvl_v1 import MedRegAForConditionalGeneration  # noqa: E402
from model.plans import plan_for  # noqa: E402
from model.template import IMG_CONTEXT  # noqa: E402

#: Model sizes (vision tower / language model). "mid" (165 M parameters: 15 M vision, 50 M in the
#: Llama layers, 98 M in the embeddings and output layer of Yi's 64,000-token vocabulary) keeps
#: MedRegA's balance of work per prompt: the vision tower costs about half a prompt's prefill
#: (MedRegA: InternViT-6B over 1,025 patches ~12 TFLOP, Yi-34B over ~420 tokens ~29 TFLOP);
#: "gpu" is ~3 B (InternViT 24 x 1024, Llama 32 x 2560).
SIZES: dict[str, dict[str, int]] = {
    "quick": dict(v_hidden=64, v_layers=2, v_heads=4, v_mlp=128, t_hidden=64, t_layers=2, t_heads=4, t_kv=2, t_mlp=128, vocab=0),
    "mid": dict(v_hidden=384, v_layers=8, v_heads=6, v_mlp=1536, t_hidden=768, t_layers=8, t_heads=12, t_kv=4, t_mlp=2048, vocab=64000),
    "gpu": dict(v_hidden=1024, v_layers=24, v_heads=16, v_mlp=4096, t_hidden=2560, t_layers=32, t_heads=20, t_kv=4, t_mlp=6912, vocab=64000),
}

#: The study: (modality, body part, number of images). A chest radiograph, three CT slices, an MR.
STUDY = (("DX", "CHEST", 1), ("CT", "ABDOMEN", 3), ("MR", "HEAD", 1))


def build_model(size: str, device: str, dtype: torch.dtype, seed: int = 0) -> InternVLEngine:
    """A random model of MedRegA's topology at ``size`` and the tiny backend's tokenizer."""
    from transformers import InternVLConfig

    s = SIZES[size]
    tok = build_tiny_tokenizer()
    config = InternVLConfig(  # type: ignore[call-arg]  # ps_version: not a declared InternVLConfig field; PreTrainedConfig keeps it (config.json)
        vision_config=dict(
            hidden_size=s["v_hidden"], num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"],
            intermediate_size=s["v_mlp"], use_qk_norm=True, attention_bias=False, norm_type="rms_norm",
            use_mean_pooling=True, image_size=448, patch_size=14,
        ),
        text_config=dict(
            model_type="llama", vocab_size=s["vocab"] or len(tok), hidden_size=s["t_hidden"],
            intermediate_size=s["t_mlp"], num_hidden_layers=s["t_layers"], num_attention_heads=s["t_heads"],
            num_key_value_heads=s["t_kv"], rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6},
            max_position_embeddings=4096, tie_word_embeddings=False,
        ),
        downsample_ratio=0.5, image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT), image_seq_length=256,
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False,
        ps_version="v1",
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MedRegAForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return InternVLEngine(model, tok, max_new_tokens=32)


def study_requests(images_per_entry: Sequence[tuple[str, str, int]], seed: int = 0) -> tuple[list[str], list[Image.Image]]:
    """(question, image) per prompt, image after image in plan order, as the worker asks them;
    all prompts of one image hold the same picture object."""
    rng = np.random.default_rng(seed)
    questions: list[str] = []
    images: list[Image.Image] = []
    for modality, body_part, count in images_per_entry:
        for _ in range(count):
            picture = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
            for prompt in plan_for(modality, body_part):
                questions.append(prompt.question)
                images.append(picture)
    return questions, images


class VisionCounter:
    """Counts vision tower forward passes and the images they encode (a forward pre-hook)."""

    def __init__(self, engine: InternVLEngine) -> None:
        self.calls = 0
        self.images = 0
        engine.model.model.vision_tower.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module: Any, args: tuple, kwargs: dict) -> None:
        pixels = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        self.calls += 1
        self.images += int(pixels.shape[0])

    def take(self) -> tuple[int, int]:
        calls, images, self.calls, self.images = self.calls, self.images, 0, 0
        return calls, images


@torch.inference_mode()
def old_path(engine: InternVLEngine, questions: Sequence[str], images: Sequence[Image.Image], batch_size: int, max_new_tokens: int) -> list[list[int]]:
    """main before issue 14: plan-order batches, ``generate(pixel_values=...)`` per batch."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False, num_beams=1,
        eos_token_id=engine.eos_token_id, pad_token_id=engine.pad_token_id,
    )
    result: list[list[int]] = []
    for start in range(0, len(questions), batch_size):
        input_ids, attention_mask = engine.encode(questions[start : start + batch_size])
        out = engine.model.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            pixel_values=engine.pixel_tensor(images[start : start + batch_size]), generation_config=config,
        )
        for ids in out[:, input_ids.shape[1] :].tolist():
            result.append(ids[: ids.index(engine.eos_token_id) + 1] if engine.eos_token_id in ids else ids)
    return result


def new_path(engine: InternVLEngine, questions: Sequence[str], images: Sequence[Image.Image], batch_size: int, max_new_tokens: int) -> list[list[int]]:
    engine.clear_feature_cache()  # each round starts cold, as a new study does
    return engine.generate_ids(questions, images, max_new_tokens, batch_size=batch_size)


@dataclass
class PathResult:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    tokens: int = 0
    vit_calls: int = 0
    vit_images: int = 0
    ids: list[list[int]] = field(default_factory=list)


def measure(run: Callable[[], list[list[int]]], counter: VisionCounter, result: PathResult, sync: Callable[[], None]) -> None:
    counter.take()
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    ids = run()
    sync()
    result.wall_s.append(time.perf_counter() - wall)
    result.cpu_s.append(time.process_time() - cpu)
    result.tokens = sum(len(i) for i in ids)
    result.vit_calls, result.vit_images = counter.take()
    result.ids = ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy model, 4 new tokens, 1 round (the test suite)")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="model size (default mid; quick with --quick)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    size = args.size or ("quick" if args.quick else "mid")
    max_new = args.max_new_tokens or (4 if args.quick else 32)
    rounds = args.rounds or (1 if args.quick else 2)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    questions, images = study_requests(STUDY)
    n_images = len({id(i) for i in images})
    t = time.perf_counter()
    engine = build_model(size, args.device, dtype)
    build_s = time.perf_counter() - t
    counter = VisionCounter(engine)
    params_v = sum(p.numel() for p in engine.model.model.vision_tower.parameters())
    params = sum(p.numel() for p in engine.model.parameters())
    # warm-up (one prompt each way), not counted
    old_path(engine, questions[:1], images[:1], 1, 2)
    new_path(engine, questions[:1], images[:1], 1, 2)
    old, new = PathResult(), PathResult()
    for _ in range(rounds):
        measure(lambda: old_path(engine, questions, images, args.batch_size, max_new), counter, old, sync)
        measure(lambda: new_path(engine, questions, images, args.batch_size, max_new), counter, new, sync)
    equal = sum(a == b for a, b in zip(old.ids, new.ids))
    lengths = engine.prompt_lengths(questions)

    def row(name: str, r: PathResult) -> dict[str, Any]:
        wall, cpu = statistics.median(r.wall_s), statistics.median(r.cpu_s)
        return {
            "path": name, "wall_s": wall, "cpu_s": cpu, "new_tokens": r.tokens,
            "tokens_per_s": r.tokens / wall, "tokens_per_cpu_s": r.tokens / cpu,
            "vit_calls": r.vit_calls, "vit_images": r.vit_images, "rounds_wall_s": r.wall_s,
        }

    report = {
        "size": size, "device": args.device, "dtype": args.dtype, "threads": args.threads,
        "batch_size": args.batch_size, "max_new_tokens": max_new, "rounds": rounds,
        "parameters": params, "vision_parameters": params_v, "build_s": build_s,
        "images": n_images, "prompts": len(questions),
        "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
        "old": row("old", old), "new": row("new", new),
        "greedy_ids_equal": equal, "speedup_wall": statistics.median(old.wall_s) / statistics.median(new.wall_s),
        "speedup_cpu": statistics.median(old.cpu_s) / statistics.median(new.cpu_s),
    }
    print(f"## Model throughput ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, torch {torch.__version__})\n")
    print(f"{size} random model of MedRegA's topology: {params / 1e6:.1f} M parameters "
          f"({params_v / 1e6:.1f} M vision), {args.dtype} on {args.device}, {args.threads} thread(s); "
          f"study of {n_images} images, {len(questions)} prompts ({min(lengths)}-{max(lengths)} tokens), "
          f"batch {args.batch_size}, at most {max_new} new tokens, median of {rounds} round(s)\n")
    print("| path | vision tower passes / images encoded per study | new tokens | seconds | tokens/s | tokens per CPU s |")
    print("|---|---|---|---|---|---|")
    for r in (report["old"], report["new"]):
        print(f"| {r['path']} | {r['vit_calls']} / {r['vit_images']} | {r['new_tokens']} | {r['wall_s']:.2f} | "
              f"{r['tokens_per_s']:.1f} | {r['tokens_per_cpu_s']:.1f} |")
    print(f"\nnew/old: {report['speedup_wall']:.2f}x tokens/s, {report['speedup_cpu']:.2f}x tokens per CPU s; "
          f"greedy ids equal for {equal}/{len(questions)} prompts")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    # float32 must give the same greedy ids both ways; half precision may differ by batch layout
    if args.dtype == "float32" and equal != len(questions):
        print("greedy ids differ between the old and the new path", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
