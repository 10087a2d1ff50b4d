from __future__ import annotations

import shlex
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelsvc.models import ServedModel


def vllm_command_line(models: list[ServedModel], *, port: int = 8000,
                      max_model_len: int | None = None) -> list[str]:
    """`vllm serve` for one base model with every registered LoRA adapter of it."""
    bases = {m.base_model for m in models}
    if len(bases) != 1:
        raise ValueError(f"one vllm serve process serves one base model; the selected rows "
                         f"use {sorted(bases) or 'none'}: pass --base-model")
    base = bases.pop()
    adapters = sorted({(m.served_name, m.adapter_path) for m in models if m.adapter_path})
    largest_served = [m.served_name for m in models if not m.adapter_path]
    argv = ["vllm", "serve", base, "--port", str(port), "--enable-prefix-caching"]
    if largest_served and largest_served[0] != base:
        argv += ["--served-model-name", largest_served[0]]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if adapters:
        argv += ["--enable-lora", "--max-loras", str(len(adapters)), "--lora-modules"]
        argv += [f"{name}={path}" for name, path in adapters]
    return argv


class Command(BaseCommand):
    help = ("Print the `vllm serve` command line for the registry: the base model plus a "
            "--lora-modules name=path entry per adapter (the request's `model` is the name).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-model", default=None)
        parser.add_argument("--include-candidates", action="store_true",
                            help="Also load candidate adapters (for staged evaluation).")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--max-model-len", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = [ServedModel.Status.SERVING]
        if options["include_candidates"]:
            statuses.append(ServedModel.Status.CANDIDATE)
        rows = ServedModel.objects.filter(status__in=statuses)
        if options["base_model"]:
            rows = rows.filter(base_model=options["base_model"])
        try:
            argv = vllm_command_line(list(rows), port=options["port"],
                                     max_model_len=options["max_model_len"])
        except ValueError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(shlex.join(argv))
