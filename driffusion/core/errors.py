"""The one base class of the errors a user causes and can fix from the message alone."""

from __future__ import annotations


class UsageError(Exception):
    """An error in what the user asked for (an argument, a file, a folder, a model id), raised
    before any compute where the check needs no weights.

    Subclasses also derive from the built-in class a caller would expect (``ValueError``,
    ``RuntimeError``, ``FileNotFoundError``); the recipes print the message on one line and exit
    with status 2 instead of a traceback
    ([`exit_on_usage_error`][driffusion.lightning.cli.exit_on_usage_error]).
    """
