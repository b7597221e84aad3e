"""Print the agreement with Sisimai over the bounce corpus and every disagreement.

Usage, from the repository root::

    .venv/bin/python bench/bounce_agreement.py [--all]

``--all`` prints every compared recipient, not only the disagreements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bounce_corpus import measure_agreement


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="print agreements too")
    arguments = parser.parse_args()

    agreement = measure_agreement()
    shown = agreement.comparisons if arguments.all else agreement.disagreements
    for c in shown:
        found = f"{c.bounce_class} {c.status}" if c.found else "recipient not found"
        print(f"{c.file}\t{c.recipient}\tsisimai {c.sisimai_reason}\tmailblast {found}")
        if c.found:
            print(f"\t{c.diagnostic}")
    agreed = len(agreement.comparisons) - len(agreement.disagreements)
    print(f"agreement {agreed}/{len(agreement.comparisons)} = {agreement.share:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
