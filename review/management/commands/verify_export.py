"""python manage.py verify_export DIR: check each file against its manifest, line by line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from review.exports import verify_export


class Command(BaseCommand):
    help = "Check an export folder: file SHA-256 and each record's hash against the manifest."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        directory: Path = options["directory"]
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a folder.")
        problems = verify_export(directory)
        if problems:
            for problem in problems:
                self.stderr.write(problem)
            raise CommandError(f"{len(problems)} problem(s) found in {directory}.")
        self.stdout.write(f"{directory}: every file matches its manifest.")
