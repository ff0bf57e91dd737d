"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

MAX_MESSAGE_CHARS = 2000  # a message quoting what a file or peer sent is cut here, not echoed whole


class EdgesplitError(Exception):
    """Base of every error edgesplit reports to a user."""


class BundleError(EdgesplitError):
    """A bundle is missing, corrupt, or does not match its manifest."""


class WireError(EdgesplitError):
    """A payload or frame does not match what the manifest says crosses the wire."""


class TargetError(EdgesplitError):
    """A target is unknown or cannot be built by this toolchain yet."""


class ProtocolError(EdgesplitError):
    """A network frame or handshake breaks the protocol; `code` is the wire error code to answer with."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def one_line(error: Exception) -> str:
    """The message as the CLI prints it: at most MAX_MESSAGE_CHARS (a 3 MB bundle id in a manifest is not
    echoed whole)."""
    text = str(error)
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return "{} ... ({:,} characters in all)".format(text[:MAX_MESSAGE_CHARS], len(text))
