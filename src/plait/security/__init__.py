"""TLS, authentication and limits for plait's servers and clients (see ``docs/security.md``)."""

from plait.security.auth import AuthCheck, Authenticator, AuthRequest, auth_reference
from plait.security.client import ClientSecurity

__all__ = ["AuthCheck", "AuthRequest", "Authenticator", "ClientSecurity", "auth_reference"]
