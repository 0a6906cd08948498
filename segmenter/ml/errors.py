"""The one error every reader raises for a file it cannot take."""

from __future__ import annotations


class UnreadableImage(ValueError):
    """A file that cannot be read as a CT slice; ``str()`` is a message for the user.

    ``code`` names the reason (a short snake_case string that never changes) and
    ``params`` holds the values its message mentions, so that a caller can show the
    reason in another language without parsing the English message. Values are str,
    int, or (under "reason", when a file inside an archive is unreadable) the
    UnreadableImage of that file.
    """

    def __init__(self, message: str, *, code: str | None = None, params: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.params = dict(params or {})
