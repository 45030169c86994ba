"""The error an export raises when it cannot be made, or would not work."""


class ExportError(RuntimeError):
    """An export that cannot be made, or that would not work: one line that says why."""
