"""Two-factor authentication for staff (issue 6): an authenticator app (TOTP) plus backup codes.

Built on django-otp's device models; the pages, the login step and the gate are ours.
"""
