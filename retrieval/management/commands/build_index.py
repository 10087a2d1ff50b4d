"""python manage.py build_index [--index-type TYPE] [--force]"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from retrieval.index_build import INDEX_TYPES, build_index


class Command(BaseCommand):
    help = "Build a new index version from the database (skipped when nothing changed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--index-type", choices=INDEX_TYPES,
                            help="Override the choice made from collection size and GPUs.")
        parser.add_argument("--force", action="store_true", help="Build even if unchanged.")

    def handle(self, *args: Any, **options: Any) -> None:
        manifest = build_index(index_type=options["index_type"], force=options["force"])
        self.stdout.write(json.dumps({key: manifest[key] for key in (
            "version", "index_type", "articles", "chunks", "embedding_model", "seconds")},
            indent=2))
