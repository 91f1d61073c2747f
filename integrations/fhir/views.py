"""The read-only FHIR R4 face: read by id, search by patient, the CapabilityStatement.

DRF views so that authentication, permission and throttling are the REST API's (hashed
tokens or a staff session; members of a clinic only). Every answer, errors included, is
`application/fhir+json`; errors are OperationOutcomes. Not in the OpenAPI schema: FHIR has
its own contract (the CapabilityStatement at /fhir/metadata).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from api.permissions import IsClinicMember
from integrations.fhir import queries, resources
from patients.access import clinics_for


class FhirJsonRenderer(JSONRenderer):
    media_type = "application/fhir+json"
    format = "fhir"
    charset = "utf-8"


class FhirNegotiation(BaseContentNegotiation):
    """One representation: FHIR JSON whatever the Accept header says (`application/json`,
    `*/*` and `application/fhir+json` are what clients send; refusing them helps no one)."""

    def select_parser(self, request: Request, parsers: list[BaseParser]) -> BaseParser | None:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], str(renderers[0].media_type)


class FhirError(exceptions.APIException):
    """An error with its OperationOutcome issue code."""

    def __init__(self, detail: str, *, status_code: int, issue: str) -> None:
        super().__init__(detail)
        self.status_code, self.issue = status_code, issue


def not_found(detail: str) -> FhirError:
    return FhirError(detail, status_code=status.HTTP_404_NOT_FOUND, issue="not-found")


# HTTP status of DRF's own errors -> OperationOutcome issue type (FHIR R4 issue-type codes).
ISSUE_BY_STATUS = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    415: "not-supported",
    429: "throttled",
}


def fhir_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, WWW-Authenticate, Retry-After), with an OperationOutcome body."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a server error: Django's 500 handling, as everywhere else
    detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
    issue = getattr(exc, "issue", ISSUE_BY_STATUS.get(response.status_code, "exception"))
    response.data = resources.operation_outcome(issue, str(detail) or response.status_text)
    return response


@extend_schema(exclude=True)
class FhirView(APIView):
    renderer_classes = [FhirJsonRenderer]
    content_negotiation_class = FhirNegotiation
    permission_classes = [IsClinicMember]

    def get_exception_handler(self) -> Any:
        return fhir_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Read-only: a write is 405 for everyone, before the permission check could make it a 403.
        if request.method not in ("GET", "HEAD"):
            raise exceptions.MethodNotAllowed(request.method)
        super().initial(request, *args, **kwargs)

    def scope(self, request: Request) -> queries.Scope:
        return queries.Scope(clinics=clinics_for(request.user), now=timezone.now(), site_url=settings.SITE_URL.rstrip("/"))


def _resource_type(name: str) -> str:
    if name not in resources.RESOURCE_TYPES:
        raise not_found(f"This server has no {name!r} resources; it serves {', '.join(resources.RESOURCE_TYPES)}.")
    return name


# FHIR's general parameters a client may send with any interaction (FHIR R4 §3.1.0.1.10).
FORMAT_PARAMS = frozenset({"_format", "_pretty"})
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})


def _check_format(request: Request) -> None:
    """Honour `_format` for JSON (the only format served); refuse XML and others with 406."""
    wanted = request.query_params.get("_format")
    if wanted is not None and wanted.split(";")[0].strip().lower() not in JSON_FORMATS:
        raise FhirError(
            f"_format {wanted!r} is not served: this server answers JSON (application/fhir+json) only.",
            status_code=status.HTTP_406_NOT_ACCEPTABLE,
            issue="not-supported",
        )


@extend_schema(exclude=True)
class ReadView(FhirView):
    """GET /fhir/<type>/<id>."""

    def get(self, request: Request, resource_type: str, resource_id: str) -> Response:
        _resource_type(resource_type)
        extra = set(request.query_params) - FORMAT_PARAMS
        _check_format(request)
        if extra:
            raise FhirError(
                f"A read takes no parameters (got {', '.join(sorted(extra))}).",
                status_code=status.HTTP_400_BAD_REQUEST,
                issue="not-supported",
            )
        pk = resources.row_id(resource_type, resource_id)
        found = queries.READ[resource_type](self.scope(request), pk) if pk is not None else None
        if found is None:
            # The same answer for another clinic's row as for no row at all.
            raise not_found(f"{resource_type}/{resource_id} is not known.")
        return Response(found)


@extend_schema(exclude=True)
class SearchView(FhirView):
    """GET /fhir/<type>?patient=<id> (Patient: ?_id= or ?identifier=)."""

    def get(self, request: Request, resource_type: str) -> Response:
        _resource_type(resource_type)
        supported = resources.SEARCH_PARAMS[resource_type]
        params: queries.Params = {}
        _check_format(request)
        for name in request.query_params:
            if name in FORMAT_PARAMS:
                continue
            values = request.query_params.getlist(name)
            if any("\x00" in value for value in values):
                # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the query.
                raise FhirError(f"{name!r} contains a NUL character.", status_code=status.HTTP_400_BAD_REQUEST, issue="invalid")
            if name not in supported:
                raise FhirError(
                    f"Search parameter {name!r} is not supported for {resource_type}; use {', '.join(supported)}.",
                    status_code=status.HTTP_400_BAD_REQUEST,
                    issue="not-supported",
                )
            if len(values) != 1:
                # Repeating a parameter means "all of" in FHIR: ask for one, with commas for "any of".
                raise FhirError(
                    f"Give {name!r} once; separate alternatives with commas.",
                    status_code=status.HTTP_400_BAD_REQUEST,
                    issue="not-supported",
                )
            params[name] = [v.strip() for v in values[0].split(",") if v.strip()]
        scope = self.scope(request)
        try:
            found = queries.SEARCH[resource_type](scope, params)
        except queries.MissingParameter as exc:
            raise FhirError(
                f"Search {resource_type} by {exc}: this server does not list every resource at once.",
                status_code=status.HTTP_400_BAD_REQUEST,
                issue="required",
            ) from None
        self_url = f"{scope.base_url}/{resource_type}"
        if request.META.get("QUERY_STRING"):
            self_url += "?" + request.META["QUERY_STRING"]
        return Response(resources.bundle(found, base_url=scope.base_url, self_url=self_url))


@extend_schema(exclude=True)
class MetadataView(FhirView):
    """GET /fhir/metadata. Open to all, as FHIR clients fetch it before they authenticate:
    it describes the server and names no patient."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        base_url = f"{settings.SITE_URL.rstrip('/')}/fhir"
        return Response(resources.capability_statement(base_url=base_url, now=timezone.now()))


@extend_schema(exclude=True)
class UnknownView(FhirView):
    """Any other path under /fhir/: a FHIR 404 rather than Django's HTML page."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request, rest: str = "") -> Response:
        raise Http404
