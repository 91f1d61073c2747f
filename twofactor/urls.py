from django.urls import path

from twofactor import views

app_name = "twofactor"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("verify/", views.verify, name="verify"),
    path("enrol/", views.enrol, name="enrol"),
    path("backup-codes/", views.backup_codes, name="backup_codes"),
    path("remove/", views.remove, name="remove"),
]
