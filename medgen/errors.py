"""The error types medgen raises for problems a user can fix.

A :class:`MedgenError` carries the offending file or config key and the fix, so the command line
can print one clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedgenError(Exception):
    """A problem the user can fix: names what is wrong, where, and how to fix it.

    Args:
        message: what is wrong.
        path: the file, folder or config key concerned, if any.
        fix: how to fix it, if known.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as one line: ``path: message. Fix: fix``."""
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text = f"{text.rstrip('.')}. Fix: {self.fix}"
        return text


class InputError(MedgenError):
    """An input volume, DICOM folder, label map or manifest cannot be used."""


class ConfigError(MedgenError):
    """A config file or ``--set`` override is invalid."""


class ModelError(MedgenError):
    """A model file, bundle or checkpoint is missing, corrupt or untrusted."""


class OutputError(MedgenError):
    """An output cannot be written (exists, unwritable, would overwrite an input, disk full)."""
