"""Forms for the review pages: validation only, decisions live in services."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from review.models import ErrorCategory, ExportBatch, ReviewDecision, ReviewReason
from review.services import ClaimEdit

MAX_CLAIMS = 40


class QueueFilterForm(forms.Form):
    reason = forms.ChoiceField(required=False, choices=[("", "Any reason")]
                               + list(ReviewReason.choices))
    model = forms.CharField(required=False, max_length=200)
    specialty = forms.CharField(required=False, max_length=40)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


class DecisionForm(forms.Form):
    kind = forms.ChoiceField(choices=ReviewDecision.Kind.choices, widget=forms.RadioSelect)
    error_categories = forms.MultipleChoiceField(required=False, choices=ErrorCategory.choices,
                                                 widget=forms.CheckboxSelectMultiple)
    note = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                           max_length=4000)
    specialty = forms.CharField(required=False, max_length=40)

    def claim_edits(self, data: Any) -> list[ClaimEdit]:
        """claim-N-text / claim-N-citations pairs from the correction editor, in order."""
        edits = []
        for index in range(MAX_CLAIMS):
            text = data.get(f"claim-{index}-text")
            if text is None:
                continue
            citations = [int(number) for number in
                         re.findall(r"\d+", data.get(f"claim-{index}-citations", ""))]
            edits.append(ClaimEdit(text=text, citations=citations))
        return edits


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=ExportBatch.Format.choices)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    min_reviews = forms.IntegerField(min_value=1, max_value=10, initial=1)


class PhiClearanceForm(forms.Form):
    decision = forms.ChoiceField(choices=[("release", "Release for export"),
                                          ("exclude", "Keep out of exports")])
    question = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    patient_note = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    final_answer = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}))
    model_answer = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}))
    note = forms.CharField(required=False, max_length=2000)
