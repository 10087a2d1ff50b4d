"""What the clinic tells the apps above it, without importing them.

The review queue connects to these (`review/receivers.py`); the clinic never calls it directly,
so dependencies run one way (review -> clinic). Receivers run synchronously, inside the
sender's transaction when there is one, so a queued review item is stored with what caused it.
"""

from django.dispatch import Signal

# An answer was finalised (stored complete, abstained or not). Argument: consultation_id.
answer_finished = Signal()
# A clinician's feedback was stored. Arguments: consultation_id, feedback_id.
feedback_received = Signal()
