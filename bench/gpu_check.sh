#!/usr/bin/env bash
# GPU check for the model path, for a lent GPU machine (one command, well under 8 minutes).
#
#   bash bench/gpu_check.sh            # on the GPU machine, from the repository root
#   GPU_CHECK_CPU=1 bash bench/gpu_check.sh   # smoke test of the script itself on CPU (small sizes)
#
# What it does, each step bounded by `timeout`:
#   1. the machine: nvidia-smi, torch/transformers versions, CUDA visible;
#   2. tiny backend (MedRegA's class at toy size) on CUDA: one batch of a chest plan, tokens/s;
#   3. a mid-size random model of MedRegA's topology (InternViT 24 layers x 1024 + Llama
#      32 layers x 2560, about 3 B parameters) in bfloat16 on CUDA: prefill time, batched greedy
#      generation at batch 1/4/8, new tokens per second, peak GPU memory;
#   4. the parity fixture on CUDA in float32 with TF32 off, when ../shared/medrega-parity exists
#      beside the repository (greedy ids must equal MedRegA's);
#   5. bench/model_throughput.py at the same ~3 B size in bfloat16: one study (5 images, their
#      plans' prompts), the old path (vision tower once per prompt) against the new one (once per
#      image, prompts of all images batched by length): tokens/s, vision tower work per study.
# Prints Markdown tables; exit status is non-zero if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
echo "## GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
if [ -z "${GPU_CHECK_CPU:-}" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
export GPU_CHECK_CPU="${GPU_CHECK_CPU:-}"
timeout 450 "$PY" - <<'PYEOF'
import json, os, sys, time
from pathlib import Path

sys.path.insert(0, os.getcwd())
import numpy as np
import torch
import transformers
from PIL import Image

cpu = bool(os.environ.get("GPU_CHECK_CPU"))
device = "cpu" if cpu else "cuda"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}"
      + ("" if cpu else f" ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)"))
if not cpu and not torch.cuda.is_available():
    sys.exit("CUDA is not available")

from common.settings import ModelSettings
from model.backends.base import GenerationRequest
from model.backends.engine import InternVLEngine
from model.backends.tiny import TinyBackend, build_tiny_tokenizer
from model.internvl_v1 import MedRegAForConditionalGeneration
from model.plans import plan_for
from model.template import IMG_CONTEXT

def sync():
    if not cpu:
        torch.cuda.synchronize()

def peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if not cpu else float("nan")

image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
prompts = plan_for("DX", "CHEST")

# 2. tiny on the device
t = time.perf_counter()
tiny = TinyBackend(seed=0, max_new_tokens=64, batch_size=4, device=device)
load_s = time.perf_counter() - t
answers = tiny.generate([GenerationRequest(image, p.question, p.language) for p in prompts])  # warm-up
sync(); t = time.perf_counter()
ids = tiny.engine.generate_ids([p.question for p in prompts], [image] * len(prompts), 64)
sync(); gen_s = time.perf_counter() - t
n = sum(len(i) for i in ids)
print("\n| tiny on %s | value |\n|---|---|" % device)
print(f"| build | {load_s:.2f} s |\n| batch of {len(prompts)} prompts, {n} new tokens | {gen_s:.2f} s, {n / gen_s:.0f} tokens/s |")
assert all(isinstance(a, str) for a in answers)

# 3. mid-size random model, bfloat16
from transformers import InternVLConfig
tok = build_tiny_tokenizer()
small = cpu
config = InternVLConfig(
    vision_config=dict(hidden_size=256 if small else 1024, num_hidden_layers=2 if small else 24,
                       num_attention_heads=4 if small else 16, intermediate_size=512 if small else 4096,
                       use_qk_norm=True, norm_type="rms_norm", use_mean_pooling=True, image_size=448, patch_size=14),
    text_config=dict(model_type="llama", vocab_size=64000, hidden_size=256 if small else 2560,
                     intermediate_size=512 if small else 6912, num_hidden_layers=2 if small else 32,
                     num_attention_heads=4 if small else 20, num_key_value_heads=2 if small else 4,
                     rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5e6},
                     max_position_embeddings=4096, tie_word_embeddings=False),
    downsample_ratio=0.5, image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT), image_seq_length=256,
    tie_word_embeddings=False, ps_version="v1",
)
torch.manual_seed(0)
if not cpu:
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
default_dtype = torch.get_default_dtype()
torch.set_default_dtype(torch.bfloat16)
with torch.device(device):
    model = MedRegAForConditionalGeneration(config)
torch.set_default_dtype(default_dtype)
sync(); build_s = time.perf_counter() - t
params = sum(p.numel() for p in model.parameters())
engine = InternVLEngine(model, tok, max_new_tokens=128)
engine.first_step_logits(prompts[0].question, image)  # warm-up
sync(); t = time.perf_counter()
engine.first_step_logits(prompts[0].question, image)
sync(); prefill_s = time.perf_counter() - t
print(f"\n| mid-size random model, bfloat16 on {device} | value |\n|---|---|")
print(f"| parameters | {params / 1e9:.2f} B |\n| build | {build_s:.1f} s |\n| prefill, 1 prompt ({engine.encode([prompts[0].question])[0].shape[1]} tokens) | {prefill_s * 1000:.0f} ms |")
print(f"\n| batch | new tokens | seconds | tokens/s | peak GPU memory |\n|---|---|---|---|---|")
new_tokens = 16 if small else 128
for batch in (1, 4, 8):
    questions = [prompts[i % len(prompts)].question for i in range(batch)]
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    sync(); t = time.perf_counter()
    out = engine.generate_ids(questions, [image] * batch, new_tokens)
    sync(); s = time.perf_counter() - t
    n = sum(len(i) for i in out)
    print(f"| {batch} | {n} | {s:.2f} | {n / s:.0f} | {peak_gib():.2f} GiB |")
del model, engine
if not cpu:
    torch.cuda.empty_cache()

# 4. parity fixture on the device, float32, TF32 off
parity = Path(os.getcwd()).parent / "shared" / "medrega-parity"
if parity.is_dir():
    import tempfile
    from model.backends.medrega import load_engine
    from model.convert import convert_checkpoint
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    expected = json.loads((parity / "expected.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        convert_checkpoint(parity / "original", Path(tmp) / "m")
        eng = load_engine(Path(tmp) / "m", device=device, dtype="float32")
        with Image.open(parity / expected["image"]["file"]) as im:
            img = im.convert("RGB")
        logits = eng.first_step_logits(expected["question"], img).float().cpu().numpy()
        ids = eng.generate_ids([expected["question"]], [img], expected["generation"]["max_new_tokens"])[0]
    diff = float(np.abs(logits - np.asarray(expected["first_step_logits"]["all"])).max())
    ok = ids == expected["greedy"]["ids"]
    print(f"\n| parity fixture on {device} (float32, TF32 off) | value |\n|---|---|")
    print(f"| greedy ids equal MedRegA's | {ok} |\n| max first-step logit difference | {diff:.2e} (tolerance 1e-4) |")
    if not ok:
        sys.exit("parity: greedy ids differ")
else:
    print(f"\n(parity fixture not found at {parity}: step 4 skipped)")
PYEOF
if [ -n "$GPU_CHECK_CPU" ]; then
  timeout 240 "$PY" bench/model_throughput.py --quick
else
  timeout 240 "$PY" bench/model_throughput.py --size gpu --device cuda --dtype bfloat16 \
    --batch-size 8 --max-new-tokens 64 --rounds 3
fi
echo "gpu_check: done"
