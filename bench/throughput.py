"""Measure the whole send pipeline against Postfix's smtp-source and a plain smtplib loop.

Each run sends a generated campaign with ``mailblast send`` (a fresh store every run) to
``--relays`` Postfix ``smtp-sink`` processes on 127.0.0.1, which accept and discard every
message. In the same run two references push messages of the same size into the same sinks:

- ``smtp-source`` over the same total number of connections, each reused for every message
  (``-d``): the ceiling of this machine for this message size;
- a stdlib ``smtplib`` loop over one reused connection to one sink, for at most
  ``SMTPLIB_SECONDS``, extrapolated to msg/s.

Usage, from the repository root::

    .venv/bin/python bench/throughput.py [--recipients 100000] [--relays 3]
        [--connections-per-relay 8] [--processes 1] [--runs 3] [--workdir DIR]

The figures of every run go to ``WORKDIR/throughput.json``. When ``smtp-sink`` or
``smtp-source`` is missing, the script installs Debian's ``postfix`` package with debconf set
to "No configuration", so the Postfix daemon is never configured or started.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailblast.aio import loop_factory
from mailblast.blast import preview
from mailblast.config import load_campaign

SMTP_SINK = Path("/usr/sbin/smtp-sink")
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SINK_BACKLOG = 1024
SINK_START_SECONDS = 5.0
SMTPLIB_SECONDS = 20.0
PREVIEW_ROWS = 30  # rows rendered to find the typical message size
CAMPAIGN_NAME = "throughput"
ENVELOPE_SENDER = "bounces@example.com"
REFERENCE_RECIPIENT = "reader@example.org"

# (display name, romanised name for the address)
FIRST_NAMES = (
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("François", "francois"),
    ("Małgorzata", "malgorzata"),
    ("Liam", "liam"),
    ("Дмитрий", "dmitry"),
    ("Ольга", "olga"),
    ("Γιώργος", "giorgos"),
    ("Ελένη", "eleni"),
    ("محمد", "mohammed"),
    ("فاطمة", "fatima"),
    ("伟", "wei"),
    ("秀英", "xiuying"),
    ("さくら", "sakura"),
    ("翔太", "shota"),
)
LAST_NAMES = (
    ("García", "garcia"),
    ("Müller", "muller"),
    ("Nguyễn", "nguyen"),
    ("Øvergård", "overgard"),
    ("Smith", "smith"),
    ("Иванова", "ivanova"),
    ("Παπαδόπουλος", "papadopoulos"),
    ("الخطيب", "alkhatib"),
    ("王", "wang"),
    ("佐藤", "sato"),
)
COMPANIES = ("Acme Ltd", "Müller & Söhne GmbH", "株式会社サンプル", "ООО Пример", "Exemplo Ltda.")
# (city, country, language)
PLACES = (
    ("Zürich", "Switzerland", "de"),
    ("Kraków", "Poland", "pl"),
    ("Москва", "Россия", "ru"),
    ("Αθήνα", "Ελλάδα", "el"),
    ("القاهرة", "مصر", "ar"),
    ("東京", "日本", "ja"),
    ("北京", "中国", "zh"),
    ("Montréal", "Canada", "fr"),
    ("São Paulo", "Brasil", "pt"),
)
DOMAINS = ("example.com", "example.net", "example.org")
COLUMNS = (
    "email",
    "first_name",
    "last_name",
    "company",
    "city",
    "country",
    "ticket",
    "date",
    "amount",
    "language",
)

SUBJECT = "{{ first_name }}, your ticket {{ ticket }} for {{ city }} on {{ date }}"
# Paragraphs shared by the text and HTML parts. Together they render to about 4 KB of text.
PARAGRAPHS = (
    "Dear {{ first_name }} {{ last_name }},",
    "Thank you for registering for the Spring Conference on behalf of {{ company }}. This"
    " message confirms your place and collects everything you need before the day. Please keep"
    " it until the event, because the ticket number below is what the desk at the entrance will"
    " ask for, and it is the quickest way for our team to find your booking.",
    "Your ticket number is {{ ticket }}. The conference takes place in {{ city }}, {{ country }},"
    " on {{ date }}. Doors open at 8:30 and the first session starts at 9:15. The venue is a short"
    " walk from the main railway station, and signs in several languages lead from the station"
    " exit to the entrance hall. If you arrive by car, the venue car park opens at 7:30.",
    "The amount charged for your registration is {{ amount }} EUR. The invoice for {{ company }}"
    " will follow in a separate message within five working days. If the invoice must show a"
    " purchase order number or a different billing address, reply to this message before the"
    " end of the month and quote your ticket number {{ ticket }}, so that we can match it.",
    "We will send the programme, the speaker notes and the workshop material in your preferred"
    " language ({{ language }}) where a translation exists. Sessions in other languages have live"
    " captions on the screens in each room, and interpreters are available on request for the"
    " plenary sessions. Please tell us a week ahead if you need one, so that we can plan.",
    "The morning programme covers the year's results, three customer stories and a panel on"
    " delivery at scale. After lunch you can choose between four workshops: planning a large"
    " send, measuring what arrives, handling replies and bounces, and writing messages that"
    " people want to read. Each workshop has forty seats and seats are given in order of arrival.",
    "Lunch, coffee and an evening reception are included in your registration. If you have a"
    " dietary requirement that you did not mention when you registered, reply to this message"
    " with the details and your ticket number. We can provide vegetarian, vegan, gluten-free,"
    " halal and kosher meals, and we will label each dish with the allergens it contains.",
    "Accessibility: every room of the venue is reachable without stairs, and the main hall has"
    " an induction loop. Quiet rooms are available on the ground floor all day. If you use a"
    " wheelchair or need a seat near the front, let us know and a member of our team will meet"
    " you at the entrance of the venue in {{ city }} and show you to your place.",
    "Travel: participants from {{ country }} can book discounted rail tickets with the code"
    " printed on the second page of the programme. Several hotels near the venue hold rooms at"
    " a conference rate until three weeks before the event. Mention the conference and your"
    " ticket number when you book, because the rate applies only to registered participants.",
    "Changes and cancellation: you can transfer your ticket to a colleague at {{ company }} at"
    " no cost until the day before the event. Cancellations up to thirty days before the event"
    " are refunded in full, and later cancellations are refunded at half of {{ amount }} EUR,"
    " unless we can give your seat to someone on the waiting list, in which case we refund all.",
    "We look forward to welcoming you in {{ city }}, {{ first_name }}. If you have any question"
    " that this message does not answer, reply to it and a member of the events team will get"
    " back to you within one working day.",
    "What to bring: this message on your phone or on paper, an identity document with the same"
    " name as the booking, and a laptop if you take part in a workshop. Power sockets are at"
    " every table of the workshop rooms. The cloakroom is free, and large luggage can stay in a"
    " locked room near the entrance until the end of the evening reception.",
    "Kind regards,\nThe Events Team",
)


@dataclass
class RunFigures:
    """The figures of one run: mailblast's send and the two references of the same run."""

    run: int
    recipients: int
    sent: int
    load_seconds: float | None
    send_seconds: float
    send_rate: float
    wall_seconds: float
    end_to_end_rate: float
    max_rss_mb: float
    cpu_us_per_message: float
    cpu_user_seconds: float
    cpu_system_seconds: float
    smtp_source_seconds: float
    smtp_source_rate: float
    smtplib_messages: int
    smtplib_seconds: float
    smtplib_rate: float
    # CPU seconds that neither mailblast nor the sinks used during the send. A large value means
    # that other processes competed for the cores, so the run understates the pipeline.
    other_cpu_seconds: float
    # CPU per message of the main threads (event loops, and the load) and of the other threads
    # (the store threads), sampled from /proc while the send runs.
    main_thread_us_per_message: float = 0.0
    store_thread_us_per_message: float = 0.0
    # CPU per message of all smtp-sink processes together, while mailblast sent and while
    # smtp-source sent: the part of the two cores that the relays take at each rate.
    sink_us_per_message: float = 0.0
    sink_us_per_message_smtp_source: float = 0.0

    @property
    def ratio_to_smtp_source(self) -> float:
        return self.send_rate / self.smtp_source_rate

    @property
    def ratio_to_smtplib(self) -> float:
        return self.send_rate / self.smtplib_rate


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure mailblast's send throughput against smtp-source and smtplib."
    )
    parser.add_argument("--recipients", type=int, default=100_000, help="list size (rows)")
    parser.add_argument("--relays", type=int, default=3, help="smtp-sink processes (relays)")
    parser.add_argument(
        "--connections-per-relay", type=int, default=8, help="max_connections of each relay"
    )
    parser.add_argument(
        "--messages-per-connection",
        type=int,
        default=1000,
        help="max_messages_per_connection of each relay; smtp-source reuses each connection"
        " for all its messages",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="sender processes (mailblast send --processes)"
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs")
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="where the list, templates, stores and throughput.json go (default: a new"
        " temporary directory, kept)",
    )
    arguments = parser.parse_args(argv)

    counts = ("recipients", "relays", "connections_per_relay", "messages_per_connection")
    for name in (*counts, "processes"):
        if getattr(arguments, name) < 1:
            option = "--" + name.replace("_", "-")
            parser.error(f"{option} {getattr(arguments, name)} must be at least 1")
    if arguments.runs < 1:
        parser.error(f"--runs {arguments.runs} must be at least 1")
    return arguments


# Postfix test tools


def ensure_postfix_tools() -> None:
    """Install Debian's postfix package, unconfigured, unless smtp-sink and smtp-source exist."""
    if SMTP_SINK.exists() and SMTP_SOURCE.exists():
        return
    # NOTE: this path has only been run by hand, as the same commands in a shell.
    print("smtp-sink or smtp-source is missing, so the postfix package will be installed")
    preseed = "postfix postfix/main_mailer_type select No configuration\n"
    subprocess.run(["debconf-set-selections"], input=preseed, text=True, check=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "postfix"]
    if subprocess.run(install, env=environment).returncode != 0:
        subprocess.run(["apt-get", "update"], env=environment)
        subprocess.run(install, env=environment)
    if not (SMTP_SINK.exists() and SMTP_SOURCE.exists()):
        raise SystemExit(
            f"error: {SMTP_SINK} and {SMTP_SOURCE} are still missing after installing postfix."
            " Install it by hand (as root: echo 'postfix postfix/main_mailer_type select No"
            " configuration' | debconf-set-selections; DEBIAN_FRONTEND=noninteractive apt-get"
            " install -y postfix) and run the benchmark again."
        )


class Sink:
    """One ``smtp-sink`` process on a free port of 127.0.0.1, which accepts and discards mail."""

    def __init__(self, max_sessions: int) -> None:
        for _ in range(5):
            self.port = _free_port()
            command = [str(SMTP_SINK), "-u", "nobody", "-m", str(max_sessions)]
            command += [f"127.0.0.1:{self.port}", str(SINK_BACKLOG)]
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            if _wait_for_greeting(self.port, self.process):
                return
            self.stop()
        raise SystemExit(f"error: smtp-sink did not start; the last command was {command}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)


def _free_port() -> int:
    # Another process may take the port before smtp-sink binds it, so Sink retries.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_greeting(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + SINK_START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                return connection.recv(100).startswith(b"220")
        except OSError:
            time.sleep(0.05)
    return False


# Campaign files


def generate_rows(count: int, seed: int = 2026) -> Iterator[list[str]]:
    """Yield ``count`` valid, distinct list rows with names in several scripts."""
    rng = random.Random(seed)
    for index in range(count):
        first, first_ascii = rng.choice(FIRST_NAMES)
        last, last_ascii = rng.choice(LAST_NAMES)
        city, country, language = rng.choice(PLACES)
        yield [
            f"{first_ascii}.{last_ascii}.{index}@{DOMAINS[index % len(DOMAINS)]}",
            first,
            last,
            rng.choice(COMPANIES),
            city,
            country,
            f"SC-{1_000_000 + index}",
            f"2027-{rng.randint(3, 6):02d}-{rng.randint(1, 28):02d}",
            f"{rng.randint(150, 2400)}.{rng.choice(('00', '50'))}",
            language,
        ]


def write_list(path: Path, count: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(generate_rows(count))


def write_templates(directory: Path) -> None:
    text = "\n\n".join(PARAGRAPHS) + "\n"
    (directory / "message.txt").write_text(text, encoding="utf-8")

    style = "margin:0 0 14px 0"
    body = "\n".join(
        f'<p style="{style}">{paragraph.replace(chr(10), "<br>")}</p>' for paragraph in PARAGRAPHS
    )
    html = (
        '<!doctype html>\n<html lang="{{ language }}"><head><meta charset="utf-8">'
        "<title>Spring Conference</title></head>\n"
        '<body style="margin:0;padding:24px;background:#f4f4f4;font-family:Arial,sans-serif">\n'
        '<div style="max-width:640px;margin:0 auto;background:#fff;padding:24px">\n'
        f"{body}\n</div>\n</body></html>\n"
    )
    (directory / "message.html").write_text(html, encoding="utf-8")


def write_campaign(
    directory: Path, workdir: Path, ports: list[int], arguments: argparse.Namespace
) -> Path:
    relays = "".join(
        f"""
[[relay]]
name = "sink{number}"
host = "127.0.0.1"
port = {port}
tls = "none"
max_connections = {arguments.connections_per_relay}
max_messages_per_connection = {arguments.messages_per_connection}
"""
        for number, port in enumerate(ports, start=1)
    )
    campaign = directory / "campaign.toml"
    campaign.write_text(
        f"""[campaign]
name = "{CAMPAIGN_NAME}"
from = "Events Team <events@example.com>"
envelope_sender = "{ENVELOPE_SENDER}"
reply_to = "rsvp@example.com"
subject = "{SUBJECT}"
to_name = "{{{{ first_name }}}} {{{{ last_name }}}}"
text = "{workdir / "message.txt"}"
html = "{workdir / "message.html"}"
store = "{directory / "store.db"}"

[recipients]
path = "{workdir / "recipients.csv"}"
reject_file = "{directory / "rejects.csv"}"
{relays}""",
        encoding="utf-8",
    )
    return campaign


def write_reference_message(campaign_file: Path, workdir: Path) -> bytes:
    """Write the rendered message of typical size (median of the first rows) and return it.

    ``message.eml`` keeps CRLF line ends for smtplib. ``message-lf.eml`` has LF line ends for
    ``smtp-source -F``, which appends CRLF to each line it reads.
    """
    campaign = load_campaign(campaign_file)
    # smtp-sink offers 8BITMIME, so the relays get non-ASCII parts in 8bit.
    rendered = sorted(
        (preview(campaign, row, eight_bit=True) for row in range(1, PREVIEW_ROWS + 1)), key=len
    )
    message = rendered[len(rendered) // 2]
    (workdir / "message.eml").write_bytes(message)
    (workdir / "message-lf.eml").write_bytes(message.replace(b"\r\n", b"\n"))
    return message


# Measurements


def busy_cpu_seconds() -> float:
    """Return the CPU time all processes of the machine have used since boot (/proc/stat)."""
    with open("/proc/stat", encoding="utf-8") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def sinks_cpu_seconds(sinks: Sequence[Sink]) -> float:
    return sum(process_cpu_seconds(sink.process.pid) for sink in sinks)


def run_mailblast(
    campaign_file: Path, directory: Path, processes: int
) -> dict[str, float | int | None]:
    """Run ``mailblast send`` as a child process and return its wall time, rusage and load time.

    With several sender processes, ``wait4`` adds their CPU time to the parent's and reports
    the largest resident set size among them.
    """
    command = [str(Path(sys.executable).parent / "mailblast"), "send", str(campaign_file)]
    command += ["--processes", str(processes)]
    with open(directory / "send.out", "wb") as output, open(directory / "send.err", "wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=output, stderr=err)
        sampler = ThreadSampler(process.pid)
        sampler.start()
        _, wait_status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    if process.returncode != 0:
        raise SystemExit(
            f"error: {' '.join(command)} exited with status {process.returncode};"
            f" see {directory / 'send.err'}"
        )
    return {
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "cpu_user_seconds": usage.ru_utime,
        "cpu_system_seconds": usage.ru_stime,
        "max_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "load_seconds": _load_seconds(directory / "send.out"),
        "main_thread_seconds": sum(sampler.main.values()),
        "other_thread_seconds": sum(sampler.other.values()),
    }


class ThreadSampler(threading.Thread):
    """Sample the CPU time of each thread of a process and of its child processes."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.main: dict[int, float] = {}  # thread id of a process's main thread -> CPU seconds
        self.other: dict[int, float] = {}

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for pid in _process_tree(self.pid):
                for tid, seconds in _thread_cpu(pid).items():
                    (self.main if tid == pid else self.other)[tid] = seconds


def _process_tree(pid: int) -> list[int]:
    found = [pid]
    for parent in found:
        try:
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text(encoding="ascii")
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def _thread_cpu(pid: int) -> dict[int, float]:
    seconds = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def _load_seconds(output: Path) -> float | None:
    # The send command prints "loaded N rows in 1.4s: ..." after the first load.
    for line in output.read_text(encoding="utf-8").splitlines():
        if line.startswith("loaded "):
            return float(line.split(" in ", 1)[1].split("s:", 1)[0])
    return None


def sent_span(store: Path) -> tuple[int, float]:
    """Return the sent count and the seconds from the first to the last sent record."""
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        count, first, last = connection.execute(
            "SELECT count(*), min(time), max(time) FROM delivery_log WHERE type = 'sent'"
        ).fetchone()
    finally:
        connection.close()
    return int(count), float(last - first) if count else 0.0


def run_smtp_source(ports: list[int], message_file: Path, total: int, sessions: int) -> float:
    """Push ``total`` messages into the sinks with one smtp-source each; return the wall time."""
    shares = [total // len(ports) + (1 if i < total % len(ports) else 0) for i in range(len(ports))]
    started = time.monotonic()
    processes = [
        subprocess.Popen(_smtp_source_command(port, share, sessions, message_file))
        for port, share in zip(ports, shares, strict=True)
    ]
    codes = [process.wait() for process in processes]
    wall = time.monotonic() - started
    if any(codes):
        raise SystemExit(f"error: smtp-source exited with statuses {codes}")
    return wall


def _smtp_source_command(port: int, count: int, sessions: int, message_file: Path) -> list[str]:
    # -d reuses each session for every message, as mailblast reuses its connections.
    return [
        str(SMTP_SOURCE),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(count),
        "-F",
        str(message_file),
        "-f",
        ENVELOPE_SENDER,
        "-t",
        REFERENCE_RECIPIENT,
        f"127.0.0.1:{port}",
    ]


def run_smtplib(port: int, message: bytes, max_messages: int) -> tuple[int, float]:
    """Send the message over one reused connection for at most SMTPLIB_SECONDS."""
    sent = 0
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("bench.example.com")
        started = time.monotonic()
        while sent < max_messages and time.monotonic() - started < SMTPLIB_SECONDS:
            client.sendmail(ENVELOPE_SENDER, [REFERENCE_RECIPIENT], message)
            sent += 1
        seconds = time.monotonic() - started
    return sent, seconds


def measure_run(
    number: int, workdir: Path, sinks: list[Sink], arguments: argparse.Namespace
) -> RunFigures:
    directory = workdir / f"run-{number}"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    ports = [sink.port for sink in sinks]
    campaign_file = write_campaign(directory, workdir, ports, arguments)

    machine_before = busy_cpu_seconds()
    sinks_before = sinks_cpu_seconds(sinks)
    send = run_mailblast(campaign_file, directory, arguments.processes)
    machine_cpu = busy_cpu_seconds() - machine_before
    sinks_cpu = sinks_cpu_seconds(sinks) - sinks_before
    sent, send_seconds = sent_span(directory / "store.db")
    if sent != arguments.recipients:
        raise SystemExit(
            f"error: run {number} sent {sent} of {arguments.recipients} messages;"
            f" see {directory / 'send.out'}"
        )

    sessions = arguments.connections_per_relay
    sinks_before_source = sinks_cpu_seconds(sinks)
    source_seconds = run_smtp_source(ports, workdir / "message-lf.eml", sent, sessions)
    sinks_cpu_source = sinks_cpu_seconds(sinks) - sinks_before_source
    message = (workdir / "message.eml").read_bytes()
    smtplib_sent, smtplib_seconds = run_smtplib(ports[0], message, arguments.recipients)

    wall = float(send["wall_seconds"] or 0)
    return RunFigures(
        run=number,
        recipients=arguments.recipients,
        sent=sent,
        load_seconds=send["load_seconds"],
        send_seconds=send_seconds,
        send_rate=sent / send_seconds,
        wall_seconds=wall,
        end_to_end_rate=sent / wall,
        max_rss_mb=float(send["max_rss_mb"] or 0),
        cpu_us_per_message=float(send["cpu_seconds"] or 0) / sent * 1e6,
        cpu_user_seconds=float(send["cpu_user_seconds"] or 0),
        cpu_system_seconds=float(send["cpu_system_seconds"] or 0),
        smtp_source_seconds=source_seconds,
        smtp_source_rate=sent / source_seconds,
        smtplib_messages=smtplib_sent,
        smtplib_seconds=smtplib_seconds,
        smtplib_rate=smtplib_sent / smtplib_seconds,
        other_cpu_seconds=machine_cpu - sinks_cpu - float(send["cpu_seconds"] or 0),
        main_thread_us_per_message=float(send["main_thread_seconds"] or 0) / sent * 1e6,
        store_thread_us_per_message=float(send["other_thread_seconds"] or 0) / sent * 1e6,
        sink_us_per_message=sinks_cpu / sent * 1e6,
        sink_us_per_message_smtp_source=sinks_cpu_source / sent * 1e6,
    )


# Report


def machine() -> dict[str, str | int]:
    cpu = "unknown"
    memory = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemTotal"):
                memory = line.split(":", 1)[1].strip()
                break
    postfix = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postfix"], capture_output=True, text=True
    ).stdout
    return {
        "nproc": os.cpu_count() or 0,
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "postfix": postfix or "unknown",
        # The send runs in a child process of the same interpreter and environment.
        "event_loop": "uvloop" if loop_factory() is not None else "asyncio",
    }


# (label, RunFigures attribute, format)
TABLE_ROWS = (
    ("load time (s)", "load_seconds", "{:.1f}"),
    ("send throughput (msg/s)", "send_rate", "{:,.0f}"),
    ("end-to-end time (s)", "wall_seconds", "{:.1f}"),
    ("end-to-end throughput (msg/s)", "end_to_end_rate", "{:,.0f}"),
    ("peak RSS (MB)", "max_rss_mb", "{:.0f}"),
    ("CPU user+sys per message (µs)", "cpu_us_per_message", "{:,.0f}"),
    ("CPU system time of the send (s)", "cpu_system_seconds", "{:.1f}"),
    ("  main threads, per message (µs)", "main_thread_us_per_message", "{:,.0f}"),
    ("  store threads, per message (µs)", "store_thread_us_per_message", "{:,.0f}"),
    ("sinks' CPU per message (µs)", "sink_us_per_message", "{:,.0f}"),
    ("smtp-source (msg/s)", "smtp_source_rate", "{:,.0f}"),
    ("  sinks' CPU per message (µs)", "sink_us_per_message_smtp_source", "{:,.0f}"),
    ("smtplib, 1 connection (msg/s)", "smtplib_rate", "{:,.0f}"),
    ("send / smtp-source", "ratio_to_smtp_source", "{:.3f}"),
    ("send / smtplib", "ratio_to_smtplib", "{:.2f}"),
    ("CPU of other processes (s)", "other_cpu_seconds", "{:.1f}"),
)


def print_table(runs: list[RunFigures]) -> None:
    print(f"\n{'':<32} {'median':>10}   {'min – max':<22}")
    for label, attribute, form in TABLE_ROWS:
        values = [getattr(run, attribute) for run in runs]
        if any(value is None for value in values):
            print(f"{label:<32} {'n/a':>10}")
            continue
        median = form.format(statistics.median(values))
        spread = f"{form.format(min(values))} – {form.format(max(values))}"
        print(f"{label:<32} {median:>10}   {spread:<22}")


def write_json(
    path: Path, arguments: argparse.Namespace, size: int, runs: list[RunFigures]
) -> None:
    records = []
    for run in runs:
        record = dict(run.__dict__)
        record["ratio_to_smtp_source"] = run.ratio_to_smtp_source
        record["ratio_to_smtplib"] = run.ratio_to_smtplib
        records.append(record)
    document = {
        "arguments": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(arguments).items()
        },
        "message_bytes": size,
        "machine": machine(),
        "runs": records,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    ensure_postfix_tools()
    workdir = (
        arguments.workdir or Path(tempfile.mkdtemp(prefix="mailblast-throughput-"))
    ).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    print(f"event loop of the send: {machine()['event_loop']}")
    started = time.monotonic()
    write_list(workdir / "recipients.csv", arguments.recipients)
    write_templates(workdir)
    print(f"wrote {arguments.recipients:,} rows in {time.monotonic() - started:.1f}s to {workdir}")

    max_sessions = max(256, 2 * arguments.connections_per_relay)
    sinks = [Sink(max_sessions) for _ in range(arguments.relays)]
    runs: list[RunFigures] = []
    try:
        probe = write_campaign(workdir, workdir, [sink.port for sink in sinks], arguments)
        message = write_reference_message(probe, workdir)
        print(f"typical rendered message: {len(message):,} bytes")
        for number in range(1, arguments.runs + 1):
            figures = measure_run(number, workdir, sinks, arguments)
            runs.append(figures)
            print(
                f"run {number}: send {figures.send_rate:,.0f} msg/s, smtp-source"
                f" {figures.smtp_source_rate:,.0f} msg/s, smtplib {figures.smtplib_rate:,.0f}"
                f" msg/s, peak RSS {figures.max_rss_mb:.0f} MB",
                flush=True,
            )
    finally:
        for sink in sinks:
            sink.stop()

    print_table(runs)
    write_json(workdir / "throughput.json", arguments, len(message), runs)
    print(f"\nraw figures: {workdir / 'throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
