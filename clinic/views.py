"""Pages for clinicians: thin, everything real happens in services, selectors and quick.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clinic import quick
from clinic.forms import AskForm, FeedbackForm
from clinic.models import Consultation
from clinic.selectors import consultation_for_user, consultation_history, consultation_snapshot
from clinic.services import (
    QuestionRejected,
    RateLimited,
    consultation_cancel,
    consultation_create,
    consultation_retry,
    feedback_create,
    quick_answer_resume,
)

logger = logging.getLogger(__name__)


@require_http_methods(["GET", "POST"])
def ask(request: HttpRequest) -> HttpResponse:
    # "Rephrase" on a withheld answer comes back here with its question in the box.
    form = AskForm(request.POST or None,
                   initial={"question": request.GET.get("question", "")[:4000]})
    if request.method == "POST" and form.is_valid():
        mode = Consultation.Mode.DEEP if "deep" in request.POST else Consultation.Mode.QUICK
        try:
            consultation = consultation_create(
                user=request.user, question=form.cleaned_data["question"],  # type: ignore[arg-type]
                patient_note=form.cleaned_data["patient_note"], mode=mode,
                include_retracted=form.cleaned_data["include_retracted"])
        except QuestionRejected as error:
            return render(request, "clinic/ask.html", {"form": form, "error": error.message},
                          status=400)
        except RateLimited as error:
            # The page keeps the typed question in the form, ready to send again.
            message = f"{error.message} Your question is still in the box below."
            response = render(request, "clinic/ask.html", {"form": form, "error": message},
                              status=429)
            response["Retry-After"] = str(error.retry_after)
            return response
        return redirect("clinic:consultation", consultation_id=consultation.pk)
    recent = consultation_history(user=request.user)[:5]  # type: ignore[arg-type]
    return render(request, "clinic/ask.html", {"form": form, "recent": recent})


@require_GET
def consultation_detail(request: HttpRequest, consultation_id: int) -> HttpResponse:
    consultation = consultation_for_user(consultation_id=consultation_id,
                                         user=request.user)  # type: ignore[arg-type]
    snapshot = consultation_snapshot(consultation.pk)
    return render(request, "clinic/consultation.html", {
        "consultation": consultation,
        "snapshot": snapshot,
        "feedback_form": FeedbackForm(),
        "own": consultation.user_id == request.user.pk,
        # django-stubs types request.user as User | AnonymousUser; the login middleware
        # (LoginRequiredEverywhereMiddleware) lets only logged-in users reach this view.
        "feedback_given": consultation.feedback.filter(
            user=request.user).exists(),  # type: ignore[misc]
    })


@require_GET
def consultation_snapshot_json(request: HttpRequest, consultation_id: int) -> JsonResponse:
    consultation = consultation_for_user(consultation_id=consultation_id,
                                         user=request.user)  # type: ignore[arg-type]
    quick_answer_resume(consultation=consultation)
    return JsonResponse(consultation_snapshot(consultation.pk))


async def consultation_events(request: HttpRequest, consultation_id: int) -> HttpResponseBase:
    """Server-sent events: the snapshot, then tokens as they are generated, then the final state."""
    # django-stubs types the user as User | AnonymousUser; LoginRequiredEverywhereMiddleware
    # lets only logged-in users reach this view.
    user = await request.auser()
    consultation = await sync_to_async(consultation_for_user)(consultation_id=consultation_id,
                                                              user=user)  # type: ignore[arg-type]
    if consultation.mode != Consultation.Mode.QUICK or consultation.user_id != user.pk:
        async def snapshot_only() -> AsyncIterator[str]:
            snapshot = await sync_to_async(consultation_snapshot)(consultation.pk)
            yield quick.sse_frame({"event": "snapshot", "data": snapshot})
            if snapshot["finished"]:
                yield quick.sse_frame({"event": "final", "data": snapshot})
        stream: AsyncIterator[str] = snapshot_only()
    else:
        async def relay() -> AsyncIterator[str]:
            async for event in quick.consultation_events(consultation.pk):
                yield quick.sse_frame(event)
        stream = relay()
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _own_consultation(request: HttpRequest, consultation_id: int) -> Consultation:
    """Only the clinician who asked may act on a consultation; to anyone else it does not exist."""
    consultation = consultation_for_user(consultation_id=consultation_id,
                                         user=request.user)  # type: ignore[arg-type]
    if consultation.user_id != request.user.pk:
        raise Http404("No such consultation.")
    return consultation


@require_POST
def consultation_retry_view(request: HttpRequest, consultation_id: int) -> HttpResponse:
    consultation = _own_consultation(request, consultation_id)
    consultation_retry(consultation=consultation)
    return redirect("clinic:consultation", consultation_id=consultation.pk)


@require_POST
def consultation_cancel_view(request: HttpRequest, consultation_id: int) -> HttpResponse:
    consultation = _own_consultation(request, consultation_id)
    consultation = consultation_cancel(consultation=consultation)
    if consultation.status == Consultation.Status.CANCELLED:
        messages.info(request, "Cancelled. Your question is kept; press Retry to ask it again.")
    elif not consultation.is_finished:
        messages.info(request, "This answer is already being written and cannot be stopped "
                      "now; it will finish on its own.")
    return redirect("clinic:consultation", consultation_id=consultation.pk)


@require_POST
def feedback_view(request: HttpRequest, consultation_id: int) -> HttpResponse:
    consultation = _own_consultation(request, consultation_id)
    form = FeedbackForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose helpful or not helpful before sending feedback.")
        return redirect("clinic:consultation", consultation_id=consultation.pk)
    try:
        feedback_create(consultation=consultation, user=request.user,  # type: ignore[arg-type]
                        helpful=form.cleaned_data["helpful"],
                        problems=form.cleaned_data["problems"],
                        comment=form.cleaned_data["comment"],
                        correction=form.cleaned_data["correction"])
    except QuestionRejected as error:
        messages.error(request, error.message)
        return redirect("clinic:consultation", consultation_id=consultation.pk)
    messages.success(request, "Thank you: your feedback is saved and goes to the review queue.")
    return redirect("clinic:consultation", consultation_id=consultation.pk)


@require_GET
def history(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()[:200]
    page = Paginator(consultation_history(user=request.user, search=search),  # type: ignore[arg-type]
                     20).get_page(request.GET.get("page"))
    return render(request, "clinic/history.html", {"page": page, "search": search})
