from django.urls import path

from integrations import views

app_name = "feeds"
urlpatterns = [
    path("<str:token>.ics", views.calendar, name="calendar"),
]
