"""One-method permission classes (STYLE.md §9). Objects are scoped by the querysets."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from patients.access import is_member, may_write


def read_only_token(request: Request) -> bool:
    return bool(getattr(request.auth, "read_only", False))


class IsClinicMember(permissions.BasePermission):
    """Staff with a role in at least one clinic (or superusers); reads for every member,
    writes only for roles that may write the view's model (patients.access.WRITE_ROLES)."""

    message = "Your account has no role in any clinic."

    def has_permission(self, request: Request, view: Any) -> bool:
        if not is_member(request.user):
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        if read_only_token(request):
            self.message = "This API token is read-only."
            return False
        label = getattr(view, "write_label", "")
        return bool(label) and may_write(request.user, label)

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        if read_only_token(request):
            return False
        return may_write(request.user, view.write_label, view.clinic_of(obj))


class IsMember(permissions.BasePermission):
    """Staff with a role in a clinic, for their own things (their API tokens)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method not in permissions.SAFE_METHODS and read_only_token(request):
            self.message = "This API token is read-only."
            return False
        return is_member(request.user)
