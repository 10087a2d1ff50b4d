"""`manage.py train_adapter` on the tiny Llama: adapter, merged weights, manifest, candidate."""

from __future__ import annotations

import json
import shlex
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from modelsvc.management.commands.vllm_command import vllm_command_line
from modelsvc.models import ServedModel
from training import services
from training.models import TrainingRun
from training.trainer import Hyperparameters

pytestmark = [pytest.mark.shared_data, pytest.mark.django_db]


@pytest.fixture
def tiny(local_model_dirs):
    return local_model_dirs["tiny"]


@pytest.fixture
def export_with_pairs(reviewed, exported):
    reviewed("Does aspirin prevent a second stroke?", "correct")
    reviewed("Is metformin safe in stage 3 kidney disease?")
    reviewed("Does vitamin D alone prevent hip fractures in older adults?", "correct")
    return exported()


def test_train_adapter_writes_the_adapter_and_manifest_and_registers_a_candidate(
        export_with_pairs, tiny, settings):
    out = StringIO()
    call_command("train_adapter", "--export", str(export_with_pairs), "--literature", "none",
                 "--base-model", str(tiny), "--max-steps", "3", "--batch-size", "2",
                 "--logging-steps", "1", "--max-length", "512", stdout=out)
    summary = json.loads(out.getvalue()[out.getvalue().index("\n{") + 1:])
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.COMPLETE
    assert summary["steps"] == run.step == 3 and summary["tokens"] > 0
    adapter = Path(run.adapter_path)
    assert (adapter / "adapter_config.json").exists()
    assert (adapter / "adapter_model.safetensors").exists()
    assert (Path(run.merged_path) / "model.safetensors").exists()
    manifest = json.loads((Path(run.output_dir) / "manifest.json").read_text())
    assert manifest["base_model"]["sha256"] == run.base_model_sha256 and len(
        run.base_model_sha256) == 64
    assert manifest["training_set"]["card_sha256"] == run.training_set.card_sha256
    assert manifest["hyperparameters"]["max_steps"] == 3 and manifest["seed"] == 0
    assert set(manifest["libraries"]) >= {"torch", "transformers", "peft", "trl"}
    assert [point["step"] for point in manifest["curve"]] == [1, 2, 3]
    candidate = run.served_model
    assert candidate.status == ServedModel.Status.CANDIDATE
    assert candidate.capability == "literature" and candidate.adapter_path == run.adapter_path
    # The embedded server resolves the served name through the link to the merged weights.
    link = Path(settings.TRAINING_SERVED_DIR) / candidate.served_name
    assert link.resolve() == Path(run.merged_path).resolve()


def test_vllm_command_serves_the_trained_adapter_as_a_lora_module(export_with_pairs, tiny):
    call_command("train_adapter", "--export", str(export_with_pairs), "--literature", "none",
                 "--base-model", str(tiny), "--max-steps", "1", "--batch-size", "2",
                 stdout=StringIO())
    run = TrainingRun.objects.get()
    ServedModel.objects.create(name="tiny-base", served_name="tiny-base",
                               base_model=run.base_model, capability="literature",
                               status=ServedModel.Status.SERVING)
    out = StringIO()
    call_command("vllm_command", "--include-candidates", stdout=out)
    argv = shlex.split(out.getvalue())
    rows = list(ServedModel.objects.all())
    assert argv == vllm_command_line(rows)
    assert argv[:3] == ["vllm", "serve", run.base_model]
    assert "--enable-lora" in argv
    modules = argv[argv.index("--lora-modules") + 1:]
    assert modules == [f"{run.served_model.served_name}={run.adapter_path}"]


def test_dpo_trains_on_corrections(export_with_pairs, tiny):
    call_command("train_adapter", "--export", str(export_with_pairs), "--literature", "none",
                 "--method", "dpo", "--base-model", str(tiny), "--max-steps", "1",
                 "--batch-size", "2", "--max-length", "512", stdout=StringIO())
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.COMPLETE
    assert run.training_set.dpo_records == 2
    assert run.manifest["method"] == "dpo" and run.served_model.name.startswith("literature-dpo")


def test_a_cancelled_run_resumes_from_its_checkpoint(export_with_pairs, tiny, monkeypatch):
    training_set = services.training_set_create(name="resume", export_dir=export_with_pairs,
                                                literature="none")
    run = services.training_run_create(
        training_set=training_set, base_model=tiny,
        hyperparameters=Hyperparameters(max_steps=4, batch_size=1, save_steps=100,
                                        logging_steps=1, max_length=512))
    record = services._record_progress

    def cancel_at_two(run_id, progress):
        record(run_id, progress)
        if progress.step >= 2:
            TrainingRun.objects.filter(pk=run_id).update(cancel_requested=True)

    monkeypatch.setattr(services, "_record_progress", cancel_at_two)
    services.execute_training_run(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    stopped_at = run.step
    assert 2 <= stopped_at < 4 and "Resume" in run.error_message
    assert run.served_model is None

    monkeypatch.setattr(services, "_record_progress", record)
    assert services.training_run_resume(run_id=run.pk) is not None  # queued (no broker: fails)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.PENDING)
    services.execute_training_run(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.COMPLETE
    assert run.resumed_from_step == stopped_at and run.step == 4
    assert [point["step"] for point in run.curve] == [1, 2, 3, 4][:stopped_at] + list(
        range(stopped_at + 1, 5))


def test_bad_inputs_get_a_sentence_saying_what_to_do(export_with_pairs, tiny, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("train_adapter", "--export", str(export_with_pairs), "--literature",
                     "none", "--base-model", str(tmp_path / "nowhere"), stdout=StringIO())
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "config.json").write_text('{"architectures": ["BertModel"]}')
    (tmp_path / "encoder" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CommandError, match="not a causal language model"):
        call_command("train_adapter", "--export", str(export_with_pairs), "--literature",
                     "none", "--base-model", str(tmp_path / "encoder"), stdout=StringIO())
    with pytest.raises(CommandError, match="cannot fit"):
        call_command("train_adapter", "--export", str(export_with_pairs), "--literature",
                     "none", "--base-model", str(tiny), "--target-modules", "no_such_proj",
                     "--max-steps", "1", stdout=StringIO())
    with pytest.raises(CommandError, match=r"too long for --max-length 64.*at least \d+"):
        call_command("train_adapter", "--export", str(export_with_pairs), "--literature",
                     "none", "--base-model", str(tiny), "--max-length", "64", "--max-steps",
                     "1", stdout=StringIO())
    sft = export_with_pairs / "sft.jsonl"
    sft.write_text(sft.read_text().replace("metformin", "metfornim"))
    with pytest.raises(CommandError, match="fails verification"):
        call_command("train_adapter", "--export", str(export_with_pairs), "--literature",
                     "none", "--base-model", str(tiny), stdout=StringIO())


def test_dpo_without_corrections_is_refused(reviewed, exported, tiny):
    reviewed("Is metformin safe in stage 3 kidney disease?")
    export = exported()
    with pytest.raises(CommandError, match="no DPO examples.*corrections"):
        call_command("train_adapter", "--export", str(export), "--literature", "none",
                     "--method", "dpo", "--base-model", str(tiny), stdout=StringIO())


def test_too_little_memory_is_refused_before_loading(export_with_pairs, tiny, monkeypatch):
    monkeypatch.setattr("training.trainer.available_memory_bytes", lambda: 64 << 20)
    training_set = services.training_set_create(name="mem", export_dir=export_with_pairs,
                                                literature="none")
    run = services.training_run_create(training_set=training_set, base_model=tiny)
    services.execute_training_run(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "GiB of memory" in run.error_message and "--batch-size" in run.error_message

