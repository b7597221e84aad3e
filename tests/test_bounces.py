"""Bounce processing: classification, agreement with Sisimai, store effects and the CLI."""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from bounce_corpus import CORPUS, SISIMAI, measure_agreement, read_corpus_report
from bounce_mail import NOTICES, arf, auto_reply, dsn, plain_mail
from mailblast.bounce_report import BounceClass, ReportKind, classify_failure, read_report
from mailblast.bounces import BounceProcessor, BounceSettings
from mailblast.cli.main import main
from mailblast.compose import message_id_for
from mailblast.mailboxes import StoredMessage
from mailblast.recipients import normalise_address
from mailblast.store import SQLStore, open_store
from mailblast.store.base import LoadRow, LogRecord, Outcome
from mailblast.unsubscribe import make_token

SECRET = b"0123456789abcdef0123456789abcdef"
# The measured agreement is 307 of 323 (95.0%). docs/bounces.md explains each disagreement, and
# this floor catches regressions.
AGREED_FLOOR = 307
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "code", "text", "expected"),
    [
        (
            "5.1.1",
            550,
            "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown",
            "hard",
        ),
        ("5.1.2", 550, "Host or domain name not found", "hard"),
        ("5.2.2", 552, "552 5.2.2 Mailbox full", "soft"),
        (None, 552, "552 Requested mail action aborted: exceeded storage allocation", "soft"),
        ("5.1.7", 550, "550 5.1.7 Invalid sender address", "block"),
        ("5.1.8", 553, "553 5.1.8 Sender address domain does not exist", "block"),
        ("5.7.1", 554, "554 5.7.1 Message rejected because of poor reputation", "block"),
        ("4.4.7", None, "Delivery time expired", "soft"),
        ("5.0.0", 550, "550 No such user here", "hard"),
        ("5.0.0", 550, "550 Service unavailable", "soft"),
        (
            None,
            None,
            "The mail server could not deliver mail to a@example.com. The account or domain"
            " may not exist, they may be blacklisted, or missing the proper dns entries.",
            "hard",
        ),
        (None, 550, "550 Your host is blacklisted at dnsbl.example.org", "block"),
    ],
)
def test_classify_failure_table(
    status: str | None, code: int | None, text: str, expected: str
) -> None:
    assert classify_failure(status, code, text) == BounceClass(expected)


@pytest.mark.parametrize(
    ("notice", "addresses", "expected"),
    [
        ("exim text and header differ", ["alias@example.org", "person@example.org"], "hard"),
        ("exim unroutable domain", ["person@example.org"], "hard"),
        (
            "domino text names the address sent to",
            ["person@mail.example.org", "person@example.org"],
            "hard",
        ),
        ("rcpt to line from post_master", ["person@example.net"], "hard"),
        ("multipart with unparsed boundary", ["person@example.net"], "hard"),
        ("dsn quoted in plain text", ["final@example.org", "person@example.org"], "soft"),
        ("headers quoted without indentation", ["person@example.org"], "hard"),
        ("mailing list loop alert", ["list@example.org"], "soft"),
    ],
)
def test_text_recipients_table(notice: str, addresses: list[str], expected: str) -> None:
    report = read_report(email.message_from_string(NOTICES[notice]))
    assert report.kind is ReportKind.BOUNCE
    assert [failure.addresses for failure in report.failures] == [addresses]
    assert report.failures[0].bounce_class is BounceClass(expected)


@pytest.mark.parametrize(
    ("recipient", "text", "expected"),
    [
        # The domain filter's reply leaves the address out: the address itself exists.
        ("person@ezweb.ne.jp", "550 : User unknown", "soft"),
        ("person@au.com", "550 : User unknown", "soft"),
        # The same servers name the address when it does not exist.
        ("person@ezweb.ne.jp", "550 <person@ezweb.ne.jp>: User unknown", "hard"),
        # Other servers get no such reading.
        ("person@example.net", "550 : User unknown", "hard"),
    ],
)
def test_kddi_filter_reply(recipient: str, text: str, expected: str) -> None:
    assert classify_failure("5.0.0", 550, text, "failed", None, recipient) == BounceClass(expected)


def test_dragonfly_bounces_name_their_recipient() -> None:
    # DragonFly Mail Agent repeats the failed address in X-Original-To, a header that other
    # MTAs use for the bounce's own recipient.
    files = sorted(CORPUS.glob("maildir/lhost-dragonfly-*.eml"))
    classes = {}
    for path in files:
        report = read_corpus_report(path)
        assert report.kind is ReportKind.BOUNCE, path.name
        [failure] = report.failures
        assert f"error delivering your mail to <{failure.recipient}>" in path.read_text()
        classes[failure.recipient.partition("@")[0]] = failure.bounce_class
    assert len(files) == 15
    assert classes["hostunknown"] is BounceClass.HARD
    assert classes["authfailure"] is BounceClass.BLOCK
    assert classes["suspend"] is BounceClass.SOFT  # 5.7.13: the recipient's account is disabled
    assert classes["mailererror"] is BounceClass.SOFT  # 5.3.0 "Recipient address rejected: ..."


def test_delayed_action_is_soft() -> None:
    assert classify_failure("5.1.1", 550, "User unknown", "delayed") is BounceClass.SOFT


def test_corpus_agreement_with_sisimai() -> None:
    agreement = measure_agreement()
    agreed = len(agreement.comparisons) - len(agreement.disagreements)
    print(f"agreement {agreed}/{len(agreement.comparisons)} = {agreement.share:.1%}")
    assert len(agreement.comparisons) == 323
    assert agreed >= AGREED_FLOOR


def test_corpus_auto_replies_never_hard() -> None:
    vacation = {
        line.split('"file":"')[1].split('"')[0]
        for line in SISIMAI.read_text(encoding="utf-8").splitlines()
        if '"reason":"vacation"' in line
    }
    names = vacation | {path.name for path in (CORPUS / "maildir").glob("rfc3834-*.eml")}
    assert vacation
    for name in sorted(names):
        report = read_corpus_report(CORPUS / "maildir" / name)
        classes = [failure.bounce_class for failure in report.failures]
        assert BounceClass.HARD not in classes, name
    for name in sorted(vacation):
        assert read_corpus_report(CORPUS / "maildir" / name).kind is ReportKind.AUTO_REPLY, name


def test_corpus_not_bounces_not_hard() -> None:
    for path in sorted((CORPUS / "not-bounces").glob("*.eml")):
        report = read_corpus_report(path)
        assert all(f.bounce_class is not BounceClass.HARD for f in report.failures), path.name


def fill_store(store: SQLStore, addresses: list[str], envelope_sender: str) -> None:
    """Add one campaign whose messages to ``addresses`` are all sent."""
    campaign = store.upsert_campaign("spring", {"envelope_sender": envelope_sender}, NOW)
    rows = []
    for line, address in enumerate(dict.fromkeys(addresses), start=2):
        normalised, key, smtputf8 = normalise_address(address)
        rows.append(LoadRow(line, normalised, key, smtputf8, "{}"))
    store.load_chunk(campaign.id, rows, [], len(rows) + 1, len(rows))
    claimed = store.claim(campaign.id, "test", NOW, NOW + 60, len(rows))
    outcomes = [
        Outcome(m.id, "sent", 1, NOW, NOW, LogRecord("sent", NOW, m.id, recipient=m.address))
        for m in claimed
    ]
    store.commit_group(campaign.id, [], outcomes)


def table(store: SQLStore, query: str) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = store._execute(query).fetchall()
    return rows


def corpus_files() -> list[Path]:
    return sorted((CORPUS / "maildir").glob("*.eml"))


def test_suppressions_are_hard_and_complaints(store: SQLStore, tmp_path: Path) -> None:
    files = corpus_files()
    reports = [read_corpus_report(path) for path in files]
    recipients = [f.recipient for report in reports for f in report.failures]
    valid = [address for address in recipients if _key(address)]
    fill_store(store, valid, "bounces@example.com")
    settings = BounceSettings(soft_bounce_limit=1000, review_dir=tmp_path / "review")

    processor = BounceProcessor(store, settings, clock=lambda: NOW)
    for path in files:
        processor.process(StoredMessage(str(path), path.read_bytes()))

    suppressing = (BounceClass.HARD, BounceClass.COMPLAINT)
    expected = {
        _key(f.recipient)
        for report in reports
        for f in report.failures
        if f.bounce_class in suppressing and _key(f.recipient)
    }
    suppressed = {row[0] for row in table(store, "SELECT key FROM suppressions")}
    assert expected
    assert suppressed == expected
    reasons = {row[0] for row in table(store, "SELECT reason FROM suppressions")}
    assert reasons == {"hard-bounce", "complaint"}
    assert processor.summary.counts["hard"] > 50
    assert processor.summary.counts["complaint"] > 0
    assert processor.summary.counts["auto-reply"] > 0


def test_reprocessing_changes_nothing(store: SQLStore) -> None:
    fill_store(store, ["gone@example.com", "full@example.com"], "b@example.com")
    messages = [
        dsn("b@example.com", "gone@example.com", "5.1.1", "550 5.1.1 User unknown"),
        dsn("b@example.com", "full@example.com", "5.2.2", "552 5.2.2 Mailbox full"),
    ]
    queries = (
        "SELECT count(*) FROM delivery_log",
        "SELECT key, reason, time FROM suppressions ORDER BY key",
        "SELECT id, state FROM messages ORDER BY id",
    )

    run(store, messages, clock=NOW)
    before = [table(store, query) for query in queries]
    processor = run(store, messages, clock=NOW + 3600)

    assert [table(store, query) for query in queries] == before
    assert processor.summary.counts["duplicate"] == 2
    assert processor.summary.suppressed == 0


def test_soft_bounce_limit(store: SQLStore) -> None:
    fill_store(store, ["full@example.com"], "b@example.com")
    diagnostics = [f"552 5.2.2 Mailbox full (attempt {n})" for n in range(3)]
    bounces = [dsn("b@example.com", "full@example.com", "5.2.2", text) for text in diagnostics]

    run(store, bounces[:2], soft_bounce_limit=3)
    assert table(store, "SELECT count(*) FROM suppressions") == [(0,)]
    assert table(store, "SELECT state FROM messages") == [("bounced",)]
    run(store, bounces[2:], soft_bounce_limit=3)

    assert table(store, "SELECT reason FROM suppressions") == [("soft-bounce",)]
    log = table(store, "SELECT type, status FROM delivery_log WHERE type = 'bounced'")
    assert log == [("bounced", "5.2.2")] * 3


def test_sender_block_not_suppressed(store: SQLStore) -> None:
    fill_store(store, ["a@example.com", "b@example.com"], "s@example.com")
    messages = [
        dsn("s@example.com", "a@example.com", "5.1.8", "553 5.1.8 Sender address rejected"),
        dsn("s@example.com", "b@example.com", "5.7.1", "554 5.7.1 Blocked by Spamhaus"),
    ]

    processor = run(store, messages)

    assert table(store, "SELECT count(*) FROM suppressions") == [(0,)]
    assert processor.summary.counts["block"] == 2
    assert len(processor.summary.blocks) == 2


def test_record_message_id_only_ours(store: SQLStore) -> None:
    fill_store(store, ["ours@example.com", "other@example.com"], "b@example.com")
    ours = message_id_for("spring", normalise_address("ours@example.com")[1], "example.com")
    messages = [
        dsn(
            "b@example.com",
            "ours@example.com",
            "5.1.1",
            "550 5.1.1 User unknown",
            f"Message-ID: {ours}\nSubject: Spring\n\nHello.\n".encode(),
        ),
        # Matched by address, but the returned copy is some other message.
        dsn(
            "b@example.com",
            "other@example.com",
            "5.1.1",
            "550 5.1.1 User unknown",
            b"Message-ID: <unrelated@example.org>\nSubject: Hi\n\nHello.\n",
        ),
    ]

    run(store, messages)

    log = table(
        store, "SELECT recipient, message_id FROM delivery_log WHERE type = 'bounced' ORDER BY 1"
    )
    assert log == [("other@example.com", None), ("ours@example.com", ours)]


def test_block_line_names_address_once(store: SQLStore) -> None:
    fill_store(store, ["a@example.com"], "s@example.com")
    text = "a@example.com: 554 5.7.1 Blocked by Spamhaus " + "x " * 150

    processor = run(store, [dsn("s@example.com", "a@example.com", "5.7.1", text)])

    [line] = processor.summary.blocks
    assert line.startswith("a@example.com: 554 5.7.1 Blocked by Spamhaus")
    assert line.count("a@example.com") == 1
    assert line.endswith(" ...")


def test_unmatched_goes_to_review(store: SQLStore, tmp_path: Path) -> None:
    fill_store(store, ["a@example.com"], "s@example.com")
    review = tmp_path / "review"
    source = tmp_path / "stranger.eml"
    source.write_bytes(dsn("s@example.com", "stranger@example.org", "5.1.1", "User unknown"))
    junk = b"this is not a mail message at all"

    processor = BounceProcessor(store, BounceSettings(review_dir=review))
    processor.process(StoredMessage(str(source), source.read_bytes()))
    processor.process(StoredMessage("junk", junk))

    assert processor.summary.review == 2
    assert source.exists()
    copies = sorted(review.glob("*.eml"))
    assert {path.read_bytes() for path in copies} == {source.read_bytes(), junk}
    notes = " ".join(path.read_text() for path in review.glob("*.reason"))
    assert "stranger@example.org" in notes


def test_unsubscribe_by_mail(store: SQLStore, tmp_path: Path) -> None:
    fill_store(store, ["reader@example.com"], "s@example.com")
    token = make_token(SECRET, "spring", "reader@example.com")
    valid = plain_mail("unsubscribe@example.com", f"unsubscribe {token}", "reader@example.com")
    tampered = plain_mail("unsubscribe@example.com", f"unsubscribe {token[:-2]}xx")

    processor = run(store, [valid, tampered], review_dir=tmp_path / "review")

    rows = table(store, "SELECT address, reason, campaign_id FROM suppressions")
    assert rows == [("reader@example.com", "unsubscribed", 0)]
    assert processor.summary.counts["unsubscribe"] == 1
    assert processor.summary.review == 1
    log = table(store, "SELECT type, recipient FROM delivery_log WHERE type = 'unsubscribed'")
    assert log == [("unsubscribed", "reader@example.com")]


def test_redacted_complaint_matched_by_verp(store: SQLStore) -> None:
    fill_store(store, ["reader@example.com"], "fbl+{token}@example.com")
    message_id = table(store, "SELECT id FROM messages")[0][0]
    report = arf(f"fbl+{message_id}@example.com", "redacted@example.net")

    run(store, [report])

    assert table(store, "SELECT address, reason FROM suppressions") == [
        ("reader@example.com", "complaint")
    ]
    assert table(store, "SELECT state FROM messages") == [("sent",)]


def test_auto_reply_ignored() -> None:
    message = email.message_from_bytes(auto_reply("b@example.com", "away@example.com"))
    assert read_report(message).kind is ReportKind.AUTO_REPLY


def test_cli_rejects_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.mbox"
    status = main(["bounces", "process", str(missing), "--store", str(tmp_path / "s.db")])
    assert status == 2
    assert f"not found: {missing}" in capsys.readouterr().err


def test_cli_rejects_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bounces", "process", str(tmp_path), "--store", str(tmp_path / "none.db")])
    assert status == 2
    assert "store not found" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_cli_rejects_zero_soft_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bounces", "process", str(tmp_path), "--soft-bounce-limit", "0"])
    assert "invalid count '0'" in capsys.readouterr().err


def run(
    store: SQLStore,
    messages: list[bytes],
    *,
    clock: float = NOW,
    soft_bounce_limit: int = 3,
    review_dir: Path | None = None,
) -> BounceProcessor:
    settings = BounceSettings(soft_bounce_limit, review_dir, SECRET)
    processor = BounceProcessor(store, settings, clock=lambda: clock)
    for index, data in enumerate(messages):
        processor.process(StoredMessage(f"message {index}", data))
    return processor


def _key(address: str) -> str | None:
    try:
        return normalise_address(address)[1]
    except ValueError:
        return None


def test_cli_records_bounce_in_postgres(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_store(postgres_url) as store:
        fill_store(store, ["gone@example.com"], "b@example.com")
    source = tmp_path / "gone.eml"
    source.write_bytes(dsn("b@example.com", "gone@example.com", "5.1.1", "550 5.1.1 User unknown"))

    status = main(["bounces", "process", str(source), "--store", postgres_url])

    assert status == 0, capsys.readouterr().err
    with open_store(postgres_url) as store:
        assert table(store, "SELECT key, reason FROM suppressions") == [
            ("gone@example.com", "hard-bounce")
        ]
        assert table(store, "SELECT state FROM messages") == [("bounced",)]
        assert store.count_soft_bounces("gone@example.com") == 0
        assert table(store, "SELECT class FROM bounces") == [("hard",)]
