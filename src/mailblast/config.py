"""Campaign settings: read a campaign TOML file, validate every key, report all problems at once.

A :class:`Campaign` is plain data. It converts to a JSON-ready dict (:meth:`Campaign.to_dict`)
and back, which is how the store keeps a campaign so that commands given only its name work.
Secret values are never part of it: relays carry the name of an environment variable or a file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from email.headerregistry import Address
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import idna

from mailblast.errors import ConfigError
from mailblast.units import parse_duration, parse_rate

TLS_MODES = ("none", "starttls", "implicit")


@dataclass(frozen=True)
class RelaySettings:
    """One SMTP relay (smarthost) and the limits mailblast keeps towards it."""

    name: str
    host: str
    port: int = 25
    tls: str = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    allow_plaintext_auth: bool = False
    ehlo_name: str | None = None
    weight: int = 1
    max_connections: int = 10
    rate: float | None = None  # messages per second
    daily_quota: int | None = None  # messages per UTC day, for all workers together
    max_messages_per_connection: int = 100
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0

    def password(self) -> str | None:
        """Read the relay password from its environment variable or file at send time."""
        return read_secret(
            self.password_env, self.password_file, f"relay {self.name!r}", "password"
        )


def read_secret(env: str | None, file: str | None, owner: str, name: str) -> str | None:
    """Read a secret from the named environment variable or file; None when neither is set.

    ``owner`` and ``name`` only label the error, for example ``relay 'a'`` and ``password``.
    Raises ConfigError naming the variable or file, never the value.
    """
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(
                [f"{owner}: environment variable {env} is not set; export it or use {name}_file"]
            )
        return value
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            raise ConfigError(
                [f"{owner}: cannot read {name}_file {file}: {error.strerror}"]
            ) from error
    return None


@dataclass(frozen=True)
class RecipientSettings:
    """Recipient list location and reading options."""

    path: str
    email_column: str = "email"
    delimiter: str | None = None  # None: detect among , ; tab |
    encoding: str | None = None  # None: UTF-8 with or without BOM
    reject_file: str | None = None  # None: <list>.rejects.csv beside the list
    max_field_length: int = 65536


@dataclass(frozen=True)
class SendingSettings:
    """Pacing, retry, lease and error-budget settings of the engine."""

    batch_size: int = 500
    lease: float = 300.0
    retry_initial: float = 60.0
    retry_max: float = 3600.0
    retry_factor: float = 2.0
    max_age: float = 5 * 86400.0
    max_attempts: int = 30
    error_budget: float = 0.2  # pause when bounces and failures exceed this share of
    error_window: int = 200  # ... the last error_window attempts


DEFAULT_UNSUBSCRIBE_SECRET_ENV = "MAILBLAST_UNSUBSCRIBE_SECRET"


@dataclass(frozen=True)
class UnsubscribeSettings:
    """One-click unsubscribe (RFC 8058): the URL base, an optional mailto and the token secret."""

    url: str  # https URL; "token=<token>" is appended as a query parameter
    mailto: str | None = None  # addr-spec for the mailto: entry of List-Unsubscribe
    secret_env: str | None = DEFAULT_UNSUBSCRIBE_SECRET_ENV
    secret_file: str | None = None

    def secret(self) -> bytes:
        """Read the HMAC secret of the tokens at send time; raise ConfigError when unset."""
        value = read_secret(self.secret_env, self.secret_file, "unsubscribe", "secret")
        if value is None:  # parse_campaign ensures one of the two is set
            raise ConfigError(["unsubscribe: set secret_env or secret_file"])
        return check_unsubscribe_secret(value, "unsubscribe")


MIN_SECRET_LENGTH = 16


def check_unsubscribe_secret(value: str, owner: str) -> bytes:
    """Return the secret as bytes; raise ConfigError when it is too short to resist guessing."""
    secret = value.encode("utf-8")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            [
                f"{owner}: the unsubscribe secret has {len(secret)} bytes; use at least"
                f" {MIN_SECRET_LENGTH} random bytes, for example from `openssl rand -hex 32`"
            ]
        )
    return secret


@dataclass(frozen=True)
class DkimSettings:
    """One DKIM signing identity. Only the key file's path is kept, never the key."""

    domain: str  # d= tag, A-label form
    selector: str  # s= tag
    private_key_file: str  # PEM (PKCS #8); RSA or Ed25519, by the key's type


MAX_DKIM_KEYS = 2  # one RSA and one Ed25519


@dataclass(frozen=True)
class Templates:
    """Template sources as loaded; the store keeps these so a campaign can be resumed by name."""

    subject: str
    text: str | None = None
    html: str | None = None
    to_name: str | None = None
    text_path: str | None = None
    html_path: str | None = None


@dataclass(frozen=True)
class Campaign:
    """A validated campaign: header addresses, templates, list, relays and sending policy."""

    name: str
    from_header: str
    from_address: str
    envelope_sender: str
    reply_to: str | None
    templates: Templates
    recipients: RecipientSettings
    relays: tuple[RelaySettings, ...]
    sending: SendingSettings = field(default_factory=SendingSettings)
    unsubscribe: UnsubscribeSettings | None = None
    dkim: tuple[DkimSettings, ...] = ()
    store: str = "mailblast.db"
    base_dir: str = "."
    store_password_env: str | None = None  # variable holding the PostgreSQL password

    def to_dict(self) -> dict[str, Any]:
        """Return the campaign as JSON-ready data (no secret values, only their references)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Campaign:
        """Rebuild a campaign saved with :meth:`to_dict`."""
        values = dict(data)
        values["templates"] = Templates(**values["templates"])
        values["recipients"] = RecipientSettings(**values["recipients"])
        values["sending"] = SendingSettings(**values["sending"])
        values["relays"] = tuple(RelaySettings(**relay) for relay in values["relays"])
        if values.get("unsubscribe") is not None:
            values["unsubscribe"] = UnsubscribeSettings(**values["unsubscribe"])
        values["dkim"] = tuple(DkimSettings(**table) for table in values.get("dkim", ()))
        return cls(**values)

    @property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()


_CAMPAIGN_KEYS = {
    "name",
    "from",
    "envelope_sender",
    "reply_to",
    "subject",
    "text",
    "html",
    "to_name",
    "store",
    "store_password_env",
}
_RECIPIENT_KEYS = {
    "path",
    "email_column",
    "delimiter",
    "encoding",
    "reject_file",
    "max_field_length",
}
_SENDING_KEYS = {
    "batch_size",
    "lease",
    "retry_initial",
    "retry_max",
    "retry_factor",
    "max_age",
    "max_attempts",
    "error_budget",
    "error_window",
}
_RELAY_KEYS = {f for f in RelaySettings.__dataclass_fields__}
_UNSUBSCRIBE_KEYS = {"url", "mailto", "secret_env", "secret_file"}
_DKIM_KEYS = {"domain", "selector", "private_key_file"}
_TOP_KEYS = {"campaign", "recipients", "relay", "sending", "unsubscribe", "dkim"}


class _Problems:
    """Collects validation problems with their key paths so they can be reported together."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.source}: {key}: {message}")

    def unknown(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                self.add(
                    f"{prefix}{key}",
                    f"unknown key; allowed keys are {', '.join(sorted(allowed))}",
                )


def _get(
    table: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    problems: _Problems,
    path: str,
    default: Any = None,
    required: bool = False,
) -> Any:
    if key not in table:
        if required:
            problems.add(path, "missing; this key is required")
        return default
    value = table[key]
    if (
        isinstance(value, bool)
        and kind is not bool
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        problems.add(path, f"expected {_kind_name(kind)}, got boolean {value!r}")
        return default
    if not isinstance(value, kind):
        problems.add(path, f"expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
        return default
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _parse_mailbox(value: str, path: str, problems: _Problems) -> tuple[str, str] | None:
    """Split a header mailbox into (header text, addr-spec); None after recording a problem."""
    if "\r" in value or "\n" in value:
        problems.add(path, f"{value!r} contains a line break")
        return None
    pairs = getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1] or "@" not in pairs[0][1]:
        problems.add(path, f"{value!r} is not a single address such as 'Team <team@example.com>'")
        return None
    name, addr = pairs[0]
    local, _, domain = addr.rpartition("@")
    if not local or not domain or " " in addr:
        problems.add(path, f"{value!r} is not a valid address")
        return None
    header = str(Address(display_name=name, addr_spec=addr)) if name else addr
    return header, addr


def _duration(
    table: dict[str, Any], key: str, default: float, problems: _Problems, path: str
) -> float:
    if key not in table:
        return default
    try:
        return parse_duration(table[key])
    except ValueError as error:
        problems.add(path, str(error))
        return default


def load_campaign(path: str | os.PathLike[str]) -> Campaign:
    """Read and validate a campaign file; raise ConfigError listing every problem found."""
    file_path = Path(path)
    try:
        raw = file_path.read_bytes()
    except OSError as error:
        raise ConfigError([f"{file_path}: cannot read campaign file: {error.strerror}"]) from error
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"{file_path}: not UTF-8 at byte {error.start}; save it as UTF-8"]
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{file_path}: invalid TOML: {error}"]) from error
    campaign = parse_campaign(data, base_dir=file_path.resolve().parent, source=str(file_path))
    return campaign


def _resolve(base_dir: Path, value: str) -> str:
    candidate = Path(value)
    return str(candidate if candidate.is_absolute() else (base_dir / candidate))


def parse_campaign(data: dict[str, Any], base_dir: Path, source: str) -> Campaign:
    """Validate parsed TOML data; paths in it are relative to base_dir."""
    problems = _Problems(source)
    problems.unknown(data, _TOP_KEYS, "")

    campaign_table = _get(data, "campaign", dict, problems, "campaign", default={}, required=True)
    problems.unknown(campaign_table, _CAMPAIGN_KEYS, "campaign.")
    name = _get(campaign_table, "name", str, problems, "campaign.name", required=True) or ""
    if name and (len(name) > 200 or any(ord(ch) < 32 for ch in name)):
        problems.add("campaign.name", f"{name!r} must be at most 200 printable characters")

    from_value = _get(campaign_table, "from", str, problems, "campaign.from", required=True)
    from_header, from_address = "", ""
    if from_value is not None:
        parsed = _parse_mailbox(from_value, "campaign.from", problems)
        if parsed:
            from_header, from_address = parsed

    envelope_sender = from_address
    envelope_value = _get(
        campaign_table, "envelope_sender", str, problems, "campaign.envelope_sender"
    )
    if envelope_value is not None:
        parsed = _parse_mailbox(envelope_value, "campaign.envelope_sender", problems)
        if parsed:
            envelope_sender = parsed[1]

    reply_to = None
    reply_value = _get(campaign_table, "reply_to", str, problems, "campaign.reply_to")
    if reply_value is not None:
        parsed = _parse_mailbox(reply_value, "campaign.reply_to", problems)
        if parsed:
            reply_to = parsed[0]

    templates = _read_templates(campaign_table, base_dir, problems)
    store = _get(campaign_table, "store", str, problems, "campaign.store", default="mailblast.db")
    if store and "://" not in store:
        store = _resolve(base_dir, store)
    store_password_env = _get(
        campaign_table, "store_password_env", str, problems, "campaign.store_password_env"
    )
    if store_password_env and "://" not in store:
        problems.add(
            "campaign.store_password_env",
            "applies only to a postgresql:// store; a SQLite store has no password",
        )

    recipients = _read_recipients(data, base_dir, problems)
    sending = _read_sending(data, problems)
    relays = _read_relays(data, base_dir, problems)
    unsubscribe = _read_unsubscribe(data, base_dir, problems)
    dkim = _read_dkim(data, base_dir, problems)

    if problems.items:
        raise ConfigError(problems.items)
    assert templates is not None and recipients is not None
    return Campaign(
        name=name,
        from_header=from_header,
        from_address=from_address,
        envelope_sender=envelope_sender,
        reply_to=reply_to,
        templates=templates,
        recipients=recipients,
        relays=tuple(relays),
        sending=sending,
        unsubscribe=unsubscribe,
        dkim=dkim,
        store=store,
        base_dir=str(base_dir),
        store_password_env=store_password_env,
    )


def _read_unsubscribe(
    data: dict[str, Any], base_dir: Path, problems: _Problems
) -> UnsubscribeSettings | None:
    table = _get(data, "unsubscribe", dict, problems, "unsubscribe")
    if table is None:
        return None
    problems.unknown(table, _UNSUBSCRIBE_KEYS, "unsubscribe.")

    url = _get(table, "url", str, problems, "unsubscribe.url", required=True)
    if url is not None:
        _check_unsubscribe_url(url, problems)
    mailto = _get(table, "mailto", str, problems, "unsubscribe.mailto")
    if mailto is not None:
        parsed = _parse_mailbox(mailto, "unsubscribe.mailto", problems)
        mailto = parsed[1] if parsed else None

    secret_env = _get(table, "secret_env", str, problems, "unsubscribe.secret_env")
    secret_file = _get(table, "secret_file", str, problems, "unsubscribe.secret_file")
    if secret_env and secret_file:
        problems.add("unsubscribe.secret_env", "set secret_env or secret_file, not both")
    if not secret_file:
        secret_env = secret_env or DEFAULT_UNSUBSCRIBE_SECRET_ENV
    return UnsubscribeSettings(
        url=url or "",
        mailto=mailto,
        secret_env=None if secret_file else secret_env,
        secret_file=_resolve(base_dir, secret_file) if secret_file else None,
    )


def _read_dkim(
    data: dict[str, Any], base_dir: Path, problems: _Problems
) -> tuple[DkimSettings, ...]:
    """Read ``[dkim]`` (one key) or ``[[dkim]]`` (up to two keys, one per algorithm).

    The key files are only checked to exist here. They are read and parsed when a send,
    preview or check starts, by mailblast.signingkey.load_signing_keys.
    """
    value = data.get("dkim")
    if value is None:
        return ()
    if isinstance(value, dict):
        tables: list[tuple[str, Any]] = [("dkim", value)]
    elif isinstance(value, list) and 0 < len(value) <= MAX_DKIM_KEYS:
        tables = [(f"dkim[{index}]", table) for index, table in enumerate(value)]
    else:
        problems.add(
            "dkim",
            f"expected a [dkim] table or 1 to {MAX_DKIM_KEYS} [[dkim]] tables (one RSA key,"
            " one Ed25519 key)",
        )
        return ()

    settings = []
    for prefix, table in tables:
        if not isinstance(table, dict):
            problems.add(prefix, "must be a table")
            continue
        problems.unknown(table, _DKIM_KEYS, f"{prefix}.")
        table_settings = _read_dkim_table(table, prefix, base_dir, problems)
        if table_settings is not None:
            settings.append(table_settings)
    return tuple(settings)


def _read_dkim_table(
    table: dict[str, Any], prefix: str, base_dir: Path, problems: _Problems
) -> DkimSettings | None:
    domain = _get(table, "domain", str, problems, f"{prefix}.domain", required=True)
    selector = _get(table, "selector", str, problems, f"{prefix}.selector", required=True)
    key_file = _get(
        table, "private_key_file", str, problems, f"{prefix}.private_key_file", required=True
    )
    if domain is not None:
        domain = _dns_name(domain, f"{prefix}.domain", "example.com", problems)
    if selector is not None:
        selector = _dns_name(selector, f"{prefix}.selector", "s1", problems)
    if key_file is not None:
        key_file = _resolve(base_dir, key_file)
        if not Path(key_file).is_file():
            problems.add(f"{prefix}.private_key_file", f"key file {key_file} not found")
    if domain is None or selector is None or key_file is None:
        return None
    return DkimSettings(domain=domain, selector=selector, private_key_file=key_file)


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _dns_name(value: str, path: str, example: str, problems: _Problems) -> str | None:
    is_domain = path.endswith("domain")
    name = normalize_dns_name(value, min_labels=2 if is_domain else 1)
    if name is None:
        kind = "domain name" if is_domain else "selector (DNS labels)"
        problems.add(path, f"{value!r} is not a valid {kind}, such as {example!r}")
    return name


def normalize_dns_name(value: str, min_labels: int) -> str | None:
    """Return a host name in lower-case A-label form, or None when it is not a valid one.

    Internationalised names are converted with IDNA. Labels are letters, digits and inner
    hyphens, at most 63 characters. A trailing dot is not accepted.
    """
    try:
        name = value if value.isascii() else idna.encode(value, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None
    name = name.lower()
    labels = name.split(".")
    if len(labels) < min_labels or len(name) > 253:
        return None
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return None
    return name


_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "[::1]", "localhost"}


def _check_unsubscribe_url(url: str, problems: _Problems) -> None:
    parts = urlsplit(url)
    # Mailbox providers only offer one-click unsubscribe for https. Plain http is accepted for
    # a loopback host so that `mailblast serve` can be tried without a certificate.
    loopback = parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK_HOSTS
    if parts.scheme != "https" and not loopback:
        problems.add("unsubscribe.url", f"{url!r} is not an https:// URL")
    elif not parts.hostname:
        problems.add("unsubscribe.url", f"{url!r} has no host name")
    elif parts.fragment or any(ch.isspace() or ch in '<>"' for ch in url):
        problems.add(
            "unsubscribe.url", f"{url!r} must not contain a fragment, spaces, quotes or < >"
        )
    elif "token=" in parts.query:
        problems.add("unsubscribe.url", f"{url!r} already has a token parameter; remove it")


def _read_templates(table: dict[str, Any], base_dir: Path, problems: _Problems) -> Templates | None:
    subject = _get(table, "subject", str, problems, "campaign.subject", required=True)
    to_name = _get(table, "to_name", str, problems, "campaign.to_name")
    bodies: dict[str, tuple[str | None, str | None]] = {}
    for part in ("text", "html"):
        relative = _get(table, part, str, problems, f"campaign.{part}")
        if relative is None:
            bodies[part] = (None, None)
            continue
        full = _resolve(base_dir, relative)
        try:
            bodies[part] = (Path(full).read_text(encoding="utf-8-sig"), full)
        except FileNotFoundError:
            problems.add(f"campaign.{part}", f"template file {full} not found")
            bodies[part] = (None, None)
        except UnicodeDecodeError as error:
            problems.add(
                f"campaign.{part}", f"{full} is not UTF-8 (byte {error.start}); save it as UTF-8"
            )
            bodies[part] = (None, None)
        except OSError as error:
            problems.add(f"campaign.{part}", f"cannot read {full}: {error.strerror}")
            bodies[part] = (None, None)
    if "text" not in table and "html" not in table:
        problems.add("campaign.text", "missing; give a text template, an html template or both")
    if subject is None:
        return None
    return Templates(
        subject=subject,
        text=bodies["text"][0],
        html=bodies["html"][0],
        to_name=to_name,
        text_path=bodies["text"][1],
        html_path=bodies["html"][1],
    )


def _read_recipients(
    data: dict[str, Any], base_dir: Path, problems: _Problems
) -> RecipientSettings | None:
    table = _get(data, "recipients", dict, problems, "recipients", default={}, required=True)
    problems.unknown(table, _RECIPIENT_KEYS, "recipients.")
    path = _get(table, "path", str, problems, "recipients.path", required=True)
    column = _get(table, "email_column", str, problems, "recipients.email_column", default="email")
    delimiter = _get(table, "delimiter", str, problems, "recipients.delimiter")
    if delimiter is not None and len(delimiter) != 1:
        problems.add(
            "recipients.delimiter", f"{delimiter!r} must be exactly one character, such as ';'"
        )
    encoding = _get(table, "encoding", str, problems, "recipients.encoding")
    if encoding is not None:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            problems.add(
                "recipients.encoding", f"unknown encoding {encoding!r}; try 'utf-8' or 'cp1252'"
            )
    reject_file = _get(table, "reject_file", str, problems, "recipients.reject_file")
    max_field = _get(
        table, "max_field_length", int, problems, "recipients.max_field_length", default=65536
    )
    if max_field is not None and max_field < 1:
        problems.add("recipients.max_field_length", "must be a positive number of characters")
    if path is None:
        return None
    full = _resolve(base_dir, path)
    if not Path(full).is_file():
        problems.add("recipients.path", f"recipient list {full} not found")
    return RecipientSettings(
        path=full,
        email_column=column,
        delimiter=delimiter,
        encoding=encoding,
        reject_file=_resolve(base_dir, reject_file) if reject_file else None,
        max_field_length=max_field,
    )


def _positive_int(
    table: dict[str, Any], key: str, default: int, problems: _Problems, path: str
) -> int:
    value: int = _get(table, key, int, problems, path, default=default)
    if value < 1:
        problems.add(path, f"{value} must be at least 1")
    return value


def _read_sending(data: dict[str, Any], problems: _Problems) -> SendingSettings:
    table = _get(data, "sending", dict, problems, "sending", default={})
    problems.unknown(table, _SENDING_KEYS, "sending.")
    defaults = SendingSettings()

    counts = {
        key: _positive_int(table, key, getattr(defaults, key), problems, f"sending.{key}")
        for key in ("batch_size", "max_attempts", "error_window")
    }
    factor = _get(
        table,
        "retry_factor",
        (int, float),
        problems,
        "sending.retry_factor",
        default=defaults.retry_factor,
    )
    if factor < 1:
        problems.add("sending.retry_factor", "must be at least 1")
    budget = _get(
        table,
        "error_budget",
        (int, float),
        problems,
        "sending.error_budget",
        default=defaults.error_budget,
    )
    if not 0 < budget <= 1:
        problems.add("sending.error_budget", f"{budget} must be a share above 0 and at most 1")

    durations = {
        key: _duration(table, key, getattr(defaults, key), problems, f"sending.{key}")
        for key in ("lease", "retry_initial", "retry_max", "max_age")
    }
    return SendingSettings(
        batch_size=counts["batch_size"],
        max_attempts=counts["max_attempts"],
        error_window=counts["error_window"],
        retry_factor=float(factor),
        error_budget=float(budget),
        lease=durations["lease"],
        retry_initial=durations["retry_initial"],
        retry_max=durations["retry_max"],
        max_age=durations["max_age"],
    )


def _read_relays(data: dict[str, Any], base_dir: Path, problems: _Problems) -> list[RelaySettings]:
    tables = _get(data, "relay", list, problems, "relay", default=[], required=True)
    relays: list[RelaySettings] = []
    names: set[str] = set()
    if "relay" in data and not tables:
        problems.add("relay", "at least one [[relay]] is required")
    for index, table in enumerate(tables):
        prefix = f"relay[{index}]"
        if not isinstance(table, dict):
            problems.add(prefix, "must be a table ([[relay]])")
            continue
        problems.unknown(table, _RELAY_KEYS, f"{prefix}.")
        relay = _read_relay(table, prefix, base_dir, problems)
        if relay is None:
            continue
        if relay.name in names:
            problems.add(
                f"{prefix}.name", f"duplicate relay name {relay.name!r}; names must be unique"
            )
        names.add(relay.name)
        relays.append(relay)
    return relays


def _read_relay(
    table: dict[str, Any], prefix: str, base_dir: Path, problems: _Problems
) -> RelaySettings | None:
    defaults = RelaySettings(name="", host="")
    name = _get(table, "name", str, problems, f"{prefix}.name", required=True)
    host = _get(table, "host", str, problems, f"{prefix}.host", required=True)
    port = _get(table, "port", int, problems, f"{prefix}.port", default=defaults.port)
    if port is not None and not 0 < port < 65536:
        problems.add(f"{prefix}.port", f"{port} is not a TCP port (1-65535)")
    tls = _get(table, "tls", str, problems, f"{prefix}.tls", default=defaults.tls)
    if tls not in TLS_MODES:
        problems.add(f"{prefix}.tls", f"{tls!r} is not one of {', '.join(TLS_MODES)}")
    ca_file = _get(table, "ca_file", str, problems, f"{prefix}.ca_file")
    if ca_file:
        ca_file = _resolve(base_dir, ca_file)
        if not Path(ca_file).is_file():
            problems.add(f"{prefix}.ca_file", f"CA file {ca_file} not found")

    return RelaySettings(
        name=name or "",
        host=host or "",
        port=port,
        tls=tls,
        ca_file=ca_file,
        ehlo_name=_get(table, "ehlo_name", str, problems, f"{prefix}.ehlo_name"),
        **_relay_auth(table, prefix, tls, base_dir, problems),
        **_relay_limits(table, prefix, defaults, problems),
    )


def _relay_auth(
    table: dict[str, Any], prefix: str, tls: str, base_dir: Path, problems: _Problems
) -> dict[str, Any]:
    """Read the AUTH keys; a password is only ever a reference to a variable or a file."""
    if "password" in table:
        problems.add(
            f"{prefix}.password",
            "literal passwords are not accepted; use password_env or password_file",
        )
    password_env = _get(table, "password_env", str, problems, f"{prefix}.password_env")
    password_file = _get(table, "password_file", str, problems, f"{prefix}.password_file")
    if password_env and password_file:
        problems.add(f"{prefix}.password_env", "set password_env or password_file, not both")
    username = _get(table, "username", str, problems, f"{prefix}.username")
    if (password_env or password_file) and not username:
        problems.add(f"{prefix}.username", "missing; a password needs a username")

    plaintext_auth = _get(
        table,
        "allow_plaintext_auth",
        bool,
        problems,
        f"{prefix}.allow_plaintext_auth",
        default=False,
    )
    if username and tls == "none" and not plaintext_auth:
        problems.add(
            f"{prefix}.tls",
            "'none' would send the AUTH password in clear; use 'starttls' or 'implicit'"
            " (allow_plaintext_auth = true is meant for loopback tests only)",
        )
    return {
        "username": username,
        "password_env": password_env,
        "password_file": _resolve(base_dir, password_file) if password_file else None,
        "allow_plaintext_auth": plaintext_auth,
    }


def _relay_limits(
    table: dict[str, Any], prefix: str, defaults: RelaySettings, problems: _Problems
) -> dict[str, Any]:
    """Read weight, connection and message limits, rate and timeouts."""
    limits: dict[str, Any] = {}
    for key in ("weight", "max_connections", "max_messages_per_connection"):
        default = getattr(defaults, key)
        limits[key] = _positive_int(table, key, default, problems, f"{prefix}.{key}")

    quota = _get(table, "daily_quota", int, problems, f"{prefix}.daily_quota")
    if quota is not None and quota < 1:
        problems.add(
            f"{prefix}.daily_quota",
            f"{quota} must be at least 1 message per UTC day; remove the key for no quota",
        )
    limits["daily_quota"] = quota

    limits["rate"] = None
    if "rate" in table:
        try:
            limits["rate"] = parse_rate(table["rate"])
        except ValueError as error:
            problems.add(f"{prefix}.rate", str(error))

    for key in ("connect_timeout", "command_timeout", "data_timeout"):
        limits[key] = _duration(table, key, getattr(defaults, key), problems, f"{prefix}.{key}")
    return limits
