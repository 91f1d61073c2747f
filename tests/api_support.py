"""Helpers for API, FHIR and feed tests: real tokens through the service, real HTTP stack."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient

from api import services


def token_for(user: Any, name: str = "test integration", *, read_only: bool = False) -> str:
    """Issue a token for `user` as the admin does, and return its key."""
    _, key = services.issue_token(user=user, name=name, by=user, read_only=read_only)
    return key


def api_client(user: Any, *, read_only: bool = False) -> APIClient:
    """A client that authenticates like an integration: `Authorization: Token <key>`."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user, read_only=read_only)}")
    return client
