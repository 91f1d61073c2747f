"""REST viewsets (DESIGN.md "API contract"). Thin: scope, validate shape, call a service.

Querysets are scoped to the user's clinics (`ClinicScopedViewSet`), so another clinic's
object is 404; each list runs a constant number of queries whatever the page size.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from api import filters
from api import serializers as s
from api.authentication import HashedTokenAuthentication
from api.models import ApiToken
from api.permissions import IsMember
from api.services import issue_token, revoke_token
from api.throttling import PasswordThrottle
from api.viewsets import ClinicScopedViewSet
from notifications import services as notification_services
from notifications.models import SEVERITY_RANK, Escalation, EscalationStatus, Message
from patients import services as patient_services
from patients.access import CLINIC_MESSAGE_POLICY_FIELDS, MESSAGE_POLICY_LABEL, is_clinician, may_set_phase, may_write
from patients.models import Clinic, Patient
from pumps import appointments as appointment_services
from pumps import services as pump_services
from pumps.models import Appointment, ClinicalEvent, Program, Pump, PumpModel, Refill, ScreeningTrial
from twofactor import api as twofactor_api
from twofactor.api import OTP_HELP

WARNINGS_400 = OpenApiResponse(
    description="Field errors (`{field: [messages]}`), or a dose change refused until its warnings are "
    'acknowledged: `{"warnings": [{"code", "message"}]}`.'
)


def _values(serializer: serializers.Serializer) -> dict[str, Any]:  # type: ignore[type-arg]
    return dict(serializer.validated_data)


class ReadCreateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, ClinicScopedViewSet):
    pass


# ----------------------------------------------------------------------------- clinics and patients


class ClinicViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, ClinicScopedViewSet):
    """Clinics the user belongs to, with the refill and message policy they own.

    A change of refill policy re-stores every active pump's dates; a change of message
    policy re-plans pending messages (the same service as the admin).
    """

    queryset = Clinic.objects.all()
    serializer_class = s.ClinicSerializer
    # Coordinators manage messages: they reach the message policy; the rest is a clinician's.
    write_label = MESSAGE_POLICY_LABEL
    ordering_fields = ["name", "id"]

    def perform_update(self, serializer: s.ClinicSerializer) -> None:
        clinic: Clinic = serializer.instance
        values = _values(serializer)
        changed = [f for f in values if f not in CLINIC_MESSAGE_POLICY_FIELDS and values[f] != getattr(clinic, f)]
        if changed and not may_write(self.request.user, "patients.clinic", clinic):
            raise PermissionDenied({name: ["Only a clinician may change this."] for name in changed})
        serializer.instance = patient_services.update_clinic(clinic, values)


class PatientViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, ClinicScopedViewSet
):
    """Patients with their caregivers. The facts the dose and implant rules depend on
    (diagnosis, spasticity origin, birth date, screening documented elsewhere) are a
    clinician's to change."""

    queryset = Patient.objects.select_related("clinic").prefetch_related("caregivers")
    serializer_class = s.PatientSerializer
    clinic_lookup = "clinic"
    write_label = "patients.patient"
    filterset_class = filters.PatientFilter
    ordering_fields = ["family_name", "given_name", "mrn", "birth_date", "created_at", "id"]

    def _check_clinical(self, clinic: Clinic, changed: list[str]) -> None:
        if changed and not is_clinician(self.request.user, clinic):
            raise PermissionDenied({name: ["Only a clinician may change this."] for name in changed})

    def perform_create(self, serializer: s.PatientSerializer) -> None:
        values = _values(serializer)
        caregivers = values.pop("caregivers", [])
        self._check_clinical(values["clinic"], ["screened_elsewhere"] if values.get("screened_elsewhere") else [])
        serializer.instance = patient_services.create_patient(values, caregivers=caregivers)

    def perform_update(self, serializer: s.PatientSerializer) -> None:
        patient: Patient = serializer.instance
        values = _values(serializer)
        caregivers = values.pop("caregivers", None)
        changed = [f for f in patient_services.CLINICAL_FIELDS if f in values and values[f] != getattr(patient, f)]
        self._check_clinical(patient.clinic, changed)
        updated = patient_services.update_patient(patient, values, caregivers=caregivers)
        serializer.instance = Patient.objects.select_related("clinic").prefetch_related("caregivers").get(pk=updated.pk)


# ----------------------------------------------------------------------------- pumps


class PumpModelViewSet(viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    """The pump-model catalogue (capacities, accuracy, concentration ranges, MRI rules)."""

    queryset = PumpModel.objects.all()
    serializer_class = s.PumpModelSerializer
    lookup_value_regex = "[0-9]+"
    ordering_fields = ["manufacturer", "name", "model_number", "id"]
    filterset_fields = ["manufacturer", "model_number", "mri_rule"]


@extend_schema_view(
    create=extend_schema(request=s.PumpCreateSerializer, responses={201: s.PumpSerializer, 400: WARNINGS_400}),
    update=extend_schema(request=s.PumpUpdateSerializer, responses={200: s.PumpSerializer}),
    partial_update=extend_schema(request=s.PumpUpdateSerializer, responses={200: s.PumpSerializer}),
)
class PumpViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, ClinicScopedViewSet
):
    """Implanted pumps with their state now: current programming, expected volume, the
    low-reservoir alarm date and the refill-by date (DESIGN "Refill arithmetic").

    Create = implant (needs a positive screening trial, R1). Update changes device details
    only; explant, replacement and phase have their own actions.
    """

    queryset = Pump.objects.select_related("patient__clinic", "model")
    serializer_class = s.PumpSerializer
    clinic_lookup = "patient__clinic"
    write_label = "pumps.pump"
    filterset_class = filters.PumpFilter
    ordering_fields = ["refill_by", "alarm_on", "implanted_at", "serial_number", "id"]

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:  # type: ignore[type-arg]
        if self.action == "create":
            return s.PumpCreateSerializer
        if self.action in ("update", "partial_update"):
            return s.PumpUpdateSerializer
        return s.PumpSerializer

    def paginate_queryset(self, queryset: QuerySet[Pump]) -> list[Pump] | None:
        page = super().paginate_queryset(queryset)
        self.states = pump_services.pump_states(page if page is not None else list(queryset), timezone.now())
        return page

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "states": getattr(self, "states", {})}

    def shown(self, pump: Pump, code: int = status.HTTP_200_OK) -> Response:
        pump = Pump.objects.select_related("patient__clinic", "model").get(pk=pump.pk)
        self.states = pump_services.pump_states([pump], timezone.now())
        return Response(s.PumpSerializer(pump, context=self.get_serializer_context()).data, status=code)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.shown(self.get_object())

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        pump = pump_services.implant_pump(now=timezone.now(), **_values(serializer))
        return self.shown(pump, status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        pump = self.get_object()
        serializer = self.get_serializer(pump, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        return self.shown(pump_services.update_pump_details(pump, _values(serializer)))

    @extend_schema(request=s.PumpEndSerializer, responses={200: s.PumpSerializer})
    @action(detail=True, methods=["post"])
    def end(self, request: Request, pk: str | None = None) -> Response:
        """Record the explant or replacement: the pump leaves every due list."""
        pump = self.get_object()
        body = s.PumpEndSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        v = body.validated_data
        pump_services.end_pump(pump, status=v["status"], on=v["explanted_on"], reason=v["explant_reason"], now=timezone.now())
        return self.shown(pump)

    @extend_schema(request=s.PumpPhaseSerializer, responses={200: s.PumpSerializer})
    @action(detail=True, methods=["post"])
    def phase(self, request: Request, pk: str | None = None) -> Response:
        """Record the stable dose (maintenance) or a return to titration: a clinician's decision."""
        pump = self.get_object()
        if not may_set_phase(request.user, pump.patient.clinic):
            raise PermissionDenied("Only a clinician records the stable dose.")
        body = s.PumpPhaseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        pump_services.set_phase(pump, body.validated_data["phase"], now=timezone.now())
        return self.shown(pump)


# ----------------------------------------------------------------------------- programs and refills


def _program_input(values: dict[str, Any]) -> pump_services.ProgramInput:
    return pump_services.ProgramInput(
        effective_at=values["effective_at"],
        concentration_mcg_per_ml=values["concentration_mcg_per_ml"],
        mode=values.get("mode", "simple"),
        dose_mcg_per_day=values.get("dose_mcg_per_day"),
        flex_steps=values.get("flex_steps") or [],
        basal_mcg_per_day=values.get("basal_mcg_per_day"),
        bolus_mcg=values.get("bolus_mcg"),
        boluses_per_day=values.get("boluses_per_day"),
    )


def _refill_input(values: dict[str, Any]) -> pump_services.RefillInput:
    optional = ("drug_product", "drug_lot", "expires_on", "method", "notes")
    return pump_services.RefillInput(
        performed_at=values["performed_at"],
        withdrawn_ml=values["withdrawn_ml"],
        volume_added_ml=values["volume_added_ml"],
        concentration_mcg_per_ml=values["concentration_mcg_per_ml"],
        **{name: values[name] for name in optional if name in values},
    )


def _warnings(preview: pump_services.ProgramPreview | pump_services.RefillPreview) -> list[dict[str, str]]:
    return [{"code": w.code.value, "message": w.message} for w in preview.warnings]


class AcknowledgedRecordViewSet(ReadCreateViewSet):
    """Records written by a service that refuses unacknowledged warnings, with a `preview`
    action that runs the same checks and arithmetic and writes nothing (as the admin's
    two-step forms do)."""

    to_input: Any  # validated values -> the service's input
    recorder: Any  # pump_services.change_program / record_refill
    previewer: Any  # pump_services.preview_program / preview_refill
    preview_serializer: type[serializers.Serializer]  # type: ignore[type-arg]

    def preview_data(self, preview: Any) -> dict[str, Any]:
        raise NotImplementedError

    def perform_create(self, serializer: serializers.Serializer) -> None:  # type: ignore[type-arg]
        values = _values(serializer)
        serializer.instance = type(self).recorder(
            values["pump"],
            type(self).to_input(values),
            by=self.request.user,
            now=timezone.now(),
            acknowledged=values.get("acknowledged_warnings", []),
            reason=values.get("reason", ""),
        )

    def answer_preview(self, request: Request) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = _values(body)
        preview = type(self).previewer(values["pump"], type(self).to_input(values), timezone.now())
        return Response(self.preview_serializer(self.preview_data(preview)).data)


@extend_schema_view(create=extend_schema(responses={201: s.ProgramSerializer, 400: WARNINGS_400}))
class ProgramViewSet(AcknowledgedRecordViewSet):
    """Programming changes. A change that trips a dose-safety rule answers 400 with
    `{"warnings": [{"code", "message"}]}`; send it again with `acknowledged_warnings` (the
    codes) and a `reason` to record it, acknowledgement stored (DESIGN "Dose-change safety")."""

    queryset = Program.objects.select_related("author")
    serializer_class = s.ProgramSerializer
    clinic_lookup = "pump__patient__clinic"
    write_label = "pumps.program"
    filterset_class = filters.ProgramFilter
    ordering_fields = ["effective_at", "created_at", "id"]
    to_input = staticmethod(_program_input)
    recorder = staticmethod(pump_services.change_program)
    previewer = staticmethod(pump_services.preview_program)
    preview_serializer = s.ProgramPreviewSerializer

    def preview_data(self, preview: pump_services.ProgramPreview) -> dict[str, Any]:
        return {
            "dose_mcg_per_day": preview.dose_mcg_per_day,
            "previous_dose_mcg_per_day": preview.previous_dose_mcg_per_day,
            "change_pct": preview.change_pct,
            "warnings": _warnings(preview),
            "alarm_on": preview.alarm_on,
            "refill_by": preview.refill_by,
        }

    @extend_schema(request=s.ProgramSerializer, responses={200: s.ProgramPreviewSerializer, 400: WARNINGS_400})
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        """What the change would do (warnings, new alarm and refill-by dates), writing nothing."""
        return self.answer_preview(request)


@extend_schema_view(create=extend_schema(responses={201: s.RefillSerializer, 400: WARNINGS_400}))
class RefillViewSet(AcknowledgedRecordViewSet):
    """Refills (and the initial fill). The service computes the expected residual, the
    discrepancy and its flag, and the new alarm and refill-by dates; they are stored with
    the record. A refill may never leave more than the reservoir holds."""

    queryset = Refill.objects.select_related("performed_by")
    serializer_class = s.RefillSerializer
    clinic_lookup = "pump__patient__clinic"
    write_label = "pumps.refill"
    filterset_class = filters.RefillFilter
    ordering_fields = ["performed_at", "refill_by", "id"]
    to_input = staticmethod(_refill_input)
    recorder = staticmethod(pump_services.record_refill)
    previewer = staticmethod(pump_services.preview_refill)
    preview_serializer = s.RefillPreviewSerializer

    def preview_data(self, preview: pump_services.RefillPreview) -> dict[str, Any]:
        return {
            "is_initial_fill": preview.is_initial_fill,
            "expected_residual_ml": preview.expected_residual_ml,
            **pump_services.discrepancy_fields(preview.discrepancy),
            "volume_after_fill_ml": preview.volume_after_fill_ml,
            "warnings": _warnings(preview),
            "alarm_on": preview.alarm_on,
            "refill_by": preview.refill_by,
        }

    @extend_schema(request=s.RefillSerializer, responses={200: s.RefillPreviewSerializer, 400: WARNINGS_400})
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        """The refill's computed results (expected residual, discrepancy, new dates), writing nothing."""
        return self.answer_preview(request)


# ----------------------------------------------------------------------------- screening and events


@extend_schema_view(
    update=extend_schema(responses={200: s.ScreeningSerializer}),
    partial_update=extend_schema(responses={200: s.ScreeningSerializer}),
)
class ScreeningViewSet(mixins.UpdateModelMixin, ReadCreateViewSet):
    """Screening (test) boluses: 50, 75 or 100 mcg, at least 24 h apart (clinical.md §3)."""

    queryset = ScreeningTrial.objects.select_related("performed_by")
    serializer_class = s.ScreeningSerializer
    clinic_lookup = "patient__clinic"
    write_label = "pumps.screeningtrial"
    filterset_class = filters.ScreeningFilter
    ordering_fields = ["given_at", "id"]

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:  # type: ignore[type-arg]
        return s.ScreeningUpdateSerializer if self.action in ("update", "partial_update") else s.ScreeningSerializer

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        super().update(request, *args, **kwargs)
        return Response(s.ScreeningSerializer(self.get_object(), context=self.get_serializer_context()).data)

    def perform_create(self, serializer: s.ScreeningSerializer) -> None:
        values = _values(serializer)
        serializer.instance = pump_services.record_screening(now=timezone.now(), performed_by=self.request.user, **values)


class EventViewSet(ReadCreateViewSet):
    """Clinical events: alarms, MRIs (planned, done, the post-MRI check), infections,
    withdrawal or overdose episodes, revisions. An MRI or ERI re-plans messages."""

    queryset = ClinicalEvent.objects.select_related("recorded_by")
    serializer_class = s.EventSerializer
    clinic_lookup = "pump__patient__clinic"
    write_label = "pumps.clinicalevent"
    filterset_class = filters.EventFilter
    ordering_fields = ["occurred_at", "id"]

    def perform_create(self, serializer: s.EventSerializer) -> None:
        values = _values(serializer)
        serializer.instance = pump_services.record_event(now=timezone.now(), by=self.request.user, **values)


# ----------------------------------------------------------------------------- appointments


@extend_schema_view(
    update=extend_schema(request=s.AppointmentChangeSerializer, responses={200: s.AppointmentSerializer}),
    partial_update=extend_schema(request=s.AppointmentChangeSerializer, responses={200: s.AppointmentSerializer}),
)
class AppointmentViewSet(mixins.UpdateModelMixin, ReadCreateViewSet):
    """Booked refill visits. Booking on a day after the pump's refill-by date is refused
    unless `acknowledged_late` with a `reason`; one booked visit per pump; a recorded refill
    closes it, and a visit whose day ends without one is marked missed and escalated."""

    queryset = Appointment.objects.select_related("booked_by", "pump__patient__clinic")
    serializer_class = s.AppointmentSerializer
    clinic_lookup = "pump__patient__clinic"
    write_label = "pumps.appointment"
    filterset_class = filters.AppointmentFilter
    ordering_fields = ["starts_at", "created_at", "id"]

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:  # type: ignore[type-arg]
        return s.AppointmentChangeSerializer if self.action in ("update", "partial_update") else s.AppointmentSerializer

    def perform_create(self, serializer: s.AppointmentSerializer) -> None:
        v = _values(serializer)
        serializer.instance = appointment_services.book_appointment(
            v["pump"],
            v["starts_at"],
            v.get("location", ""),
            v.get("notes", ""),
            self.request.user,
            timezone.now(),
            acknowledged_late=v.get("acknowledged_late", False),
            reason=v.get("reason", ""),
        )

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        visit: Appointment = self.get_object()
        body = self.get_serializer(visit, data=request.data, partial=kwargs.get("partial", False))
        body.is_valid(raise_exception=True)
        v = _values(body)
        now = timezone.now()
        if "starts_at" in v and v["starts_at"] != visit.starts_at:
            visit = appointment_services.reschedule(
                visit,
                v["starts_at"],
                by=request.user,
                now=now,
                location=v.get("location"),
                notes=v.get("notes"),
                acknowledged_late=v.get("acknowledged_late", False),
                reason=v.get("reason", ""),
            )
        else:
            visit = appointment_services.update_details(
                visit, location=v.get("location", visit.location), notes=v.get("notes", visit.notes), now=now
            )
        return Response(s.AppointmentSerializer(visit, context=self.get_serializer_context()).data)

    @extend_schema(request=s.CancelSerializer, responses={200: s.AppointmentSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a booked visit: the pump is due without an appointment again."""
        visit = self.get_object()
        body = s.CancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        visit = appointment_services.cancel_appointment(
            visit, by=request.user, now=timezone.now(), reason=body.validated_data.get("cancellation_reason", "")
        )
        return Response(s.AppointmentSerializer(visit, context=self.get_serializer_context()).data)


# ----------------------------------------------------------------------------- messages and escalations


class MessageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ClinicScopedViewSet):
    """The outbox: every reminder and warning, its state and the text as sent (read-only)."""

    queryset = Message.objects.all()
    serializer_class = s.MessageSerializer
    clinic_lookup = "clinic"
    filterset_class = filters.MessageFilter
    ordering_fields = ["due_at", "sent_at", "id"]


class EscalationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ClinicScopedViewSet):
    """Staff tasks raised when a message cannot do its job; acknowledge, then resolve."""

    queryset = (
        Escalation.objects.select_related("acknowledged_by", "resolved_by")
        .annotate(severity_rank=SEVERITY_RANK)
        .order_by("-raised_at", "-pk")
    )
    serializer_class = s.EscalationSerializer
    clinic_lookup = "clinic"
    write_label = "notifications.escalation"
    filterset_class = filters.EscalationFilter
    ordering_fields = ["raised_at", "severity", "status", "id"]
    # `severity` sorts by rank (info < warning < critical), not alphabetically.
    ordering_aliases = {"severity": "severity_rank"}

    def _act(self) -> Escalation:
        escalation: Escalation = self.get_object()
        if not may_write(self.request.user, self.write_label, escalation.clinic):
            raise PermissionDenied()
        return escalation

    @extend_schema(request=None, responses={200: s.EscalationSerializer})
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str | None = None) -> Response:
        escalation = self._act()
        if escalation.status != EscalationStatus.OPEN:
            raise ValidationError({"status": [f"The escalation is {escalation.get_status_display().lower()}."]})
        notification_services.acknowledge_escalation(escalation, by=request.user, now=timezone.now())
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(request=s.ResolveSerializer, responses={200: s.EscalationSerializer})
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str | None = None) -> Response:
        escalation = self._act()
        body = s.ResolveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if escalation.status == EscalationStatus.RESOLVED:
            raise ValidationError({"status": ["The escalation is already resolved."]})
        notification_services.resolve_escalation(
            escalation, by=request.user, now=timezone.now(), resolution=body.validated_data["resolution"].strip()
        )
        return Response(self.get_serializer(self.get_object()).data)


class ApiTokenCreateSerializer(s.ApiTokenSerializer):
    otp = serializers.CharField(write_only=True, required=False, allow_blank=True, max_length=32, help_text=OTP_HELP)

    class Meta(s.ApiTokenSerializer.Meta):
        fields = [*s.ApiTokenSerializer.Meta.fields, "otp"]


@extend_schema_view(
    create=extend_schema(
        request=ApiTokenCreateSerializer,
        responses={
            201: s.ApiTokenSerializer,
            400: OpenApiResponse(description="Field errors, e.g. a missing or wrong `otp` code."),
            403: OpenApiResponse(
                description="Not allowed: a token creating tokens, or (`otp`) a password sign-in without the "
                "two-factor authentication this site requires."
            ),
        },
    )
)
class TokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):  # type: ignore[type-arg]
    """Your own API tokens. Create one with your password (HTTP Basic) or a signed-in
    session; the key is in that answer only. A token cannot create more tokens, so a
    leaked key cannot outlive its revocation. Staff also manage tokens in the admin.

    With two-factor authentication, the password needs a current code too (`otp`): a
    token must not be a way around the second factor."""

    serializer_class = s.ApiTokenSerializer
    authentication_classes = [HashedTokenAuthentication, BasicAuthentication, SessionAuthentication]
    permission_classes = [IsMember]
    lookup_value_regex = "[0-9]+"
    ordering_fields = ["created_at", "id"]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if request.META.get("HTTP_AUTHORIZATION", "").lower().startswith("basic "):
            throttle = PasswordThrottle()
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait())
        super().initial(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[ApiToken]:
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user).select_related("user").order_by("-created_at")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if isinstance(request.auth, ApiToken):
            raise PermissionDenied("Create tokens with your password or in the admin, not with another token.")
        serializer = ApiTokenCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        v = serializer.validated_data
        if isinstance(request.successful_authenticator, BasicAuthentication):
            # A session got here through the two-factor gate already; a password did not.
            twofactor_api.check_password_request(request, v.get("otp", ""))
        token, key = issue_token(
            user=request.user,
            name=v["name"],
            by=request.user,
            expires_at=v.get("expires_at"),
            read_only=v.get("read_only", False),
        )
        return Response(s.ApiTokenSerializer(token, context={"key": key}).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: s.ApiTokenSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        token = self.get_object()
        revoke_token(token, now=timezone.now())
        token.refresh_from_db()
        return Response(self.get_serializer(token).data)


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(request: Request, path: str = "") -> Response:
    """Any other path under /api/v1/: a JSON 404, like every other answer of the API."""
    return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
