"""The review settings, each with its default (config/settings.py reads them from the env)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def claim_minutes() -> int:
    return int(getattr(settings, "REVIEW_CLAIM_MINUTES", 30))


def sample_rate() -> float:
    return float(getattr(settings, "REVIEW_SAMPLE_RATE", 0.05))


def confidence_threshold() -> float:
    return float(getattr(settings, "REVIEW_CONFIDENCE_THRESHOLD", 0.5))


def required_reviews() -> int:
    return int(getattr(settings, "REVIEW_REQUIRED_REVIEWS", 1))


def unsafe_required_reviews() -> int:
    return int(getattr(settings, "REVIEW_UNSAFE_REQUIRED_REVIEWS", 2))


def export_dir() -> Path:
    return Path(getattr(settings, "EXPORT_DIR", Path(settings.VAR_DIR) / "exports"))


def eval_percent() -> int:
    return int(getattr(settings, "EXPORT_EVAL_PERCENT", 20))


def split_salt() -> str:
    return str(getattr(settings, "EXPORT_SPLIT_SALT", "split-v1"))


def near_duplicate_jaccard() -> float:
    return float(getattr(settings, "EXPORT_NEAR_DUPLICATE_JACCARD", 0.8))


def pseudonym_key() -> str:
    return str(getattr(settings, "EXPORT_PSEUDONYM_KEY", "") or settings.SECRET_KEY)
