"""`/api/v1/`: the names integrations rely on (DESIGN.md "API contract")."""

from django.urls import re_path
from rest_framework.routers import DefaultRouter

from api import views
from integrations import api as feeds_api
from webhooks import api as webhooks_api

router = DefaultRouter()
router.register("clinics", views.ClinicViewSet)
router.register("patients", views.PatientViewSet)
router.register("pump-models", views.PumpModelViewSet)
router.register("pumps", views.PumpViewSet)
router.register("programs", views.ProgramViewSet)
router.register("refills", views.RefillViewSet)
router.register("screenings", views.ScreeningViewSet)
router.register("events", views.EventViewSet)
router.register("appointments", views.AppointmentViewSet)
router.register("messages", views.MessageViewSet)
router.register("escalations", views.EscalationViewSet)
router.register("tokens", views.TokenViewSet, basename="token")
router.register("calendar-feeds", feeds_api.CalendarFeedViewSet)
router.register("webhook-endpoints", webhooks_api.WebhookEndpointViewSet)
router.register("webhook-deliveries", webhooks_api.WebhookDeliveryViewSet)

urlpatterns = [*router.urls, re_path(r"^(?P<path>[\s\S]*)$", views.not_found)]
