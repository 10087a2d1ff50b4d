"""EMBEDDING_BACKEND: torch, OpenVINO or onnxruntime (plain / int8), exported once, torch as
fallback."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from retrieval import embedding

pytest.importorskip("onnxruntime", reason="onnxruntime (requirements.txt) is not installed")

SENTENCES = [
    "Does aspirin reduce the risk of stroke in patients with atrial fibrillation?",
    "Metformin lowered HbA1c by 1.1% over 24 weeks compared with placebo.",
    "A randomised controlled trial of early mobilisation after hip fracture surgery.",
    "short",
]


@pytest.fixture(scope="module")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")  # shared: the int8 export is made once here


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, settings: SettingsWrapper,
          export_root: Path) -> Iterator[SettingsWrapper]:
    """No loaded encoder in this process (restored afterwards); exports go to export_root."""
    for name in ("_embedder", "_embedder_name", "_session", "_backend_in_use"):
        monkeypatch.setattr(embedding, name, None)
    settings.MODEL_CACHE_DIR = export_root
    yield settings


def test_torch_backend_uses_sentence_transformers(fresh: SettingsWrapper) -> None:
    fresh.EMBEDDING_BACKEND = "torch"
    assert embedding.backend_in_use() == "torch"
    assert embedding._session is None
    assert not (Path(fresh.MODEL_CACHE_DIR) / "embedding-torch").exists()


def test_int8_is_exported_once_and_agrees_with_torch(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh.EMBEDDING_BACKEND = "torch"
    reference = embedding.embed_texts(SENTENCES)

    fresh.EMBEDDING_BACKEND = "onnx-int8"
    assert embedding.backend_in_use() == "onnx-int8"
    folder = Path(fresh.MODEL_CACHE_DIR) / "embedding-onnx-int8"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "source.json"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    vectors = embedding.embed_texts(SENTENCES)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.98, cosines
    # order restored after the length-sorted batches: each row matches its own sentence
    assert (vectors @ reference.T).argmax(axis=1).tolist() == list(range(len(SENTENCES)))

    # a second load (new process) reuses the export: exporting again would fail here
    import torch

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported twice")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    written = (folder / "model.onnx").stat().st_mtime_ns
    monkeypatch.setattr(embedding, "_embedder", None)
    assert embedding.backend_in_use() == "onnx-int8"
    assert (folder / "model.onnx").stat().st_mtime_ns == written
    np.testing.assert_allclose(embedding.embed_texts(SENTENCES), vectors, atol=1e-6)


def test_unavailable_backend_falls_back_to_torch_with_a_warning(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    fresh.EMBEDDING_BACKEND = "onnx"
    with caplog.at_level(logging.WARNING, logger="retrieval.embedding"):
        assert embedding.backend_in_use() == "torch"
    assert any("EMBEDDING_BACKEND=onnx is unavailable" in r.getMessage() for r in caplog.records)
    assert not (Path(fresh.MODEL_CACHE_DIR) / "embedding-onnx").exists()
    vectors = embedding.embed_texts(SENTENCES[:2])
    assert vectors.shape == (2, embedding.embedding_dimension())


@pytest.mark.skipif(not embedding.cpu_has_bf16(),
                    reason="this CPU has no bfloat16 arithmetic (AVX512_BF16 or AMX); "
                    "torch-bf16 falls back to fp32 torch here (tested below)")
def test_bf16_runs_the_model_in_bfloat16_and_agrees_with_fp32(fresh: SettingsWrapper) -> None:
    import torch

    fresh.EMBEDDING_BACKEND = "torch"
    reference = embedding.embed_texts(SENTENCES)
    fresh.EMBEDDING_BACKEND = "torch-bf16"
    assert embedding.backend_in_use() == "torch-bf16"
    assert next(embedding.get_embedder().parameters()).dtype == torch.bfloat16
    vectors = embedding.embed_texts(SENTENCES)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.99, cosines
    assert (vectors @ reference.T).argmax(axis=1).tolist() == list(range(len(SENTENCES)))


def test_bf16_on_a_cpu_without_it_is_fp32_torch_with_a_warning(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import torch

    monkeypatch.setattr(embedding, "cpu_has_bf16", lambda: False)
    fresh.EMBEDDING_BACKEND = "torch-bf16"
    with caplog.at_level(logging.WARNING, logger="retrieval.embedding"):
        assert embedding.backend_in_use() == "torch"
    assert any("needs a CPU with bfloat16" in r.getMessage() for r in caplog.records)
    assert next(embedding.get_embedder().parameters()).dtype == torch.float32


def test_openvino_is_converted_once_and_agrees_with_torch(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    openvino = pytest.importorskip("openvino", reason="openvino (requirements.txt) is not "
                                   "installed")
    fresh.EMBEDDING_BACKEND = "torch"
    reference = embedding.embed_texts(SENTENCES)

    fresh.EMBEDDING_BACKEND = "openvino"
    assert embedding.backend_in_use() == "openvino"
    assert embedding._session.precision == ("bf16" if embedding.cpu_has_bf16() else "f32")
    folder = Path(fresh.MODEL_CACHE_DIR) / "embedding-openvino"
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml", "source.json"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    # more texts than one OpenVINO batch, of mixed lengths: order restored across batches
    texts = [f"{sentence} ({n})" * (1 + n % 3) for n in range(20) for sentence in SENTENCES]
    fresh.EMBEDDING_BACKEND = "torch"
    reference = embedding.embed_texts(texts)
    fresh.EMBEDDING_BACKEND = "openvino"
    vectors = embedding.embed_texts(texts)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.999, cosines  # bfloat16 here keeps norms and sums in fp32

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    written = (folder / "model.xml").stat().st_mtime_ns
    monkeypatch.setattr(embedding, "_embedder", None)
    assert embedding.backend_in_use() == "openvino"
    assert (folder / "model.xml").stat().st_mtime_ns == written
    np.testing.assert_allclose(embedding.embed_texts(texts), vectors, atol=1e-6)


def test_openvino_missing_falls_back_to_torch_with_a_warning(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    fresh.EMBEDDING_BACKEND = "openvino"
    with caplog.at_level(logging.WARNING, logger="retrieval.embedding"):
        assert embedding.backend_in_use() == "torch"
    assert any("EMBEDDING_BACKEND=openvino is unavailable" in r.getMessage()
               for r in caplog.records)
    assert embedding._session is None
    assert embedding.embed_texts(SENTENCES[:2]).shape == (2, embedding.embedding_dimension())


def test_openvino_int8_is_float_until_a_large_call_calibrates_it_once(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino", reason="openvino (requirements.txt) is not installed")
    nncf = pytest.importorskip("nncf", reason="nncf (requirements.txt) is not installed")
    monkeypatch.setattr(embedding, "CALIBRATION_TEXTS", 40)
    texts = [f"{sentence} ({n})" * (1 + n % 3) for n in range(20) for sentence in SENTENCES]
    fresh.EMBEDDING_BACKEND = "torch"
    reference = embedding.embed_texts(texts)

    fresh.EMBEDDING_BACKEND = "openvino-int8"
    assert embedding.backend_in_use() == "openvino-int8"
    folder = Path(fresh.MODEL_CACHE_DIR) / "embedding-openvino-int8"
    # a query-sized call runs the float model and calibrates nothing
    few = embedding.embed_texts(texts[:4])
    assert not folder.exists() and not embedding._session.quantized
    assert (few * reference[:4]).sum(axis=1).min() >= 0.999

    vectors = embedding.embed_texts(texts)  # >= 40 texts: calibrated on the first 40
    assert embedding._session.quantized
    assert sorted(p.name for p in folder.iterdir()) == [
        "calibration.json", "model.bin", "model.xml", "source.json"]
    calibration = json.loads((folder / "calibration.json").read_text())
    assert calibration["texts"] == 40
    assert len(calibration["float_matmuls"]) == 6  # one GELU-fed MatMul per layer
    assert all("output.dense" in name for name in calibration["float_matmuls"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.98, cosines
    assert (vectors @ reference.T).argmax(axis=1).tolist() == list(range(len(texts)))

    # a new process loads the int8 model at once: quantizing again would fail here
    def no_quantization(*args: object, **kwargs: object) -> None:
        raise AssertionError("quantized twice")

    monkeypatch.setattr(nncf, "quantize", no_quantization)
    monkeypatch.setattr(embedding, "_embedder", None)
    assert embedding.backend_in_use() == "openvino-int8"
    assert embedding._session.quantized
    np.testing.assert_allclose(embedding.embed_texts(texts), vectors, atol=1e-5)


def test_openvino_int8_that_cannot_calibrate_stays_float_with_a_warning(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino (requirements.txt) is not installed")
    pytest.importorskip("nncf", reason="nncf (requirements.txt) is not installed")
    fresh.MODEL_CACHE_DIR = tmp_path  # no int8 export from another test
    monkeypatch.setattr(embedding, "CALIBRATION_TEXTS", 4)
    attempts = []

    def broken(*args: object) -> None:
        attempts.append(1)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(embedding, "export_openvino_int8", broken)
    fresh.EMBEDDING_BACKEND = "openvino-int8"
    with caplog.at_level(logging.WARNING, logger="retrieval.embedding"):
        first = embedding.embed_texts(SENTENCES)
        second = embedding.embed_texts(SENTENCES)
    assert attempts == [1]  # not retried on every call
    assert any("calibration failed (RuntimeError: out of memory)" in r.getMessage()
               for r in caplog.records)
    assert not embedding._session.quantized
    np.testing.assert_allclose(first, second, atol=1e-6)

    fresh.EMBEDDING_BACKEND = "openvino"
    np.testing.assert_allclose(embedding.embed_texts(SENTENCES), first, atol=1e-6)


def test_openvino_int8_without_nncf_is_float_openvino_with_a_warning(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("openvino", reason="openvino (requirements.txt) is not installed")
    monkeypatch.setattr(embedding, "nncf_installed", lambda: False)
    fresh.EMBEDDING_BACKEND = "openvino-int8"
    with caplog.at_level(logging.WARNING, logger="retrieval.embedding"):
        assert embedding.backend_in_use() == "openvino"
    assert any("needs NNCF" in r.getMessage() for r in caplog.records)


def test_auto_is_openvino_int8_then_openvino_where_installed_else_bf16_else_onnx(
        fresh: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh.EMBEDDING_BACKEND = "auto"
    monkeypatch.setattr(embedding, "openvino_installed", lambda: True)
    monkeypatch.setattr(embedding, "nncf_installed", lambda: True)
    assert embedding.resolved_backend() == "openvino-int8"
    monkeypatch.setattr(embedding, "nncf_installed", lambda: False)
    assert embedding.resolved_backend() == "openvino"
    monkeypatch.setattr(embedding, "openvino_installed", lambda: False)
    monkeypatch.setattr(embedding, "cpu_has_bf16", lambda: True)
    assert embedding.resolved_backend() == "torch-bf16"
    monkeypatch.setattr(embedding, "cpu_has_bf16", lambda: False)
    assert embedding.resolved_backend() == "onnx"
    assert embedding.backend_in_use() == "onnx"
