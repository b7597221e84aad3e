"""Read messages from .eml files, maildir folders and mbox files, without changing them."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailblast.errors import MailblastError

_MBOX_START = b"From "


class MailboxError(MailblastError):
    """A path given to read messages from is missing or cannot be read."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """The bytes of one message and where they came from, for reports and the review folder."""

    source: str  # file path, or "folder:key" inside a maildir and "file:index" inside an mbox
    data: bytes


def check_paths(paths: Sequence[str]) -> None:
    """Raise MailboxError naming every path that does not exist, before anything is read."""
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        raise MailboxError(
            f"not found: {', '.join(missing)}; give .eml files, maildir folders or mbox files"
        )


def iter_messages(paths: Sequence[str]) -> Iterator[StoredMessage]:
    """Yield every message under the paths: maildirs, mbox files, .eml files, folders of them."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from _iter_folder(path)
        else:
            yield from _iter_file(path)


def _iter_folder(path: Path) -> Iterator[StoredMessage]:
    if (path / "cur").is_dir() and (path / "new").is_dir():
        folder = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(folder.keys()):
            yield StoredMessage(f"{path}:{key}", folder.get_bytes(key))
        return
    for child in sorted(path.rglob("*")):
        if child.is_file():
            yield from _iter_file(child)


def _iter_file(path: Path) -> Iterator[StoredMessage]:
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(_MBOX_START))
    except OSError as error:
        raise MailboxError(f"cannot read {path}: {error.strerror}") from error

    if start != _MBOX_START:
        yield StoredMessage(str(path), path.read_bytes())
        return
    # mailbox.mbox opens the file for update when it may, but nothing here writes to it.
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        for index, key in enumerate(box.keys()):
            yield StoredMessage(f"{path}:{index}", box.get_bytes(key))
    finally:
        box.close()
