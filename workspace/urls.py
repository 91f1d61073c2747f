from django.urls import URLPattern, path

from workspace import views

app_name = "workspace"
urlpatterns: list[URLPattern] = [
    path("", views.worklist, name="worklist"),
    path("worklist.csv", views.worklist_csv, name="worklist-csv"),
    path("outreach/<int:pump_id>/", views.log_outreach, name="outreach"),
]
