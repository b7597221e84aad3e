"""Exit statuses of the ``mailblast`` command."""

from __future__ import annotations

EXIT_ERROR = 2  # a MailblastError: the message says what failed and how to fix it
EXIT_INTERRUPTED = 130  # the shell's convention for a run ended by SIGINT
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE
EXIT_PROBLEMS_FOUND = 1  # a check ran and found at least one error
