"""The exceptions mailblast raises to its callers.

::

    MailblastError                 anything the CLI reports as "error: ..." with exit status 2
    ├── ConfigError                invalid campaign file or settings; carries every problem found
    ├── TemplateError              a template does not compile or uses a column the list lacks
    ├── LoadError                  the recipient list cannot be read at all (encoding, header)
    ├── StoreError                 the store cannot be opened or an outcome cannot be written
    └── LeaseLostError             another run took a message over; it must not be sent

Per-message SMTP outcomes are not exceptions: the relay layer turns every reply into a
:class:`mailblast.relay.classify.Outcome` and the engine records it.
"""

from __future__ import annotations


class MailblastError(Exception):
    """Base class of the errors that stop a command with a message for the operator."""


class ConfigError(MailblastError):
    """The campaign settings are invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class TemplateError(MailblastError):
    """A template failed to compile or refers to a variable that no row can supply."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class LoadError(MailblastError):
    """The recipient list cannot be read (as opposed to one bad row, which is rejected)."""


class StoreError(MailblastError):
    """The store cannot be opened, migrated or written; sending stops when this is raised."""


class LeaseLostError(MailblastError):
    """A run's lease on a message expired and another run took the message over.

    The message's final dot is not sent: the run that took it over sends it.
    """
