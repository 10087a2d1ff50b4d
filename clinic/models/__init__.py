"""The clinic's tables, one module per concept."""

from clinic.models.consultation import (
    Claim,
    Consultation,
    DeepConsultStep,
    Feedback,
    RetrievedPassage,
)

__all__ = ["Claim", "Consultation", "DeepConsultStep", "Feedback", "RetrievedPassage"]

from clinic.models.evaluation import EvalResult, EvalRun, PromotionDecision  # noqa: E402

__all__ += ["EvalResult", "EvalRun", "PromotionDecision"]

from clinic.models.review import (  # noqa: E402
    ExportBatch,
    PhiClearance,
    ReviewDecision,
    ReviewItem,
    ReviewReason,
)

__all__ += ["ExportBatch", "PhiClearance", "ReviewDecision", "ReviewItem", "ReviewReason"]
