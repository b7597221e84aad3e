"""Kill ``mailblast send`` with SIGKILL many times, resume it, and check what arrived.

Runs the kill scenario of the test suite at a larger size (100,000 recipients and 20 kills by
default) against three loopback sinks that the scenario starts itself. After the kills it runs
``send`` to the end, ``retry --unknown`` and ``send`` again, and then checks these invariants:

- every recipient was received at least once;
- no recipient outside the ``unknown`` records was received twice;
- no kill left more messages in flight than there are open connections;
- every message ends in the ``sent`` state.

Usage, from the repository root::

    .venv/bin/python bench/kill_resume.py [--recipients 100000] [--kills 20] [--seed N]
        [--runs 1] [--output DIR]

Exit status: 0 when every invariant holds, 1 when one fails (a product bug), 2 for invalid
arguments, 3 when fewer kills than requested landed after messages were sent. Status 3 means the
delays need adjusting, because the run proved less than it should.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

# The scenario and its conftest helpers live in tests/, which is not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kill_scenario import KillReport, run_kill_scenario

EXIT_INVARIANT_FAILED = 1
EXIT_KILLS_MISSED = 3


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Kill and resume mailblast send, and check that nothing is lost or sent twice."
    )
    parser.add_argument("--recipients", type=int, default=100_000, help="list size (rows)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per run")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run's kill delays")
    parser.add_argument("--runs", type=int, default=1, help="runs, seeded SEED, SEED+1, ...")
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="keep each run's files (list, store, send.log) in DIR/seed-N. By default they go to a"
        " temporary directory, which is removed unless a run fails",
    )
    # NOTE: the delay defaults suit 100,000 rows on a 2-CPU machine, where a resumed run sends
    # after about 0.35 s and the first run loads the list in about 1.4 s. Larger lists need a
    # larger --load-delay, and exit status 3 reports delays that do not fit.
    parser.add_argument(
        "--min-delay", type=float, default=1.0, help="minimum time before a kill (seconds)"
    )
    parser.add_argument(
        "--max-delay", type=float, default=3.0, help="maximum time before a kill (seconds)"
    )
    parser.add_argument(
        "--load-delay",
        type=float,
        default=2.0,
        help="extra time before the first kill, while the first run loads the list (seconds)",
    )
    arguments = parser.parse_args(argv)

    for name in ("recipients", "kills", "runs"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} {getattr(arguments, name)} must be at least 1")
    if not 0 < arguments.min_delay <= arguments.max_delay:
        parser.error(
            f"--min-delay {arguments.min_delay} and --max-delay {arguments.max_delay} must satisfy"
            " 0 < min-delay <= max-delay"
        )
    if arguments.load_delay < 0:
        parser.error(f"--load-delay {arguments.load_delay} must not be negative")
    return arguments


def failed_invariants(report: KillReport) -> list[str]:
    """Return a description of each invariant the run broke, or an empty list if it broke none."""
    failures = []
    if report.missing:
        failures.append(f"{report.missing} recipients were never received")

    duplicated = report.duplicated_outside_unknown
    if duplicated:
        failures.append(
            f"{len(duplicated)} recipients outside the unknown records were received twice,"
            f" for example {', '.join(sorted(duplicated)[:5])}"
        )

    max_in_flight = max(report.in_flight_after_kill, default=0)
    if max_in_flight > report.open_connections:
        failures.append(
            f"a kill left {max_in_flight} messages in flight,"
            f" more than the {report.open_connections} open connections"
        )

    if report.final_counts != {"sent": report.recipients}:
        failures.append(
            f"final states {report.final_counts}, expected all {report.recipients} sent"
        )
    return failures


def print_report(seed: int, directory: Path, report: KillReport, failures: list[str]) -> None:
    unknown_received_twice = sum(1 for r in report.unknown if report.received[r] > 1)
    states = ", ".join(f"{state}={count}" for state, count in sorted(report.final_counts.items()))
    rows = [
        ("recipients", f"{report.recipients}"),
        (
            "kills that hit a running sender",
            f"{report.kills} ({report.kills_during_sending} after messages were sent)",
        ),
        ("unknown (total)", f"{len(report.unknown)}"),
        ("unknown received twice", f"{unknown_received_twice}"),
        (
            "max in flight after a kill",
            f"{max(report.in_flight_after_kill, default=0)}"
            f" (open connections: {report.open_connections})",
        ),
        ("in flight after each kill", " ".join(map(str, report.in_flight_after_kill))),
        ("missing recipients", f"{report.missing}"),
        ("received twice, not unknown", f"{len(report.duplicated_outside_unknown)}"),
        ("final states", states),
        ("wall time", f"{report.seconds:.1f} s"),
        ("invariants", "ok" if not failures else "FAILED"),
    ]
    print(f"run seed={seed} in {directory}")
    for label, value in rows:
        print(f"  {label:<32} {value}")
    for failure in failures:
        print(f"  FAILED: {failure}")
    sys.stdout.flush()


def run_once(arguments: argparse.Namespace, seed: int, directory: Path) -> KillReport:
    directory.mkdir(parents=True)
    return run_kill_scenario(
        directory,
        arguments.recipients,
        arguments.kills,
        seed=seed,
        min_delay=arguments.min_delay,
        max_delay=arguments.max_delay,
        load_delay=arguments.load_delay,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    root = arguments.output or Path(tempfile.mkdtemp(prefix="mailblast-kill-"))
    seeds = [arguments.seed + number for number in range(arguments.runs)]
    existing = [root / f"seed-{seed}" for seed in seeds if (root / f"seed-{seed}").exists()]
    if existing:
        message = f"error: {existing[0]} already exists; remove it or choose another --output"
        print(message, file=sys.stderr)
        return 2

    status = 0
    wall_times = []
    for seed in seeds:
        directory = root / f"seed-{seed}"
        report = run_once(arguments, seed, directory)
        failures = failed_invariants(report)
        print_report(seed, directory, report, failures)
        wall_times.append(report.seconds)

        if failures:
            status = EXIT_INVARIANT_FAILED
        elif report.kills_during_sending < arguments.kills and status == 0:
            print(
                f"  only {report.kills_during_sending} of {arguments.kills} kills landed after"
                " messages were sent; adjust --min-delay, --max-delay or --load-delay"
            )
            status = EXIT_KILLS_MISSED

    print(f"runs: {len(wall_times)}, median wall time: {statistics.median(wall_times):.1f} s")
    if arguments.output is None and status == 0:
        shutil.rmtree(root)
    elif arguments.output is None:
        print(f"kept the runs' files (store, send.log) in {root}")
    return status


if __name__ == "__main__":
    sys.exit(main())
