"""asyncio helpers shared by the engine and the relay pool."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that Python 3.11 reported as a timeout.

    When a task is cancelled as its ``asyncio.timeout`` expires, 3.11 can raise TimeoutError
    and lose the cancellation. A loop that treats the timeout as "nothing yet" would then
    never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
