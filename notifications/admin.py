"""Staff views of the outbox, escalations and contact blocks (thin: services do the work).

Messages are read-only records: staff read the text as sent and every attempt. Escalations
are staff tasks: acknowledged and resolved (with a note) through `notifications.services`.
Contact blocks (opt-outs, dead numbers) are lifted by staff only after they confirmed the
contact with the person. Everything is scoped to the user's clinics (patients/access.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from notifications import services
from notifications.models import (
    OPEN_STATES,
    SEVERITY_RANK,
    Attempt,
    BlockMethod,
    Channel,
    ContactBlock,
    Escalation,
    EscalationStatus,
    Message,
    Severity,
    Status,
)
from patients.access import clinics_for, clinics_writable, is_member, may_write
from patients.audit_admin import AuditedAdminMixin
from patients.models import Caregiver, Clinic, Patient
from patients.scoped_admin import ClinicScopedAdmin
from pumps.models import Pump

CSS = {"all": ["pumps/admin.css"]}


def _link(name: str, obj: Any) -> SafeString:
    if obj is None:
        return mark_safe("-")
    return format_html('<a href="{}">{}</a>', reverse(f"admin:{name}_change", args=[obj.pk]), obj)


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ["started_at", "finished_at", "outcome", "error", "provider_id", "worker"]
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_member(request.user)  # the message itself is already scoped to the clinic

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# ----------------------------------------------------------------------------- messages


@admin.register(Message)
class MessageAdmin(ClinicScopedAdmin):
    """The outbox, read-only: what went (or will go) to whom, when, and what happened."""

    clinic_lookup = "clinic"
    list_display = [
        "due_at",
        "kind",
        "stage",
        "recipient",
        "channel",
        "address",
        "status",
        "critical",
        "patient_link",
        "pump_link",
    ]
    list_filter = [
        "status",
        "kind",
        "channel",
        "critical",
        "recipient_kind",
        ("clinic", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["address", "patient__mrn", "patient__family_name", "caregiver__name", "provider_id"]
    date_hierarchy = "due_at"
    # What happened last on top (just sent, failed, cancelled); "due at" sorts by moment.
    ordering = ["-updated_at", "-pk"]
    list_select_related = ["patient", "caregiver", "pump__model"]
    inlines = [AttemptInline]
    readonly_fields = [f.name for f in Message._meta.fields] + ["patient_link", "pump_link", "text"]
    fieldsets = [
        (None, {"fields": ["clinic", "patient_link", "pump_link", "caregiver", "kind", "stage", "cycle", "critical"]}),
        ("Recipient", {"fields": ["recipient_kind", "recipient_key", "channel", "address", "language", "time_zone"]}),
        (
            "Delivery",
            {
                "fields": [
                    "status",
                    "status_reason",
                    "due_at",
                    "queued_at",
                    "claimed_at",
                    "claim_expires_at",
                    "attempt_count",
                    "next_attempt_at",
                    "sent_at",
                    "delivered_at",
                    "provider_id",
                ]
            },
        ),
        ("Text", {"fields": ["rendered_subject", "text"]}),
        ("Facts the text is rendered from", {"fields": ["context"], "classes": ["collapse"]}),
    ]

    class Media:
        css = CSS

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the outbox is the record of what was sent

    @admin.display(description="recipient")
    def recipient(self, obj: Message) -> str:
        if obj.caregiver is not None:
            return f"{obj.caregiver.name} (caregiver)"
        if obj.recipient_kind == "staff":
            return "clinic staff"
        return obj.patient.full_name if obj.patient else obj.recipient_key

    @admin.display(description="patient", ordering="patient__family_name")
    def patient_link(self, obj: Message) -> SafeString:
        return _link("patients_patient", obj.patient)

    @admin.display(description="pump")
    def pump_link(self, obj: Message) -> SafeString:
        return _link("pumps_pump", obj.pump)

    @admin.display(description="text")
    def text(self, obj: Message) -> SafeString:
        """The text as sent; before sending, what it would read now."""
        if obj.rendered_body:
            return format_html('<p>As sent:</p><pre style="white-space: pre-wrap">{}</pre>', obj.rendered_body)
        try:
            out = services.render(obj)
        except Exception as exc:  # shown to staff: a text that cannot render cannot be sent
            return format_html('<p class="pt-flag">This message cannot be rendered: {}</p>', exc)
        return format_html(
            '<p>Not sent yet. If sent now it would read:</p><pre style="white-space: pre-wrap">{}{}</pre>',
            f"{out.subject}\n\n" if out.subject else "",
            out.text,
        )


# ----------------------------------------------------------------------------- escalations

STATUS_ORDER = Case(
    When(status=EscalationStatus.OPEN, then=Value(0)),
    When(status=EscalationStatus.ACKNOWLEDGED, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)


class EscalationForm(forms.ModelForm):
    class Meta:
        model = Escalation
        fields = ["resolution"]
        widgets = {"resolution": forms.Textarea(attrs={"rows": 3, "cols": 80})}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "resolution" not in self.fields:
            # Resolved meanwhile (by a colleague, or in another tab): the note is read-only now.
            raise forms.ValidationError("This escalation is already resolved.")
        # Resolving says what was done: the next person reading the record needs it.
        if "_resolve" in self.data and not (cleaned.get("resolution") or "").strip():
            self.add_error("resolution", "Say what was done before resolving.")
        return cleaned


class ResolveForm(forms.Form):
    resolution = forms.CharField(
        max_length=300, widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), help_text="What was done (kept with each one)."
    )


@admin.register(Escalation)
class EscalationAdmin(AuditedAdminMixin, ClinicScopedAdmin):
    """Staff tasks, open ones first, then by severity (critical first), newest first."""

    clinic_lookup = "clinic"
    form = EscalationForm
    change_form_template = "admin/notifications/escalation/change_form.html"
    list_display = ["raised_at", "severity_label", "reason", "status", "patient_link", "pump_link", "detail", "handled_by"]
    list_display_links = ["raised_at", "severity_label"]
    list_filter = ["status", "severity", "reason", ("clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["patient__mrn", "patient__family_name", "pump__serial_number", "detail"]
    list_select_related = ["patient", "pump__model", "acknowledged_by", "resolved_by"]
    ordering = [STATUS_ORDER.asc(), SEVERITY_RANK.desc(), "-raised_at"]
    actions = ["acknowledge", "resolve"]
    fieldsets = [
        (None, {"fields": ["severity", "reason", "status", "detail", "patient_link", "pump_link", "clinic", "raised_at"]}),
        ("Handling", {"fields": ["acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by", "resolution"]}),
    ]
    readonly_fields = [f.name for f in Escalation._meta.fields if f.name != "resolution"] + ["patient_link", "pump_link"]

    class Media:
        css = CSS

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and obj.status == EscalationStatus.RESOLVED:
            return [*self.readonly_fields, "resolution"]
        return self.readonly_fields

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False  # raised by the planner and the senders, never typed in

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="severity", ordering=SEVERITY_RANK.desc())
    def severity_label(self, obj: Escalation) -> SafeString:
        label = obj.get_severity_display()
        return format_html('<span class="{}">{}</span>', "pt-flag" if obj.severity == Severity.CRITICAL else "", label)

    @admin.display(description="patient", ordering="patient__family_name")
    def patient_link(self, obj: Escalation) -> SafeString:
        return _link("patients_patient", obj.patient)

    @admin.display(description="pump")
    def pump_link(self, obj: Escalation) -> SafeString:
        return _link("pumps_pump", obj.pump)

    @admin.display(description="handled by")
    def handled_by(self, obj: Escalation) -> str:
        user = obj.resolved_by or obj.acknowledged_by
        return (user.get_full_name() or user.get_username()) if user else "-"

    # -- the change page: Acknowledge and Resolve buttons instead of Save

    def save_model(self, request: HttpRequest, obj: Escalation, form: Any, change: bool) -> None:
        now = timezone.now()
        if "_resolve" in request.POST:
            services.resolve_escalation(obj, by=request.user, now=now, resolution=form.cleaned_data["resolution"].strip())
        elif "_acknowledge" in request.POST:
            services.acknowledge_escalation(obj, by=request.user, now=now)

    def response_change(self, request: HttpRequest, obj: Escalation) -> HttpResponse:
        obj.refresh_from_db()
        self.message_user(request, f"{obj}: {obj.get_status_display().lower()}.")
        return HttpResponseRedirect(reverse("admin:notifications_escalation_changelist"))

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        obj = kwargs.get("obj")
        may = obj is not None and self.has_change_permission(request, obj)
        context["may_acknowledge"] = may and obj.status == EscalationStatus.OPEN
        context["may_resolve"] = may and obj.status != EscalationStatus.RESOLVED
        return super().render_change_form(request, context, *args, **kwargs)

    # -- list actions

    def _writable(self, request: HttpRequest, queryset: QuerySet[Escalation]) -> list[Escalation]:
        return [esc for esc in queryset.select_related("clinic") if self.has_change_permission(request, esc)]

    @admin.action(description="Acknowledge selected escalations", permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Escalation]) -> None:
        chosen = [esc for esc in self._writable(request, queryset) if esc.status == EscalationStatus.OPEN]
        for esc in chosen:
            services.acknowledge_escalation(esc, by=request.user, now=timezone.now())
        self.message_user(request, f"Acknowledged {len(chosen)} escalation(s).")

    @admin.action(description="Resolve selected escalations…", permissions=["change"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Escalation]) -> TemplateResponse | None:
        chosen = [esc for esc in self._writable(request, queryset) if esc.status != EscalationStatus.RESOLVED]
        form = ResolveForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for esc in chosen:
                services.resolve_escalation(esc, by=request.user, now=timezone.now(), resolution=form.cleaned_data["resolution"])
            self.message_user(request, f"Resolved {len(chosen)} escalation(s).")
            return None
        if not chosen:
            self.message_user(request, "None of the selected escalations is open to you.", messages.WARNING)
            return None
        return _action_page(
            self,
            request,
            title="Resolve escalations",
            intro="Say what was done. The note is kept with each escalation.",
            objects=chosen,
            form=form,
            action="resolve",
            button="Resolve",
        )


def _action_page(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    title: str,
    intro: str,
    objects: list[Any],
    form: forms.Form,
    action: str,
    button: str,
) -> TemplateResponse:
    """The intermediate page of an action that needs a note or a confirmation."""
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "intro": intro,
        "objects": objects,
        "form": form,
        "action": action,
        "button": button,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/notifications/action_form.html", context)


# ----------------------------------------------------------------------------- contact blocks


def addresses_of(clinics: QuerySet[Clinic]) -> Q:
    """Blocks on an email address or phone number of a patient or caregiver in `clinics`."""
    patients = Patient.objects.filter(clinic__in=clinics)
    caregivers = Caregiver.objects.filter(patient__clinic__in=clinics)
    return (
        Q(channel=Channel.EMAIL, address__in=patients.exclude(email="").values("email"))
        | Q(channel=Channel.EMAIL, address__in=caregivers.exclude(email="").values("email"))
        | Q(channel=Channel.SMS, address__in=patients.exclude(phone="").values("phone"))
        | Q(channel=Channel.SMS, address__in=caregivers.exclude(phone="").values("phone"))
    )


def people_at(block: ContactBlock, clinics: QuerySet[Clinic]) -> SafeString:
    """Links to the patients (a caregiver: their patient) in `clinics` who use this address."""
    field = "email" if block.channel == Channel.EMAIL else "phone"
    rows: list[tuple[str, str]] = [
        (reverse("admin:patients_patient_change", args=[p.pk]), str(p))
        for p in Patient.objects.filter(clinic__in=clinics, **{field: block.address})
    ]
    rows += [
        (reverse("admin:patients_patient_change", args=[c.patient_id]), f"{c.name}, caregiver of {c.patient}")
        for c in Caregiver.objects.filter(patient__clinic__in=clinics, **{field: block.address}).select_related("patient")
    ]
    if not rows:
        return mark_safe("-")
    return format_html_join(mark_safe("<br>"), '<a href="{}">{}</a>', rows)


class ActiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Active (messages stopped)"), ("no", "Lifted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ContactBlock]) -> QuerySet[ContactBlock]:
        if self.value() == "yes":
            return queryset.filter(lifted_at=None)
        if self.value() == "no":
            return queryset.exclude(lifted_at=None)
        return queryset


class LiftForm(forms.Form):
    confirmed = forms.BooleanField(
        required=True,
        label="I have confirmed with the person that this address or number is theirs and is correct, "
        "and that they agree to receive reminders on it again.",
    )


@admin.register(ContactBlock)
class ContactBlockAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Who opted out or cannot be reached, when and how; lifted by staff after a confirmation."""

    list_display = ["created_at", "channel", "address", "reason", "method", "keyword", "lifted_at", "lifted_method"]
    list_filter = [ActiveFilter, "channel", "reason", "method"]
    search_fields = ["address"]
    actions = ["lift"]
    fields = ["channel", "address", "reason", "method", "keyword", "detail", "created_at", "lifted_at", "lifted_method"]
    readonly_fields = fields

    def _people_column(self, request: HttpRequest) -> Callable[[ContactBlock], SafeString]:
        clinics = clinics_for(request.user)

        def who(block: ContactBlock) -> SafeString:
            return people_at(block, clinics)

        who.short_description = "patient or caregiver"  # type: ignore[attr-defined]
        return who

    def get_list_display(self, request: HttpRequest) -> Any:
        return [*self.list_display[:3], self._people_column(request), *self.list_display[3:]]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*self.fields[:2], self._people_column(request), *self.fields[2:]]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ContactBlock]:
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        return qs.filter(addresses_of(clinics_for(request.user)))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_member(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_member(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # blocks come from STOP, unsubscribe links and provider failures

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the record stays as it was received; lifting is an action

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_lift_permission(self, request: HttpRequest) -> bool:
        return may_write(request.user, "notifications.contactblock")

    @admin.action(description="Lift selected blocks (contact confirmed)…", permissions=["lift"])
    def lift(self, request: HttpRequest, queryset: QuerySet[ContactBlock]) -> TemplateResponse | None:
        writable = clinics_writable(request.user, "notifications.contactblock")
        scoped = queryset if request.user.is_superuser else queryset.filter(addresses_of(writable))
        chosen = list(scoped.filter(lifted_at=None))
        if not chosen:
            self.message_user(request, "None of the selected blocks is active and yours to lift.", messages.WARNING)
            return None
        form = LiftForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for block in chosen:
                services.lift_block(block.channel, block.address, method=BlockMethod.STAFF, now=timezone.now())
            self.message_user(request, f"Lifted {len(chosen)} block(s); their reminders are re-planned.")
            return None
        return _action_page(
            self,
            request,
            title="Lift contact blocks",
            intro="Messages start again on these addresses. Lift a block only after you confirmed the contact "
            "with the person: an opt-out is their choice, and a failing number may belong to someone else now.",
            objects=chosen,
            form=form,
            action="lift",
            button="Lift",
        )


# ----------------------------------------------------------------------------- the pump's page


def pump_messages_panel(pump: Pump) -> str:
    """A small read-only panel for the pump's admin page: upcoming and recent messages, open escalations."""
    rows = Message.objects.filter(pump=pump).select_related("caregiver", "patient")
    return render_to_string(
        "admin/notifications/_pump_messages.html",
        {
            "upcoming": rows.filter(status__in=[*OPEN_STATES, Status.SENDING]).order_by("due_at", "pk")[:12],
            "recent": rows.exclude(status__in=[*OPEN_STATES, Status.SENDING]).order_by("-updated_at", "-pk")[:12],
            "escalations": pump.escalations.exclude(status=EscalationStatus.RESOLVED).order_by(
                STATUS_ORDER.asc(), SEVERITY_RANK.desc(), "-raised_at"
            ),
            "messages_url": reverse("admin:notifications_message_changelist") + f"?pump__id__exact={pump.pk}",
            "escalations_url": reverse("admin:notifications_escalation_changelist") + f"?pump__id__exact={pump.pk}",
        },
    )
