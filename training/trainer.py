"""LoRA training with PEFT and TRL: SFTTrainer on chat examples, DPOTrainer on preference pairs.

torch, transformers, peft, trl and datasets are imported inside the functions that use them:
the web process imports this module's callers but never trains, and those libraries take
seconds and hundreds of MB to load.

A run checkpoints every `save_steps` into output_dir/checkpoints; `train(..., resume=True)` goes
on from the latest one (optimizer, scheduler, RNG and data order included), so a killed worker
loses at most `save_steps` steps. Cancelling saves a checkpoint first. The adapter is written to
output_dir/adapter and, merged into the base weights, to output_dir/merged: what the embedded
`transformers serve` loads (vLLM loads the adapter itself with --lora-modules).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"


class TrainingError(Exception):
    """Training cannot start or go on; the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Hyperparameters:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 1024
    warmup_ratio: float = 0.03
    save_steps: int = 50
    logging_steps: int = 5
    dpo_beta: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Hyperparameters:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)


@dataclass
class Progress:
    step: int
    total_steps: int
    loss: float | None
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None

    @property
    def eta_seconds(self) -> float | None:
        if self.step <= 0 or self.total_steps <= self.step:
            return 0.0 if self.total_steps and self.step >= self.total_steps else None
        return self.seconds / self.step * (self.total_steps - self.step)


@dataclass
class Outcome:
    adapter_dir: Path
    merged_dir: Path | None
    steps: int
    total_steps: int
    tokens: int
    examples: int
    seconds: float
    stopped: bool
    resumed_from_step: int | None
    curve: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def model_sha256(folder: Path) -> str:
    """SHA-256 over the base model's config and weight files, in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix == ".safetensors" or p.name in ("config.json", "adapter_config.json")))
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_base_model(folder: Path) -> dict[str, Any]:
    """The base model's config, or TrainingError saying why an adapter cannot be made for it."""
    if not folder.is_dir():
        raise TrainingError(f"The base model folder {folder} does not exist; pass --base-model "
                            "a local model folder (config.json, *.safetensors, tokenizer).")
    config_path = folder / "config.json"
    if not config_path.exists() or not list(folder.glob("*.safetensors")):
        raise TrainingError(f"{folder} is not a transformers model folder (config.json and "
                            "*.safetensors weights are needed).")
    config: dict[str, Any] = json.loads(config_path.read_text())
    architectures = config.get("architectures") or []
    if not any(str(name).endswith("ForCausalLM") for name in architectures):
        kind = ", ".join(architectures) or "model of unknown architecture"
        raise TrainingError(f"{folder} is a {kind}, not a causal language model: a LoRA adapter "
                            "for answering needs a *ForCausalLM base.")
    tokenizer_config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").exists() or (
        tokenizer_config.exists()
        and "chat_template" in json.loads(tokenizer_config.read_text()))
    if not has_template:
        raise TrainingError(f"{folder} has no chat template; the training examples are chat "
                            "messages, so pick an instruction-tuned base model.")
    return config


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def required_memory_bytes(folder: Path, hyper: Hyperparameters, method: str) -> int:
    """A rough floor: fp32 weights (twice for DPO's reference pass and for merging), plus
    activations for one batch, plus 0.5 GiB for the libraries."""
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    hidden = int(config.get("hidden_size", 1024))
    layers = int(config.get("num_hidden_layers", 24))
    vocab = int(config.get("vocab_size", 32000))
    sequences = hyper.batch_size * (2 if method == "dpo" else 1)
    activations = sequences * hyper.max_length * (hidden * layers * 16 + vocab) * 4
    return int(weights * 2 + activations + (512 << 20))


def check_memory(folder: Path, hyper: Hyperparameters, method: str, device: str) -> None:
    if device != "cpu":
        return
    available = available_memory_bytes()
    needed = required_memory_bytes(folder, hyper, method)
    if available is not None and needed > available:
        raise TrainingError(
            f"Training {folder.name} this way needs about {needed / 2**30:.1f} GiB of memory and "
            f"{available / 2**30:.1f} GiB is free: lower --batch-size or --max-length, stop "
            "other work, or train on a GPU host.")


def _device() -> str:
    import torch  # heavy: only when training

    return "cuda" if torch.cuda.is_available() else "cpu"


def latest_checkpoint(output_dir: Path) -> Path | None:
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
                  and (p / "trainer_state.json").exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_examples(data_dir: Path, method: str) -> list[dict[str, Any]]:
    """Training rows in TRL's conversational formats: prompt/completion for SFT (the loss is on
    the answer only), prompt/chosen/rejected for DPO."""
    if method == "sft":
        rows = _read_jsonl(data_dir / "sft.jsonl")
        return [{"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
                for row in rows]
    return _read_jsonl(data_dir / "dpo.jsonl")


# Answer tokens an SFT example keeps at the least; one whose prompt leaves fewer is dropped.
MIN_ANSWER_TOKENS = 16


def keep_answers_that_fit(examples: list[dict[str, Any]], tokenizer: Any,
                          max_length: int) -> list[dict[str, Any]]:
    """SFT examples whose prompt leaves room for at least MIN_ANSWER_TOKENS of the answer within
    `max_length` (truncation cuts the end, which is the answer: the loss's only target).
    TrainingError, with the length to ask for, when none is left."""
    kept: list[dict[str, Any]] = []
    longest = 0
    for example in examples:
        text = tokenizer.apply_chat_template(example["prompt"], tokenize=False,
                                             add_generation_prompt=True)
        prompt_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        longest = max(longest, prompt_tokens)
        if prompt_tokens + MIN_ANSWER_TOKENS <= max_length:
            kept.append(example)
    if not kept:
        raise TrainingError(
            f"Every one of the {len(examples)} examples' prompts is too long for --max-length "
            f"{max_length}: their answers would be cut off entirely (the longest prompt has "
            f"{longest} tokens). Raise --max-length to at least {longest + 256}.")
    if len(kept) < len(examples):
        logger.warning("%d of %d examples dropped: their prompts leave no room for the answer "
                       "within --max-length %d (the longest prompt has %d tokens)",
                       len(examples) - len(kept), len(examples), max_length, longest)
    return kept


def train(*, method: str, base_model: Path, data_dir: Path, output_dir: Path,
          hyper: Hyperparameters, seed: int, resume: bool = True,
          on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, merge: bool = True) -> Outcome:
    """Train (or go on training) a LoRA adapter; write the adapter and merged weights."""
    if method not in ("sft", "dpo"):
        raise TrainingError(f"Unknown method {method!r}; use sft or dpo.")
    check_base_model(base_model)
    examples = load_examples(data_dir, method)
    if not examples:
        raise TrainingError(f"The training set at {data_dir} has no {method.upper()} examples"
                            + (" (DPO needs reviewer corrections)." if method == "dpo" else ".")
                            + " Build one with more reviewed answers or the literature set.")
    device = _device()
    check_memory(base_model, hyper, method, device)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Heavy libraries, loaded only here (seconds, hundreds of MB).
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    checkpoint = latest_checkpoint(output_dir) if resume else None
    resumed_from = int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else None
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if method == "sft":
        examples = keep_answers_that_fit(examples, tokenizer, hyper.max_length)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    lora = LoraConfig(r=hyper.lora_r, lora_alpha=hyper.lora_alpha,
                      lora_dropout=hyper.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=(hyper.target_modules if hyper.target_modules == "all-linear"
                                      else [m.strip() for m in hyper.target_modules.split(",")]))
    common: dict[str, Any] = {
        "output_dir": str(output_dir / CHECKPOINTS), "learning_rate": hyper.learning_rate,
        "num_train_epochs": hyper.epochs, "max_steps": hyper.max_steps,
        "per_device_train_batch_size": hyper.batch_size,
        "gradient_accumulation_steps": hyper.gradient_accumulation,
        # A float below 1 is a share of the steps (transformers 5 folded warmup_ratio in here).
        "warmup_steps": hyper.warmup_ratio, "logging_steps": hyper.logging_steps,
        "save_strategy": "steps", "save_steps": hyper.save_steps, "save_total_limit": 2,
        "seed": seed, "data_seed": seed, "report_to": [], "disable_tqdm": True,
        "use_cpu": device == "cpu", "dataloader_num_workers": 0, "max_length": hyper.max_length,
        "bf16": device == "cuda" and torch.cuda.is_bf16_supported(),
    }
    curve: list[dict[str, Any]] = []
    started = time.monotonic()
    tokens_before = 0
    state_box: dict[str, Any] = {"stopped": False}

    def session_tokens(logged: int) -> int:
        # Tokens trained in this process: a resumed trainer may or may not carry its count on.
        return logged - tokens_before if logged >= tokens_before else logged

    class ProgressCallback(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            tokens = int(float(logs.get("num_tokens", 0)))
            point = {"step": state.global_step, "loss": round(float(logs["loss"]), 5),
                     "tokens": tokens, "seconds": round(time.monotonic() - started, 2),
                     "learning_rate": float(logs.get("learning_rate", 0.0))}
            curve.append(point)
            if on_progress:
                on_progress(Progress(step=state.global_step, total_steps=state.max_steps,
                                     loss=point["loss"], tokens=session_tokens(tokens),
                                     seconds=time.monotonic() - started))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.monotonic()
            if on_progress and not curve:
                on_progress(Progress(step=state.global_step, total_steps=state.max_steps,
                                     loss=None, tokens=0, seconds=now - started))
            # Checked after every step: one indexed query, next to a step of seconds on real
            # models, and a cancel is never skipped past the end of a short run.
            if should_stop is None:
                return
            if should_stop():
                # Save first, so a resume goes on from here.
                state_box["stopped"] = True
                control.should_save = True
                control.should_training_stop = True

    dataset = Dataset.from_list(examples)
    try:
        if method == "sft":
            trainer: Any = SFTTrainer(
                model=model, args=SFTConfig(**common, completion_only_loss=True),
                train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                callbacks=[ProgressCallback()])
        else:
            trainer = DPOTrainer(
                model=model, args=DPOConfig(**common, beta=hyper.dpo_beta),
                train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                callbacks=[ProgressCallback()])
    except ValueError as error:
        raise TrainingError(f"The adapter cannot fit {base_model.name}: {error}. Pick "
                            "--target-modules that exist in this model (or all-linear).") from error
    if checkpoint is not None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        tokens_before = int(max((float(entry.get("num_tokens", 0))
                                 for entry in state.get("log_history", [])), default=0))
        curve.extend({"step": entry["step"], "loss": round(float(entry["loss"]), 5),
                      "tokens": int(float(entry.get("num_tokens", 0))), "seconds": None,
                      "learning_rate": float(entry.get("learning_rate", 0.0))}
                     for entry in state.get("log_history", []) if "loss" in entry)
        logger.info("resuming %s from %s", output_dir.name, checkpoint.name)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.OutOfMemoryError as error:
        raise TrainingError("Training ran out of memory; lower --batch-size or --max-length, "
                            "or train on a bigger machine.") from error
    seconds = time.monotonic() - started
    state = trainer.state
    tokens = int(float(getattr(state, "num_input_tokens_seen", 0) or 0)) or (
        curve[-1]["tokens"] if curve else 0)
    outcome = Outcome(adapter_dir=output_dir / ADAPTER, merged_dir=None,
                      steps=state.global_step, total_steps=state.max_steps,
                      tokens=session_tokens(tokens), examples=len(examples),
                      seconds=seconds, stopped=state_box["stopped"],
                      resumed_from_step=resumed_from, curve=curve,
                      versions=library_versions(), device=device)
    if outcome.stopped:
        return outcome
    trainer.save_model(str(outcome.adapter_dir))
    tokenizer.save_pretrained(str(outcome.adapter_dir))
    if merge:
        outcome.merged_dir = merge_adapter(trainer.model, tokenizer, output_dir / MERGED)
    return outcome


def merge_adapter(peft_model: Any, tokenizer: Any, target: Path) -> Path:
    """Fold the LoRA weights into the base weights and save a plain model folder, built aside
    and swapped in, so a server never reads half a folder."""
    import shutil

    merged = peft_model.merge_and_unload()
    staging = target.with_name(target.name + f".building-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    merged.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    if getattr(merged, "generation_config", None) is not None:
        merged.generation_config.save_pretrained(str(staging))
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target
