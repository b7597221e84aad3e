"""Reply classification by scope: every row of the scope table, and the state each leads to."""

from __future__ import annotations

import pytest

from mailblast.relay.classify import Command, Scope, classify, connection_failure, enhanced_status

CASES = [
    # (command, code, text, scope, state)
    (Command.END_OF_DATA, 250, "2.0.0 Ok: queued as 123", Scope.SUCCESS, "sent"),
    (Command.RCPT, 550, "5.1.1 <bob@example.net>: User unknown", Scope.RECIPIENT, "bounced"),
    (Command.RCPT, 550, "5.1.2 Bad destination system address", Scope.RECIPIENT, "bounced"),
    (Command.RCPT, 551, "5.1.6 Mailbox has moved", Scope.RECIPIENT, "bounced"),
    (Command.RCPT, 550, "5.2.1 Mailbox disabled", Scope.RECIPIENT, "bounced"),
    (Command.RCPT, 553, "mailbox name not allowed", Scope.RECIPIENT, "bounced"),
    (Command.RCPT, 552, "Too many recipients", Scope.TEMPORARY, "deferred"),
    (Command.RCPT, 552, "5.2.2 Mailbox full", Scope.TEMPORARY, "deferred"),
    (Command.RCPT, 550, "5.7.1 Relaying denied", Scope.RELAY, "deferred"),
    (Command.RCPT, 554, "5.7.1 <x@example.net>: Relay access denied", Scope.RELAY, "deferred"),
    (Command.RCPT, 550, "5.7.1 Message refused by policy", Scope.SENDER, "deferred"),
    (Command.RCPT, 553, "5.1.8 Sender domain does not exist", Scope.SENDER, "deferred"),
    (Command.RCPT, 525, "5.7.13 User account disabled", Scope.RECIPIENT, "bounced"),
    (Command.MAIL, 553, "5.1.7 Bad sender address syntax", Scope.SENDER, "deferred"),
    (Command.MAIL, 550, "5.7.1 Client host blocked", Scope.SENDER, "deferred"),
    (Command.RCPT, 451, "4.7.1 Try again later", Scope.TEMPORARY, "deferred"),
    (Command.RCPT, 450, "4.2.0 Greylisted", Scope.TEMPORARY, "deferred"),
    (Command.RCPT, 452, "4.2.2 Mailbox full", Scope.TEMPORARY, "deferred"),
    (Command.MAIL, 421, "4.7.0 Too many messages, closing", Scope.CONNECTION, "deferred"),
    (Command.END_OF_DATA, 552, "5.3.4 Message too big", Scope.MESSAGE, "failed"),
    (Command.END_OF_DATA, 554, "5.6.0 Message rejected", Scope.MESSAGE, "failed"),
    (Command.END_OF_DATA, 451, "4.3.0 Local error", Scope.TEMPORARY, "deferred"),
    (Command.DATA, 554, "No valid recipients", Scope.MESSAGE, "failed"),
    (Command.AUTH, 535, "5.7.8 Authentication credentials invalid", Scope.RELAY, "deferred"),
    (Command.MAIL, 530, "5.7.0 Authentication required", Scope.RELAY, "deferred"),
    (Command.CONNECT, 554, "5.3.2 Service unavailable", Scope.RELAY, "deferred"),
    (Command.CONNECT, 421, "Service not available", Scope.CONNECTION, "deferred"),
    (Command.EHLO, 450, "try later", Scope.CONNECTION, "deferred"),
]


@pytest.mark.parametrize(("command", "code", "text", "scope", "state"), CASES)
def test_classify_scope_and_state(
    command: Command, code: int, text: str, scope: Scope, state: str
) -> None:
    reply = classify(command, code, text)
    assert reply.scope is scope
    assert reply.state == state


def test_recipient_never_blamed_for_relay_or_sender() -> None:
    blameless = [c for c in CASES if c[3] in (Scope.RELAY, Scope.SENDER, Scope.CONNECTION)]
    for command, code, text, _, _ in blameless:
        assert classify(command, code, text).state != "bounced", text


def test_enhanced_status_parsed() -> None:
    assert enhanced_status("5.1.1 User unknown") == "5.1.1"
    assert enhanced_status("  4.7.1 later") == "4.7.1"
    assert enhanced_status("User unknown 5.1.1") is None
    assert enhanced_status("550 5.1.1") is None


def test_connection_failure_after_dot_is_unknown() -> None:
    assert (
        connection_failure(Command.END_OF_DATA, "reset", after_end_of_data=True).state == "unknown"
    )
    assert connection_failure(Command.DATA, "reset").state == "deferred"


def test_reply_text_whitespace_collapsed() -> None:
    reply = classify(Command.RCPT, 550, "5.1.1 line one\nline  two")
    assert reply.text == "5.1.1 line one line two"
    assert reply.describe() == "550 5.1.1 line one line two"
