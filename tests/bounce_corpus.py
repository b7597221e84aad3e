"""Compare bounce classification with Sisimai's results over the corpus in tests/data/bounces.

The corpus contains real returned messages and, in ``sisimai-4.25.15.jsonl``, what Sisimai 4.25.15
reports for each bounced recipient. A recipient counts when Sisimai gives it softbounce 0 or 1,
except for its reasons feedback, vacation and delivered. It agrees when mailblast names the
same recipient (final or original) and makes the same decision: suppress exactly when
Sisimai's softbounce is 0.
"""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass, field
from pathlib import Path

from mailblast.bounce_report import BounceClass, Report, read_report

CORPUS = Path(__file__).parent / "data" / "bounces"
SISIMAI = CORPUS / "sisimai-4.25.15.jsonl"
LEFT_OUT_REASONS = frozenset({"feedback", "vacation", "delivered"})


@dataclass(slots=True)
class Comparison:
    """One Sisimai recipient and what mailblast made of its message."""

    file: str
    recipient: str
    sisimai_reason: str
    sisimai_suppress: bool
    found: bool
    suppress: bool | None
    bounce_class: str | None
    status: str | None
    diagnostic: str

    @property
    def agrees(self) -> bool:
        return self.found and self.suppress == self.sisimai_suppress


@dataclass(slots=True)
class Agreement:
    """The comparisons and the reports of every corpus file."""

    comparisons: list[Comparison] = field(default_factory=list)
    reports: dict[str, Report] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return sum(c.agrees for c in self.comparisons) / len(self.comparisons)

    @property
    def disagreements(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.agrees]


def read_corpus_report(path: Path) -> Report:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    return read_report(message)


def measure_agreement(corpus: Path = CORPUS) -> Agreement:
    agreement = Agreement()
    for line in (corpus / SISIMAI.name).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        name = entry["file"]
        if name not in agreement.reports:
            folder = "maildir" if (corpus / "maildir" / name).exists() else "not-bounces"
            agreement.reports[name] = read_corpus_report(corpus / folder / name)
        if entry.get("bounce") is False or entry["softbounce"] not in (0, 1):
            continue
        if entry["reason"] in LEFT_OUT_REASONS:
            continue
        agreement.comparisons.append(_compare(name, entry, agreement.reports[name]))
    return agreement


def _compare(name: str, entry: dict[str, object], report: Report) -> Comparison:
    recipient = str(entry["recipient"]).lower()
    match = next((f for f in report.failures if recipient in f.addresses), None)
    return Comparison(
        file=name,
        recipient=recipient,
        sisimai_reason=str(entry["reason"]),
        sisimai_suppress=entry["softbounce"] == 0,
        found=match is not None,
        suppress=None if match is None else match.bounce_class is BounceClass.HARD,
        bounce_class=None if match is None else str(match.bounce_class),
        status=None if match is None else match.status,
        diagnostic="" if match is None else match.diagnostic[:300],
    )
