"""The clinic's tables, one module per concept."""

from clinic.models.consultation import (
    Claim,
    Consultation,
    DeepConsultStep,
    Feedback,
    RetrievedPassage,
)

__all__ = ["Claim", "Consultation", "DeepConsultStep", "Feedback", "RetrievedPassage"]
