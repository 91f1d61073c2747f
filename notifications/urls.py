from django.urls import path

from notifications import views

app_name = "notifications"

urlpatterns = [
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("twilio/status/", views.twilio_status, name="twilio-status"),
    path("twilio/inbound/", views.twilio_inbound, name="twilio-inbound"),
]
