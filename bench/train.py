"""Base model versus the LoRA adapter the product trains, on PubMedQA* questions that no training
example came from; training cost; MIRAGE subsets for regressions. Prints figures, asserts only
that the held-out half never reached the training set.

    .venv/bin/python bench/train.py --model tiny --heldout 8 --train 8 --max-steps 3 \\
        --mirage 4 --out /tmp/train_bench/tiny                      # the pipeline, in minutes
    nohup nice -n 5 .venv/bin/python bench/train.py --out /tmp/train_bench/full \\
        > /tmp/train_bench/log 2>&1 &                               # SmolLM2, 250 held out

Everything goes through the product's own commands, run as subprocesses of `manage.py` with
this bench's environment (VAR_DIR, TRAINING_DIR, MODEL_BASE_URL, ... under --out):

- data: pqal_dev.json's PMIDs ordered by sha256("<seed>:<PMID>"); the first --heldout are the
  HELD-OUT half (written to OUT/held_out.json, PubMedQA format), the next --train the TRAIN
  half. `train_adapter --set-only --literature files` builds the training set: the synthetic
  literature set from the TRAIN half (question = QUESTION, context = CONTEXTS, conclusion =
  LONG_ANSWER; the yes/no/maybe label is decided from the conclusion by the product's builder,
  as PubMedQA's artificial set was labelled, never read from the gold final_decision) plus the
  question-titled MEDLINE articles of --medline, decontaminated (`--decontaminate`) against the
  HELD-OUT file (its PMIDs, questions and near-duplicate questions) and MIRAGE.
- train: `train_adapter --training-set NAME` (PEFT LoRA, TRL SFTTrainer) on --model; the
  adapter's merged weights are registered as a candidate served model.
- eval: `ingest` the PubMedQA abstracts (the retrieval corpus: all of --data, both halves),
  Redis and `transformers serve` started as launcher/processes.py starts them (unpinned, in
  TRAINING_SERVED_DIR, so one server answers for the base folder and the adapter's served name),
  then `evaluate --suite pubmedqa --data OUT/held_out.json --model M` for the base and the
  adapter, and `evaluate --suite mirage --limit N` for both.

Correct = the answer line the evaluation parses equals the held-out item's final_decision. The
headline accuracy is over every held-out question (an unparseable answer or an error counts as
not correct: the gate's figure), with a Wilson 95% interval. The majority baseline always answers
the TRAIN half's most common final_decision. Stages (--stage) are skipped when their result file
is in --out, so a killed run goes on where it stopped (training resumes from its checkpoint,
evaluation with `evaluate --resume`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

MODEL_FOLDERS = {"smollm2": "smollm2-135m-instruct", "tiny": "tiny-llama-test"}
_QUESTION = re.compile(r"<question>\n(.*?)\n</question>", re.DOTALL)
_PMID = re.compile(r'pmid="([^"]*)"')


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> str:
    return "load average " + " / ".join(f"{value:.2f}" for value in os.getloadavg())


def rank(seed: int, pmid: str) -> str:
    return hashlib.sha256(f"{seed}:{pmid}".encode()).hexdigest()


def normalised(question: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", question.lower()).split())


def manage(*args: str, out_file: Path | None = None) -> str:
    """Run `manage.py ARGS` with this bench's environment; stream its output, return stdout."""
    command = [sys.executable, str(ROOT / "manage.py"), *args]
    say("$ manage.py " + " ".join(args))
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env=os.environ.copy())
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        # --json output is kept for the files; everything else is the log.
        if out_file is None:
            print("    " + line.rstrip(), flush=True)
    if process.wait() != 0:
        raise SystemExit(f"manage.py {args[0]} failed with exit code {process.returncode}")
    text = "".join(lines)
    if out_file is not None:
        out_file.write_text(text)
    return text


def last_json(text: str) -> dict[str, Any]:
    start = text.rfind("\n{")
    return dict(json.loads(text[start + 1 if start >= 0 else text.index("{"):]))


# --- the environment ---------------------------------------------------------------------------

def configure(args: argparse.Namespace) -> dict[str, Any]:
    """Environment for this process and every manage.py it runs; then Django."""
    from launcher.processes import free_port

    out = args.out
    var_dir = Path(args.var_dir or os.environ.get("VAR_DIR") or out / "var").resolve()
    cache = Path(os.environ.get("MODEL_CACHE_DIR") or ROOT / "var" / "models").resolve()
    base = (args.base_model or cache / MODEL_FOLDERS[args.model]).resolve()
    port = args.model_port or free_port()
    os.environ.update({
        "VAR_DIR": str(var_dir), "MODEL_CACHE_DIR": str(cache),
        "TRAINING_DIR": str(out / "training"),
        "LITERATURE_DATA_DIR": str(args.literature_dir),
        "MODEL_BASE_URL": f"http://127.0.0.1:{port}/v1", "MODEL_NAME": str(base),
        "MODEL_TOKENIZER": str(base), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false"})
    # A 2-core machine shared with other work answers one evaluation question in minutes at
    # worst; the default 60 s would turn slowness into errors.
    os.environ.setdefault("MODEL_READ_TIMEOUT", "900")
    os.environ.setdefault("MODEL_FIRST_TOKEN_TIMEOUT", "900")
    if not os.environ.get("REDIS_URL"):
        os.environ.setdefault("EMBEDDED_REDIS_PORT", str(free_port()))
    import django

    django.setup()
    return {"var_dir": var_dir, "base": base, "port": port}


# --- data --------------------------------------------------------------------------------------

def stage_data(args: argparse.Namespace) -> dict[str, Any]:
    from training.literature import LiteratureSource, decide_label, split_conclusion
    from training.models import TrainingSet

    result_file = args.out / "data.json"
    if result_file.exists():
        say(f"data: done before ({result_file})")
        return dict(json.loads(result_file.read_text()))
    items = json.loads(args.data.read_text())
    order = sorted(items, key=lambda pmid: rank(args.seed, pmid))
    if args.heldout + args.train > len(order):
        raise SystemExit(f"--heldout {args.heldout} + --train {args.train} is more than the "
                         f"{len(order)} items of {args.data}.")
    held_out = {pmid: items[pmid] for pmid in order[:args.heldout]}
    train_half = {pmid: items[pmid] for pmid in order[args.heldout:args.heldout + args.train]}
    held_out_file, train_file = args.out / "held_out.json", args.out / "train_half.json"
    held_out_file.write_text(json.dumps(held_out, indent=1))
    train_file.write_text(json.dumps(train_half, indent=1))
    say(f"split {args.data.name} (seed {args.seed}): {len(held_out)} held out -> "
        f"{held_out_file}, {len(train_half)} in the TRAIN half")

    # How often the builder's label (from the conclusion) agrees with the gold one, on the
    # TRAIN half: what the synthetic labels are worth.
    agree: Counter[str] = Counter()
    for pmid, item in train_half.items():
        labels = item.get("LABELS") or []
        sections = [(labels[i] if i < len(labels) else "", text)
                    for i, text in enumerate(item["CONTEXTS"])]
        sections.append(("CONCLUSIONS", item.get("LONG_ANSWER") or ""))
        source = LiteratureSource(pmid=pmid, title=item["QUESTION"], sections=tuple(sections))
        parts = split_conclusion(source.sections)
        label = decide_label(source.title, parts[1]) if parts else None
        agree["unlabelled" if label is None else
              "agrees" if label == item["final_decision"] else "differs"] += 1

    manage("migrate", "--noinput", "-v", "0")
    name = f"bench-{args.seed}-{args.heldout}-{args.train}-" + (
        "balanced-" if args.balance_labels else "") + (
        "expert-" if args.expert_labels else "") + (
        "abstract-" if args.gold_passage == "abstract" else "") + hashlib.sha256(
        str(args.out.resolve()).encode()).hexdigest()[:6]
    if not TrainingSet.objects.filter(name=name).exists():
        options = ["train_adapter", "--set-only", "--name", name, "--literature", "files",
                   "--literature-file", str(train_file)]
        for medline in args.medline:
            options += ["--literature-file", str(medline)]
        options += ["--decontaminate", str(held_out_file), "--decontaminate",
                    str(args.literature_dir / "exam" / "mirage_medmcqa_mmlu.json")]
        if args.balance_labels:
            options.append("--balance-labels")
        if args.expert_labels:
            options.append("--expert-labels")
        options += ["--gold-passage", args.gold_passage]
        manage(*options)
    training_set = TrainingSet.objects.get(name=name)
    sft = [json.loads(line) for line in
           (Path(training_set.path) / "sft.jsonl").read_text().splitlines() if line.strip()]

    # Never train on a held-out item: no held-out PMID among any example's passages, no
    # held-out question (normalised) as any example's question.
    held_pmids = set(held_out)
    held_questions = {normalised(item["QUESTION"]) for item in held_out.values()}
    for record in sft:
        user = record["messages"][-2]["content"]
        question = _QUESTION.search(user)
        leaked = held_pmids.intersection(_PMID.findall(user))
        assert not leaked, f"held-out PMID(s) {sorted(leaked)} in a training example"
        assert question is None or normalised(question.group(1)) not in held_questions, \
            "a held-out question is a training example's question"
    card = training_set.card
    literature = card["sources"]["literature"] or {}
    summary = {
        "training_set": name, "path": training_set.path, "card_sha256": training_set.card_sha256,
        "held_out_file": str(held_out_file), "train_file": str(train_file),
        "held_out": len(held_out), "train_half": len(train_half), "seed": args.seed,
        "held_out_sha256": hashlib.sha256(held_out_file.read_bytes()).hexdigest(),
        "held_out_gold": dict(Counter(item["final_decision"] for item in held_out.values())),
        "train_gold": dict(Counter(item["final_decision"] for item in train_half.values())),
        "builder_label_vs_gold_on_train_half": dict(agree),
        "sft_records": training_set.sft_records, "counts": card["counts"]["sft"],
        "filtered": card["filtered"], "articles_skipped": literature.get("articles_skipped"),
        "examples_built": literature.get("examples_built"),
        "checked": f"{len(sft)} examples: no held-out PMID in any passage, no held-out question",
    }
    result_file.write_text(json.dumps(summary, indent=2))
    return summary


# --- training ----------------------------------------------------------------------------------

def stage_train(args: argparse.Namespace, data: dict[str, Any], base: Path) -> dict[str, Any]:
    from training.models import TrainingRun

    result_file = args.out / "train.json"
    if result_file.exists():
        say(f"train: done before ({result_file})")
        return dict(json.loads(result_file.read_text()))
    fit = lengths_against(Path(data["path"]) / "sft.jsonl", base, args.max_length)
    say(f"max-length {args.max_length}: {fit['fits']} of {fit['examples']} examples fit whole; "
        f"{fit['answer_cut']} lose the end of their answer, {fit['dropped']} are dropped "
        f"(prompt alone too long; the trainer drops them silently); longest {fit['longest']} "
        "tokens")
    before = load()
    started = time.monotonic()
    wanted = {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
              "gradient_accumulation": args.gradient_accumulation,
              "max_length": args.max_length, "lora_r": args.lora_r}
    unfinished = next((run for run in TrainingRun.objects.filter(
        training_set__name=data["training_set"], base_model=str(base), seed=args.seed)
        .exclude(status=TrainingRun.Status.COMPLETE).order_by("-pk")
        if all(run.hyperparameters.get(key) == value for key, value in wanted.items())), None)
    if unfinished is not None:
        say(f"training run {unfinished.pk} stopped at step {unfinished.step}; resuming it")
        text = manage("train_adapter", "--resume", str(unfinished.pk))
    else:
        options = ["train_adapter", "--training-set", data["training_set"], "--base-model",
                   str(base), "--epochs", str(args.epochs), "--max-steps", str(args.max_steps),
                   "--batch-size", str(args.batch_size), "--gradient-accumulation",
                   str(args.gradient_accumulation), "--max-length", str(args.max_length),
                   "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_r * 2),
                   "--save-steps", str(args.save_steps), "--logging-steps",
                   str(args.logging_steps), "--seed", str(args.seed)]
        if args.learning_rate:
            options += ["--learning-rate", str(args.learning_rate)]
        text = manage(*options)
    run = TrainingRun.objects.get(pk=last_json(text)["run"])
    manifest = run.manifest
    summary = {
        "run": run.pk, "served_name": manifest["served_name"],
        "registry_name": run.served_model.name if run.served_model else manifest["served_name"],
        "base_model": manifest["base_model"], "hyperparameters": manifest["hyperparameters"],
        "device": manifest["device"], "examples": manifest["examples"],
        "steps": manifest["steps"], "tokens": manifest["tokens"],
        "train_seconds": manifest["seconds"], "tokens_per_second": manifest["tokens_per_second"],
        "command_wall_seconds": round(time.monotonic() - started, 1),
        "resumed_from_step": manifest["resumed_from_step"],
        "first_loss": manifest["curve"][0]["loss"] if manifest["curve"] else None,
        "final_loss": manifest["curve"][-1]["loss"] if manifest["curve"] else None,
        "libraries": manifest["libraries"], "load_before": before, "load_after": load(),
        "cpu_count": os.cpu_count(), "max_length_fit": fit,
    }
    result_file.write_text(json.dumps(summary, indent=2))
    return summary


def lengths_against(sft_file: Path, base: Path, max_length: int) -> dict[str, int]:
    """How the SFT examples fit max_length in the base model's chat template: truncation cuts
    the end, which is the answer, and an example whose prompt alone fills it has no loss left."""
    from transformers import AutoTokenizer  # heavy: only for this count

    tokenizer: Any = AutoTokenizer.from_pretrained(base)
    counts = {"examples": 0, "fits": 0, "answer_cut": 0, "dropped": 0, "longest": 0}
    for line in sft_file.read_text().splitlines():
        messages = json.loads(line)["messages"]
        whole = len(tokenizer.apply_chat_template(messages, tokenize=True,
                                                  return_dict=True)["input_ids"])
        prompt = len(tokenizer.apply_chat_template(messages[:-1], tokenize=True,
                                                   add_generation_prompt=True,
                                                   return_dict=True)["input_ids"])
        counts["examples"] += 1
        counts["longest"] = max(counts["longest"], whole)
        key = "fits" if whole <= max_length else "dropped" if prompt >= max_length \
            else "answer_cut"
        counts[key] += 1
    return counts


# --- evaluation --------------------------------------------------------------------------------

def start_servers(stack: ExitStack, args: argparse.Namespace, env: dict[str, Any]) -> None:
    from django.conf import settings

    from launcher.processes import (
        port_is_open,
        start_embedded_redis,
        start_model_server,
        stop_process,
        wait_for_http,
    )
    from training.serving import served_dir

    if settings.REDIS_IS_EMBEDDED and port_is_open("127.0.0.1", settings.EMBEDDED_REDIS_PORT):
        say(f"Redis already answers on port {settings.EMBEDDED_REDIS_PORT}; using it")
    elif settings.REDIS_IS_EMBEDDED:
        log = stack.enter_context(open(args.out / "redis.log", "ab"))
        redis = start_embedded_redis(settings.EMBEDDED_REDIS_PORT, Path(settings.VAR_DIR) /
                                     "redis-bench", log=log)
        stack.callback(stop_process, redis)
    log = stack.enter_context(open(args.out / "model-server.log", "ab"))
    server = start_model_server(env["base"], env["port"], log=log,
                                continuous_batching=args.continuous_batching,
                                kv_blocks=settings.LOCAL_MODEL_KV_BLOCKS,
                                adapters_dir=served_dir())
    stack.callback(stop_process, server)
    wait_for_http(f"http://127.0.0.1:{env['port']}/health", server, 300, "the model server")
    say(f"model server on port {env['port']} (log {args.out / 'model-server.log'})")


def evaluate(args: argparse.Namespace, suite: str, label: str, model: str,
             extra: list[str]) -> dict[str, Any]:
    from evaluation.models import EvalRun

    result_file = args.out / f"eval-{suite}-{label}.json"
    if result_file.exists():
        say(f"{suite} on {label}: done before ({result_file})")
        return dict(json.loads(result_file.read_text()))
    started = time.monotonic()
    marker = args.out / f"eval-{suite}-{label}.run"
    run_id = int(marker.read_text()) if marker.exists() else None
    if run_id and EvalRun.objects.filter(pk=run_id).exists():
        say(f"{suite} on {label}: resuming evaluation run {run_id}")
        text = manage("evaluate", "--resume", str(run_id), "--json", out_file=result_file)
    else:
        before = set(EvalRun.objects.values_list("pk", flat=True))
        # The run id is written as soon as the run exists, so a killed bench resumes it.
        process_args = ["evaluate", "--suite", suite, "--model", model, "--json", *extra]
        command = [sys.executable, str(ROOT / "manage.py"), *process_args]
        say("$ manage.py " + " ".join(process_args))
        with open(result_file.with_suffix(".tmp"), "w") as handle:
            process = subprocess.Popen(command, cwd=ROOT, stdout=handle, env=os.environ.copy())
            while process.poll() is None:
                new = EvalRun.objects.exclude(pk__in=before).order_by("pk").first()
                if new is not None and not marker.exists():
                    marker.write_text(str(new.pk))
                time.sleep(5)
        if process.returncode != 0:
            raise SystemExit(f"evaluate {suite} {label} failed ({process.returncode})")
        text = result_file.with_suffix(".tmp").read_text()
    summary = last_json(text)
    summary["bench_wall_seconds"] = round(time.monotonic() - started, 1)
    result_file.write_text(json.dumps(summary, indent=2, default=str))
    say(f"{suite} on {label}: run {summary['id']} {summary['status']} in "
        f"{summary['wall_seconds']:.0f} s ({load()})")
    return summary


def stage_eval(args: argparse.Namespace, data: dict[str, Any], trained: dict[str, Any] | None,
               env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Both models, or the base alone when there is no adapter yet (--stage base)."""
    if not (args.out / "ingest.done").exists():
        manage("ingest", str(args.data))
        (args.out / "ingest.done").write_text(str(args.data))
    models = {}
    if trained is not None:
        # The adapter first: on a machine about to be reclaimed its figure is the new one.
        models["adapter"] = trained["registry_name"]
    models["base"] = str(env["base"])
    runs: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        pending = [(suite, label) for suite in ("pubmedqa", "mirage") for label in models
                   if (suite == "pubmedqa" or args.mirage > 0)
                   and not (args.out / f"eval-{suite}-{label}.json").exists()]
        if pending:
            start_servers(stack, args, env)
        for label, model in models.items():
            runs[f"pubmedqa-{label}"] = evaluate(
                args, "pubmedqa", label, model, ["--data", data["held_out_file"]])
        if args.mirage > 0:
            for label, model in models.items():
                runs[f"mirage-{label}"] = evaluate(args, "mirage", label, model,
                                                   ["--limit", str(args.mirage)])
    return runs


# --- the report --------------------------------------------------------------------------------

def pct(block: dict[str, Any]) -> str:
    if not block or block.get("value") is None:
        return "-"
    return (f"{block['value']:.1%} [{block['ci_low']:.1%}, {block['ci_high']:.1%}] "
            f"({block['successes']}/{block['n']})")


def report(args: argparse.Namespace, data: dict[str, Any], trained: dict[str, Any] | None,
           runs: dict[str, dict[str, Any]]) -> None:
    from django.conf import settings

    from evaluation.gate import compare_runs
    from evaluation.metrics import proportion
    from evaluation.models import EvalRun

    print("\n=== data (held out = never trained on) ===")
    print(f"held out: {data['held_out']} PubMedQA* items ({data['held_out_file']}, sha256 "
          f"{data['held_out_sha256'][:12]}), gold {data['held_out_gold']}")
    print(f"TRAIN half: {data['train_half']} items, gold {data['train_gold']}; the builder's "
          f"label (from the conclusion) vs gold: {data['builder_label_vs_gold_on_train_half']}")
    print(f"training set {data['training_set']}: {data['sft_records']} SFT examples "
          f"({data['examples_built']} built), by source {data['counts']['by_source']}, "
          f"by label {data['counts']['by_label']}")
    print(f"filtered: {data['filtered']}; articles skipped: {data['articles_skipped']}")
    print(f"checked: {data['checked']}")
    if trained:
        hyper = trained["hyperparameters"]
        print("\n=== training cost ===")
        print(f"run {trained['run']} -> {trained['served_name']} on {trained['device']} "
              f"({trained['cpu_count']} CPUs): {trained['examples']} examples, "
              f"{trained['steps']} steps, {trained['tokens']:,} tokens in "
              f"{trained['train_seconds']:.0f} s = {trained['tokens_per_second']} tokens/s "
              f"(command {trained['command_wall_seconds']:.0f} s); loss "
              f"{trained['first_loss']} -> {trained['final_loss']}")
        print(f"hyperparameters: epochs {hyper['epochs']}, max_steps {hyper['max_steps']}, "
              f"batch {hyper['batch_size']}x{hyper['gradient_accumulation']}, max_length "
              f"{hyper['max_length']}, lr {hyper['learning_rate']}, LoRA r {hyper['lora_r']} "
              f"alpha {hyper['lora_alpha']} on {hyper['target_modules']}")
        print(f"{trained['load_before']} before, {trained['load_after']} after")
    if "pubmedqa-base" not in runs:
        return
    labels = [label for label in ("base", "adapter") if f"pubmedqa-{label}" in runs]
    majority = max(data["train_gold"], key=lambda label: data["train_gold"][label])
    majority_block = proportion(data["held_out_gold"].get(majority, 0), data["held_out"])
    print("\n=== PubMedQA* on the held-out half (accuracy over all questions; "
          "unparseable = not correct) ===")
    print(f"{'model':<44} {'n':>4}  {'accuracy, Wilson 95%':<32} {'parsed':>7}  "
          f"{'readable-only accuracy':<30} {'gold cited':>10}  {'wall':>6}")
    blocks = {}
    for label in labels:
        summary = runs[f"pubmedqa-{label}"]
        block = summary["metrics"]["headline"]
        blocks[label] = block
        parsed = (block["questions"] - block["unparseable"] - block["errors"]) / max(
            block["questions"], 1)
        cited = (block.get("gold_cited") or {}).get("value")
        print(f"{label + ' ' + Path(summary['model']).name[-36:]:<44} {block['questions']:>4}  "
              f"{pct(block['accuracy_all']):<32} {parsed:>7.1%}  {pct(block['accuracy']):<30} "
              f"{'-' if cited is None else f'{cited:.1%}':>10}  "
              f"{summary['wall_seconds'] or 0:>5.0f}s")
    print(f"{'majority baseline (always ' + repr(majority) + ')':<44} {data['held_out']:>4}  "
          f"{pct(majority_block):<32}")
    for label in labels:
        per_label = blocks[label].get("labels")
        if per_label:
            print(f"{label}: recall per gold label " + ", ".join(
                f"{gold} {block['successes']}/{block['n']}"
                for gold, block in sorted(per_label["recall"].items()))
                + f"; balanced accuracy {per_label['balanced_accuracy']:.1%}; predicted "
                + str(per_label["predicted"]))
    if len(labels) < 2:
        return
    base, adapter = blocks["base"]["accuracy_all"], blocks["adapter"]["accuracy_all"]
    outside = adapter["value"] > base["ci_high"] and base["value"] < adapter["ci_low"]
    print(f"gain {adapter['value'] - base['value']:+.1%}; outside both intervals: "
          f"{'yes' if outside else 'no'}; adapter above the majority baseline's interval: "
          f"{'yes' if adapter['ci_low'] > majority_block['ci_high'] else 'no'}; target >= 60%: "
          f"{'met' if adapter['value'] >= 0.60 else 'not met'}")
    for suite in ("pubmedqa", "mirage"):
        if f"{suite}-adapter" not in runs:
            continue
        candidate = EvalRun.objects.get(pk=runs[f"{suite}-adapter"]["id"])
        serving = EvalRun.objects.get(pk=runs[f"{suite}-base"]["id"])
        if suite == "mirage":
            print(f"\n=== MIRAGE, first {args.mirage} questions (headline = with retrieval) ===")
            for label, run in (("base", serving), ("adapter", candidate)):
                for condition, block in sorted(run.metrics["conditions"].items(),
                                               reverse=True):
                    print(f"{label:<8} {condition:<13} {pct(block['accuracy_all']):<32} "
                          f"unparseable {block['unparseable']}")
        comparison = compare_runs(candidate, serving)
        print(f"gate ({suite}, margin {settings.EVAL_GATE_MARGIN:.0%}, min items "
              f"{settings.EVAL_GATE_MIN_ITEMS}): {comparison['verdict']}: "
              f"{comparison.get('reason', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    literature_dir = Path(os.environ.get("LITERATURE_DATA_DIR") or ROOT.parent / "shared" / "data")
    parser.add_argument("--stage", choices=["data", "base", "train", "eval", "report", "all"],
                        default="all", help="Run up to and including this stage (finished "
                        "stages are skipped); base = data, then the base model's evaluation "
                        "alone (it needs no adapter); report prints finished stages' figures.")
    parser.add_argument("--out", type=Path, default=Path("/tmp/train_bench/full"),
                        help="Output folder (never inside the repository).")
    parser.add_argument("--var-dir", type=Path, help="VAR_DIR (database, index); default "
                        "$VAR_DIR, else OUT/var.")
    parser.add_argument("--literature-dir", type=Path, default=literature_dir)
    parser.add_argument("--data", type=Path, help="PubMedQA file to split; default "
                        "LITERATURE_DATA_DIR/pubmedqa/pqal_dev.json.")
    parser.add_argument("--medline", type=Path, nargs="*", help="MEDLINE files whose "
                        "question-titled articles join the training set; default "
                        "LITERATURE_DATA_DIR/pubmed/*.xml.gz.")
    parser.add_argument("--heldout", type=int, default=250)
    parser.add_argument("--train", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--balance-labels", action="store_true",
                        help="train_adapter --balance-labels: cap the commonest answer label "
                        "of the training set at the count of the second commonest.")
    parser.add_argument("--expert-labels", action="store_true",
                        help="train_adapter --expert-labels: the TRAIN half's expert "
                        "final_decision is the label (never the held-out half's).")
    parser.add_argument("--gold-passage", choices=["context", "abstract"], default="context",
                        help="train_adapter --gold-passage.")
    parser.add_argument("--model", choices=sorted(MODEL_FOLDERS), default="smollm2")
    parser.add_argument("--base-model", type=Path, help="A model folder instead of --model.")
    parser.add_argument("--model-port", type=int, help="Port of the model server started for "
                        "evaluation; default a free one.")
    parser.add_argument("--continuous-batching", action=argparse.BooleanOptionalAction,
                        default=False, help="Start the model server with continuous batching "
                        "(./run's default); off by default: on this 2-core CPU machine its "
                        "requests timed out where plain serving answered.")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--gradient-accumulation", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1664, help="Tokens per example; "
                        "the synthetic examples run to about 1,625 tokens with SmolLM2's "
                        "template (1024 would drop most of them).")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 x r).")
    parser.add_argument("--save-steps", type=int, default=25)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--mirage", type=int, default=20, help="MIRAGE questions per model "
                        "(the first N of the file); 0 to skip.")
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.out == ROOT or ROOT in args.out.parents:
        raise SystemExit("--out must be outside the repository.")
    args.out.mkdir(parents=True, exist_ok=True)
    args.data = (args.data or args.literature_dir / "pubmedqa" / "pqal_dev.json").resolve()
    if args.medline is None:
        args.medline = sorted((args.literature_dir / "pubmed").glob("*.xml.gz"))
    env = configure(args)
    say(f"bench/train.py --stage {args.stage} -> {args.out} (VAR_DIR {env['var_dir']}, base "
        f"{env['base']}, {load()})")
    reporting = args.stage == "report"
    data = stage_data(args) if not reporting or (args.out / "data.json").exists() else None
    if data is None:
        raise SystemExit("Nothing to report: the data stage has not run.")
    trained = None
    if args.stage in ("train", "eval", "all") or (
            reporting and (args.out / "train.json").exists()):
        trained = stage_train(args, data, env["base"])
    runs: dict[str, dict[str, Any]] = {}
    if reporting:
        for path in args.out.glob("eval-*.json"):
            runs[path.stem.removeprefix("eval-")] = json.loads(path.read_text())
    elif args.stage in ("base", "eval", "all"):
        runs = stage_eval(args, data, trained, env)
    report(args, data, trained, runs)


if __name__ == "__main__":
    main()
