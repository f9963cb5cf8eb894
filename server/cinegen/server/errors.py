"""Errors an artist can act on. Each maps to one gRPC status code; the message says what to fix."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the request or the setup, reported with a sentence an artist can act on."""
    code = "INVALID_ARGUMENT"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(UserError):
    code = "INVALID_ARGUMENT"


class NotFound(UserError):
    code = "NOT_FOUND"


class FailedPrecondition(UserError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(UserError):
    code = "RESOURCE_EXHAUSTED"


class PermissionDenied(UserError):
    code = "PERMISSION_DENIED"


class AlreadyExists(UserError):
    code = "ALREADY_EXISTS"


class JobCancelled(Exception):
    """Raised between denoising steps when the job was cancelled."""
