from django import forms
from django.conf import settings

from clinic.models import Feedback


class AskForm(forms.Form):
    question = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                               strip=False)
    patient_note = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                                   strip=False, label="Patient context (optional)")
    include_retracted = forms.BooleanField(
        required=False, label="Include retracted articles",
        help_text="Shown marked as retracted, with the retraction notice; never counted as "
                  "support for a statement.")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["question"].widget.attrs["maxlength"] = str(settings.QUESTION_MAX_CHARS * 2)
        for field in self.fields.values():
            # clinic.services.clean_question explains binary input better than the default.
            field.validators = []


class FeedbackForm(forms.Form):
    helpful = forms.TypedChoiceField(choices=[("yes", "Helpful"), ("no", "Not helpful")],
                                     coerce=lambda value: value == "yes")
    problems = forms.MultipleChoiceField(choices=Feedback.Problem.choices, required=False,
                                         widget=forms.CheckboxSelectMultiple)
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    correction = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                 label="Correction (optional)")
