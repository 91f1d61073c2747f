"""Helpers shared by the admin tests: the frozen visit time, staff users, the test client
and what a response's admin form and change list hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.test import Client
from factories import IMPLANTED_AT, MembershipFactory, UserFactory

from patients.models import Clinic
from pumps.models import Pump

# The factories' implant is 2027-01-04 09:00 UTC: a 40 mL SynchroMed II filled full at
# 500 mcg/mL, 200 mcg/day (0.4 mL/day), 2 mL alarm. The visit is 28 days later.
VISIT_AT = IMPLANTED_AT + timedelta(days=28)  # 2027-02-01 09:00 UTC
NOW = VISIT_AT + timedelta(hours=3)


def staff(*roles: tuple[Clinic, str]) -> Any:
    """A staff user with one membership per (clinic, role)."""
    user = UserFactory(is_staff=True)
    for clinic, role in roles:
        MembershipFactory(user=user, clinic=clinic, role=role)
    return user


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_errors(response: Any) -> dict[str, list[str]]:
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def listed(response: Any) -> set[int]:
    assert response.status_code == 200
    return {obj.pk for obj in response.context["cl"].result_list}


def split_moment(at: datetime, tz: Any = UTC) -> dict[str, str]:
    """Admin datetime widgets post a date and a time, in the clinic's zone."""
    local = at.astimezone(tz)
    return {"0": local.strftime("%Y-%m-%d"), "1": local.strftime("%H:%M:%S")}


def refill_data(pump: Pump, *, at: datetime = VISIT_AT, token: str = "", tz: Any = UTC, **fields: Any) -> dict[str, Any]:
    """The refill add form as a nurse fills it in; `fields` override any value."""
    moment = split_moment(at, tz)
    data = {
        "pump": pump.pk,
        "performed_at_0": moment["0"],
        "performed_at_1": moment["1"],
        "withdrawn_ml": "28.50",
        "volume_added_ml": "40",
        "concentration_mcg_per_ml": "500",
        "drug_product": "lioresal",
        "drug_lot": "L1234",
        "expires_on": "",
        "method": "template",
        "notes": "",
        "reason": "",
        "preview_token": token,
        "_save": "Save",
    }
    data.update(fields)
    return data


def _field_data(form: forms.BaseForm) -> dict[str, str]:
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field, forms.BooleanField):
            if value:  # an unticked checkbox is not posted at all
                data[form.add_prefix(name)] = "on"
        else:
            data[form.add_prefix(name)] = "" if value is None else str(value)
    return data


def as_shown(response: Any, **changes: Any) -> dict[str, str]:
    """A change page's form and inlines posted back as the browser shows them, plus `changes`."""
    data = {**_field_data(response.context["adminform"].form), "_save": "Save"}
    for inline in response.context["inline_admin_formsets"]:
        data.update(_field_data(inline.formset.management_form))
        for form in inline.formset.forms:
            data.update(_field_data(form))
    data.update(changes)
    return data
