"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


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
