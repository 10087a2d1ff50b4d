"""JSON API for integrators (token authentication), with the same permissions as the pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import Http404, HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from clinic.models import Consultation
from clinic.quick import consultation_events, sse_frame, through_outage
from clinic.selectors import consultation_for_user, consultation_history, consultation_snapshot
from clinic.services import (
    QuestionRejected,
    RateLimited,
    consultation_cancel,
    consultation_create,
    quick_answer_resume,
)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error has one shape, `{"error": "<sentence>"}`, like the views' own errors."""
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        detail = str(response.data["detail"])
        if isinstance(exc, Http404):
            detail = "No such consultation (or it belongs to another account)."
        elif isinstance(exc, NotAuthenticated):
            detail = ("Authentication credentials were not provided; send "
                      "`Authorization: Token <key>`.")
        response.data = {"error": detail}
    return response


class ConsultationCreateSerializer(serializers.Serializer):
    question = serializers.CharField(allow_blank=True, trim_whitespace=False)
    patient_note = serializers.CharField(required=False, allow_blank=True, default="")
    mode = serializers.ChoiceField(choices=Consultation.Mode.values, default="quick")
    include_retracted = serializers.BooleanField(
        required=False, default=False,
        help_text="Also use retracted articles: marked retracted in the prompt and the evidence "
                  "list, never counted as support. Off by default.")


class ConsultationSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Consultation
        fields = ["id", "question", "mode", "status", "created_at", "completed_at", "abstained"]


ERROR_SCHEMA = inline_serializer("Error", {"error": serializers.CharField()})
PASSAGE_FIELDS = {
    "number": serializers.IntegerField(), "pmid": serializers.CharField(),
    "title": serializers.CharField(), "journal": serializers.CharField(),
    "year": serializers.IntegerField(allow_null=True),
    "publication_types": serializers.ListField(child=serializers.CharField()),
    "retracted": serializers.BooleanField(),
    "retraction_notice_pmid": serializers.CharField(allow_blank=True),
    "retraction_notice_url": serializers.URLField(allow_null=True),
    "section": serializers.CharField(),
    "text": serializers.CharField(), "score": serializers.FloatField(),
    "stages": serializers.DictField(), "url": serializers.CharField(),
    "sub_question": serializers.IntegerField(allow_null=True),
}
CLAIM_FIELDS = {
    "position": serializers.IntegerField(), "text": serializers.CharField(),
    "citations": serializers.ListField(child=serializers.IntegerField()),
    "support_score": serializers.FloatField(allow_null=True),
    "supported": serializers.BooleanField(allow_null=True),
    "verdict": serializers.ChoiceField(choices=["supported", "contradicted", "not_found"]),
    "passage": serializers.IntegerField(allow_null=True),
    "retracted_citations": serializers.ListField(child=serializers.IntegerField()),
}
STEP_FIELDS = {
    "position": serializers.IntegerField(), "kind": serializers.CharField(),
    "title": serializers.CharField(), "status": serializers.CharField(),
    "output": serializers.DictField(), "tokens": serializers.IntegerField(),
    "started_at": serializers.DateTimeField(allow_null=True),
    "finished_at": serializers.DateTimeField(allow_null=True),
    "elapsed_s": serializers.FloatField(allow_null=True),
}
ROUTING_SCHEMA = inline_serializer("Routing", {
    "capability": serializers.CharField(), "model": serializers.CharField(),
    "confidence": serializers.FloatField(allow_null=True),
    "fallback": serializers.BooleanField(), "use_retrieval": serializers.BooleanField(),
    "suggested_deep": serializers.BooleanField(),
})
SNAPSHOT_SCHEMA = inline_serializer("Consultation", {
    "id": serializers.IntegerField(), "mode": serializers.CharField(),
    "status": serializers.CharField(), "status_label": serializers.CharField(),
    "finished": serializers.BooleanField(), "answer_text": serializers.CharField(),
    "abstained": serializers.BooleanField(),
    "withheld": inline_serializer("Withheld", {
        "reason": serializers.ChoiceField(choices=Consultation.WithheldReason.values),
        "label": serializers.CharField(), "message": serializers.CharField(),
        "contradicting_passages": serializers.ListField(child=serializers.IntegerField()),
    }, allow_null=True),
    "include_retracted": serializers.BooleanField(),
    "error_message": serializers.CharField(),
    "support_rate": serializers.FloatField(allow_null=True),
    "removed_citations": serializers.IntegerField(),
    "routing": ROUTING_SCHEMA,
    "time_to_first_token_ms": serializers.IntegerField(allow_null=True),
    "total_ms": serializers.IntegerField(allow_null=True),
    "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
    "cost": serializers.FloatField(),
    "passages": inline_serializer("Passage", PASSAGE_FIELDS, many=True),
    "claims": inline_serializer("Claim", CLAIM_FIELDS, many=True),
    "steps": inline_serializer("DeepConsultStep", STEP_FIELDS, many=True),
    "links": inline_serializer("ConsultationLinks", {
        "self": serializers.URLField(), "stream": serializers.URLField(),
        "page": serializers.URLField()}),
})


def _with_links(request: Request, snapshot: dict[str, Any]) -> dict[str, Any]:
    base = f"/api/v1/consultations/{snapshot['id']}"
    return {**snapshot, "links": {"self": request.build_absolute_uri(base),
                                  "stream": request.build_absolute_uri(base + "/stream"),
                                  "page": request.build_absolute_uri(
                                      f"/consultations/{snapshot['id']}/")}}


class ConsultationListCreate(APIView):
    # Declared on the view so the schema describes the paginated object the list really is.
    pagination_class = PageNumberPagination

    @extend_schema(responses=ConsultationSummarySerializer(many=True))
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        queryset = consultation_history(user=request.user,  # type: ignore[arg-type]
                                        search=request.query_params.get("q", "")[:200])
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(ConsultationSummarySerializer(page, many=True).data)

    @extend_schema(request=ConsultationCreateSerializer,
                   responses={201: SNAPSHOT_SCHEMA, 400: ERROR_SCHEMA, 429: ERROR_SCHEMA,
                              503: ERROR_SCHEMA})
    def post(self, request: Request) -> Response:
        serializer = ConsultationCreateSerializer(data=request.data)
        if not serializer.is_valid():
            first_field, errors = next(iter(serializer.errors.items()))
            return Response({"error": f"{first_field}: {errors[0]}", "fields": serializer.errors},
                            status=status.HTTP_400_BAD_REQUEST)
        try:
            consultation = consultation_create(user=request.user,  # type: ignore[arg-type]
                                               **serializer.validated_data)
        except QuestionRejected as error:
            return Response({"error": error.message}, status=status.HTTP_400_BAD_REQUEST)
        except RateLimited as error:
            return Response({"error": error.message}, status=status.HTTP_429_TOO_MANY_REQUESTS,
                            headers={"Retry-After": str(error.retry_after)})
        # The question is committed: a database that goes away now is waited out rather than
        # reported as a failure, which would have the client send a saved question again.
        return Response(_with_links(request, through_outage(consultation_snapshot)(
            consultation.pk)), status=status.HTTP_201_CREATED)


class ConsultationDetail(APIView):
    @extend_schema(responses={200: SNAPSHOT_SCHEMA, 404: ERROR_SCHEMA})
    def get(self, request: Request, consultation_id: int) -> Response:
        consultation = consultation_for_user(consultation_id=consultation_id,
                                             user=request.user)  # type: ignore[arg-type]
        quick_answer_resume(consultation=consultation)
        return Response(_with_links(request, consultation_snapshot(consultation.pk)))


class ConsultationCancel(APIView):
    @extend_schema(request=None, responses={200: SNAPSHOT_SCHEMA, 404: ERROR_SCHEMA})
    def post(self, request: Request, consultation_id: int) -> Response:
        """Cancel a consultation still being answered (a finished one is left as it is): it
        stops within seconds, its partial answer is never shown; the question is kept."""
        consultation = consultation_for_user(consultation_id=consultation_id,
                                             user=request.user)  # type: ignore[arg-type]
        if consultation.user_id != request.user.pk:
            raise Http404("No such consultation.")
        consultation = consultation_cancel(consultation=consultation)
        return Response(_with_links(request, consultation_snapshot(consultation.pk)))


def _authenticate(request: HttpRequest) -> Any:
    result = TokenAuthentication().authenticate(request)  # type: ignore[arg-type]
    if result is None:
        return request.user if request.user.is_authenticated else None
    return result[0]


async def consultation_stream(request: HttpRequest, consultation_id: int) -> HttpResponseBase:
    """Server-sent events for integrators: `Authorization: Token <key>`; same events as the page."""
    try:
        user = await sync_to_async(_authenticate)(request)
    except AuthenticationFailed as error:
        return JsonResponse({"error": str(error.detail)}, status=401)
    if user is None:
        return JsonResponse({"error": "Authentication credentials were not provided; send "
                             "`Authorization: Token <key>`."}, status=401)
    try:
        consultation = await sync_to_async(consultation_for_user)(
            consultation_id=consultation_id, user=user)
    except Http404:
        return JsonResponse({"error": "No such consultation."}, status=404)

    async def events() -> AsyncIterator[str]:
        if consultation.mode == Consultation.Mode.QUICK and consultation.user_id == user.pk:
            async for event in consultation_events(consultation.pk):
                yield sse_frame(event)
        else:
            snapshot = await sync_to_async(consultation_snapshot)(consultation.pk)
            yield sse_frame({"event": "snapshot", "data": snapshot})

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


def add_stream_to_schema(result: dict[str, Any], generator: Any, request: Any,
                         public: bool) -> dict[str, Any]:
    """drf-spectacular hook: the SSE endpoint is a plain async view, so describe it here."""
    result.setdefault("paths", {})["/api/v1/consultations/{consultation_id}/stream"] = {
        "get": {
            "operationId": "consultations_stream",
            "summary": "Stream a consultation as server-sent events",
            "description": "Events: snapshot, stage, passages, first_token, sentence, final. "
                           "A sentence is released only after it was checked against the "
                           "passages it cites and found supported; sentences not found in "
                           "their passages come with the final snapshot, and a withheld "
                           "answer's draft is never sent. A quick answer is generated from the "
                           "moment it is posted, stream or not: this replays what it has "
                           "published, then follows it.",
            "parameters": [{"name": "consultation_id", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "security": [{"tokenAuth": []}],
            "responses": {"200": {"description": "text/event-stream",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          "401": {"description": "No or bad token"},
                          "404": {"description": "No such consultation (or not yours)"}},
        }
    }
    return result
