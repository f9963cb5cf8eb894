"""Every failure the panel can meet, as one sentence that names the cause and the action to take."""
from __future__ import annotations

from cinegen.common.client import RequestRejected, ServerUnavailable
from cinegen.common.connection import ConnectionSettings, IncompatibleServer
from cinegen.common.sequence import SequencePatternError

_ACTIONS = {
    "INVALID_ARGUMENT": "Change the highlighted setting and press Generate again.",
    "NOT_FOUND": "Pick one the server offers (reconnect to refresh the lists).",
    "RESOURCE_EXHAUSTED": "Lower the size or frame count, then try again.",
    "FAILED_PRECONDITION": "Fix the path or folder named above, then try again.",
    "ALREADY_EXISTS": "Press Generate again: the panel picks a new job id.",
    "PERMISSION_DENIED": "Ask the server's administrator for access.",
    "INTERNAL": "Try again; if it happens again, send the server log with the job id.",
}
# a server limit (`cinegen serve --max-steps`): lowering size or frames is no answer to too many steps
LIMIT_ACTION = "Lower it to the limit, or ask whoever runs the server to raise it."


def describe_error(exc: BaseException, settings: ConnectionSettings | None = None) -> str:
    """A sentence for the artist: what went wrong and what to do about it."""
    address = settings.address if settings else "the server"
    if isinstance(exc, (ServerUnavailable, IncompatibleServer, SequencePatternError)):
        return str(exc)
    if isinstance(exc, RequestRejected):
        if exc.code == "UNAUTHENTICATED":
            if settings is not None and not settings.token:
                return (f"The cinegen server at {address} needs an access token: enter the token it was started "
                        "with (its --token-file or $CINEGEN_TOKEN) in the connection settings.")
            return (f"The cinegen server at {address} refused the access token: check that the token in the "
                    "connection settings is the one the server was started with (its --token-file or $CINEGEN_TOKEN).")
        if exc.code == "CANCELLED":
            return "The request was stopped because the panel closed its connection: reconnect and try again."
        sentence = exc.message.strip() or f"The server refused the request ({exc.code})."
        action = LIMIT_ACTION if "over this server's limit" in sentence else _ACTIONS.get(exc.code, "")
        if action and not _says_what_to_do(sentence):
            sentence = f"{sentence} {action}"
        return sentence
    if isinstance(exc, ValueError):  # our own validation (certificates, plates): already a sentence
        return str(exc)
    if isinstance(exc, OSError):
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        return (f"A file on this machine could not be used{where} ({exc.strerror or exc}): check the path and "
                "that you may read and write there, then try again.")
    return (f"Something unexpected went wrong ({type(exc).__name__}: {exc}). Try again; if it keeps happening, "
            "report it with the panel's log.")


def _says_what_to_do(sentence: str) -> bool:
    """Server messages usually end with the fix already ("…; try 104.", "Pick another with --model.")."""
    lowered = sentence.lower()
    return any(word in lowered for word in ("try ", "use ", "pick ", "choose ", "enter ", "check ", "say ",
                                            "submit ", "lower ", "fix ", "add ", "set ", "start "))
