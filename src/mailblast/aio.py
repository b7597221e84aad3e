"""asyncio helpers shared by the engine and the relay pool."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from mailblast.errors import MailblastError

logger = logging.getLogger("mailblast.engine")

EVENT_LOOP_VARIABLE = "MAILBLAST_EVENT_LOOP"
T = TypeVar("T")


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that Python 3.11 reported as a timeout.

    When a task is cancelled as its ``asyncio.timeout`` expires, 3.11 can raise TimeoutError
    and lose the cancellation. A loop that treats the timeout as "nothing yet" would then
    never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` like asyncio.run, on uvloop when it is installed and not turned off.

    ``MAILBLAST_EVENT_LOOP`` chooses: ``auto`` (the default: uvloop if importable), ``uvloop``
    (an error if it is missing) or ``asyncio``.
    """
    try:
        factory = loop_factory()
    except MailblastError:
        coroutine.close()  # never started, so no "never awaited" warning
        raise
    logger.debug("event loop: %s", "uvloop" if factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop constructor, or None for asyncio's default loop."""
    choice = os.environ.get(EVENT_LOOP_VARIABLE, "auto")
    if choice not in ("auto", "uvloop", "asyncio"):
        raise MailblastError(
            f"{EVENT_LOOP_VARIABLE}={choice!r} is invalid; use auto, uvloop or asyncio"
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise MailblastError(
                f"{EVENT_LOOP_VARIABLE}=uvloop, but uvloop is not installed; install it with"
                " pip install 'mailblast[fast]'"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
