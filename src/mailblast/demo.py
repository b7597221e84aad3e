"""``mailblast demo``: a real blast through three local sinks, on a generated list.

Everything runs on loopback: three sinks on ephemeral ports, a campaign file, templates and a
20,000-row list of generated personal data (names in Latin with accents, Cyrillic, Greek,
Arabic, Devanagari, Chinese and Japanese scripts). A few rows are invalid or duplicated, and a
few addresses ask the sinks for a bounce or a greylisting deferral, so the summary shows each
outcome.
"""

from __future__ import annotations

import csv
import random
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from mailblast.signingkey import generate_key, private_key_pem, write_secret_file

UNSUBSCRIBE_SECRET_FILE = "unsubscribe.secret"
DKIM_KEY_FILE = "dkim-demo.pem"

# (display name, romanised name for the address)
FIRST_NAMES = (
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("François", "francois"),
    ("Søren", "soren"),
    ("Małgorzata", "malgorzata"),
    ("Çağla", "cagla"),
    ("Ana", "ana"),
    ("Liam", "liam"),
    ("Ngozi", "ngozi"),
    ("Дмитрий", "dmitry"),
    ("Ольга", "olga"),
    ("Γιώργος", "giorgos"),
    ("Ελένη", "eleni"),
    ("محمد", "mohammed"),
    ("فاطمة", "fatima"),
    ("अनन्या", "ananya"),
    ("राहुल", "rahul"),
    ("伟", "wei"),
    ("秀英", "xiuying"),
    ("さくら", "sakura"),
    ("翔太", "shota"),
    ("Đức", "duc"),
    ("Björk", "bjork"),
    ("Iñaki", "inaki"),
)
LAST_NAMES = (
    ("García", "garcia"),
    ("Müller", "muller"),
    ("O'Brien", "obrien"),
    ("Nguyễn", "nguyen"),
    ("Kowalczyk", "kowalczyk"),
    ("Øvergård", "overgard"),
    ("Иванова", "ivanova"),
    ("Παπαδόπουλος", "papadopoulos"),
    ("الخطيب", "alkhatib"),
    ("शर्मा", "sharma"),
    ("王", "wang"),
    ("佐藤", "sato"),
    ("Smith", "smith"),
    ("Dubois", "dubois"),
    ("Yılmaz", "yilmaz"),
    ("Okafor", "okafor"),
)
COMPANIES = (
    "Acme Ltd",
    "Société Générale d'Exemple",
    "Müller & Söhne GmbH",
    "Example, Inc.",
    "株式会社サンプル",
    "ООО Пример",
    "Beispiel AG",
    "Exemplo Ltda.",
)
CITIES = (
    "São Paulo",
    "Zürich",
    "Kraków",
    "Москва",
    "Αθήνα",
    "القاهرة",
    "मुंबई",
    "北京",
    "東京",
    "Reykjavík",
    "Montréal",
    "Lagos",
)
DOMAINS = ("example.com", "example.net", "example.org")
COLUMNS = ("email", "first_name", "last_name", "company", "city", "ticket")

SUBJECT = "{{ first_name }}, your invitation to the Spring Gala in {{ city }}"
TEXT_TEMPLATE = """Dear {{ first_name }} {{ last_name }},

On behalf of {{ company }}, we are delighted to invite you to the Spring Gala.
Your ticket number is {{ ticket }}; please bring it with you.

We look forward to seeing you in {{ city }}.

The Events Team
"""
HTML_TEMPLATE = """<!doctype html>
<html><body>
<p>Dear {{ first_name }} {{ last_name }},</p>
<p>On behalf of <strong>{{ company }}</strong>, we are delighted to invite you to the
Spring Gala. Your ticket number is <code>{{ ticket }}</code>.</p>
<p>We look forward to seeing you in {{ city }}.</p>
<p>The Events Team</p>
</body></html>
"""


def generate_rows(count: int, seed: int = 2026) -> Iterator[list[str]]:
    """Yield ``count`` list rows, with a few bad, duplicate and failure-rule rows among them."""
    rng = random.Random(seed)
    previous = ""
    for index in range(count):
        first, first_ascii = rng.choice(FIRST_NAMES)
        last, last_ascii = rng.choice(LAST_NAMES)
        address = f"{first_ascii}.{last_ascii}.{index}@{DOMAINS[index % 3]}"
        if index % 2000 == 17:
            address = f"{first_ascii}.{last_ascii}@@invalid"
        elif index % 2000 == 18:
            address = f"bounce-{index}@example.net"
        elif index % 2000 == 19:
            address = f"tempfail2-{index}@example.org"
        elif index % 2000 == 20:
            address = previous.upper()  # the same person again, in capitals
        previous = address
        city = rng.choice(CITIES)
        yield [address, first, last, rng.choice(COMPANIES), city, f"SG-{100000 + index}"]


def write_demo(directory: Path, ports: list[int], count: int) -> Path:
    """Write the list, the templates and the campaign file; return the campaign file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "attendees.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(generate_rows(count))
    (directory / "invite.txt").write_text(TEXT_TEMPLATE, encoding="utf-8")
    (directory / "invite.html").write_text(HTML_TEMPLATE, encoding="utf-8")
    relays = "".join(
        f"""
[[relay]]
name = "sink{number}"
host = "127.0.0.1"
port = {port}
tls = "none"
weight = {2 if number == 3 else 1}
max_connections = 8
max_messages_per_connection = 500
"""
        for number, port in enumerate(ports, start=1)
    )
    campaign = directory / "campaign.toml"
    campaign.write_text(
        f"""[campaign]
name = "spring-gala-demo"
from = "Events Team <events@example.com>"
envelope_sender = "bounces@example.com"
reply_to = "rsvp@example.com"
subject = "{SUBJECT}"
text = "invite.txt"
html = "invite.html"
store = "demo.db"

[recipients]
path = "attendees.csv"

[sending]
retry_initial = "1s"
retry_max = "2s"

[unsubscribe]
url = "http://127.0.0.1:8025/unsubscribe"
secret_file = "{UNSUBSCRIBE_SECRET_FILE}"

[dkim]
domain = "example.com"
selector = "demo"
private_key_file = "{DKIM_KEY_FILE}"
{relays}""",
        encoding="utf-8",
    )
    write_demo_secrets(directory)
    for stale in ("demo.db", "demo.db-wal", "demo.db-shm"):
        (directory / stale).unlink(missing_ok=True)
    return campaign


def write_demo_secrets(directory: Path) -> None:
    """Write a one-off unsubscribe secret and an Ed25519 DKIM key, so the demo needs no set-up.

    Ed25519 keeps signing cheap (about 0.1 ms per message) at the demo's rate.
    """
    secret = secrets.token_hex(32).encode("ascii")
    write_secret_file(directory / UNSUBSCRIBE_SECRET_FILE, secret, force=True)
    key = private_key_pem(generate_key("ed25519"))
    write_secret_file(directory / DKIM_KEY_FILE, key, force=True)


class SinkProcess:
    """A ``mailblast sink`` child process on an ephemeral loopback port.

    The demo runs its sinks as processes rather than threads so that they do not share the
    sending process's interpreter lock: on two cores that doubles the demo's rate.
    """

    def __init__(self) -> None:
        command = [sys.executable, "-m", "mailblast.cli.main", "sink", "--port", "0"]
        command += ["--interval", "3600"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        first_line = self.process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", first_line)
        if match is None:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the demo sink did not start: {first_line!r}")
        self.port = int(match.group(1))

    def stop(self) -> str:
        """Stop the sink and return its totals line."""
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=30)
        totals = [line for line in output.splitlines() if line.startswith("totals:")]
        return totals[-1].removeprefix("totals: ") if totals else "no totals printed"


def start_sinks(count: int = 3) -> list[SinkProcess]:
    return [SinkProcess() for _ in range(count)]
