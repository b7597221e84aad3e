"""Tests of the streaming recipient list reader, on real files written to tmp_path."""

from __future__ import annotations

import string
import tracemalloc
from pathlib import Path

import pytest
from email_validator import validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from mailblast.config import RecipientSettings
from mailblast.errors import LoadError
from mailblast.recipients import (
    FAST_ADDRESS,
    MIN_RECORD_LIMIT,
    Recipient,
    Rejected,
    _normalise_plain_ascii,
    _normalise_validated,
    list_columns,
    normalise_address,
    read_recipients,
)


def write_list(tmp_path: Path, content: str | bytes, name: str = "list.csv") -> str:
    path = tmp_path / name
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(data)
    return str(path)


def read_all(path: str, **options: object) -> tuple[list[Recipient], list[Rejected]]:
    list_settings = RecipientSettings(path=path, **options)  # type: ignore[arg-type]
    accepted: list[Recipient] = []
    rejected: list[Rejected] = []
    for item in read_recipients(list_settings):
        if isinstance(item, Recipient):
            accepted.append(item)
        else:
            rejected.append(item)
    return accepted, rejected


def load_error(path: str, **options: object) -> str:
    with pytest.raises(LoadError) as caught:
        read_all(path, **options)
    return str(caught.value)


# --- a realistic mixed list -------------------------------------------------------------------

MIXED = (
    "\ufeffemail,name,notes\n"
    "\u00a0Ann@Example.COM\u00a0,Ann,first\n"
    "ann@example.com,Ann again,same key\n"
    "bob@@example.com,Bob,invalid\n"
    'carol@example.org,"Carol, C","two\n'
    'lines"\n'
    "dan@bücher.example,Dan,U-label\n"
    "dan@XN--BCHER-KVA.example,Dan,A-label\n"
    "erin@example.net,Erin,last\n"
)


def test_mixed_list_counts(tmp_path: Path) -> None:
    accepted, rejected = read_all(write_list(tmp_path, MIXED))

    assert [r.line for r in accepted] == [2, 3, 5, 7, 8, 9]
    assert [r.line for r in rejected] == [4]


def test_mixed_list_addresses(tmp_path: Path) -> None:
    accepted, _ = read_all(write_list(tmp_path, MIXED))

    assert [r.address for r in accepted] == [
        "Ann@example.com",
        "ann@example.com",
        "carol@example.org",
        "dan@xn--bcher-kva.example",
        "dan@xn--bcher-kva.example",
        "erin@example.net",
    ]


def test_mixed_list_case_and_idna_keys(tmp_path: Path) -> None:
    accepted, _ = read_all(write_list(tmp_path, MIXED))
    keys = [r.key for r in accepted]

    assert keys[0] == "ann@example.com"
    assert keys[1] == keys[0]
    assert keys[3] == "dan@xn--bcher-kva.example"
    assert keys[4] == keys[3]


def test_mixed_list_fields(tmp_path: Path) -> None:
    accepted, _ = read_all(write_list(tmp_path, MIXED))

    assert list(accepted[0].fields) == ["email", "name", "notes"]
    assert accepted[0].fields["email"] == "Ann@example.com"
    assert accepted[2].fields["name"] == "Carol, C"
    assert accepted[2].fields["notes"] == "two\nlines"


def test_mixed_list_invalid_reason(tmp_path: Path) -> None:
    _, rejected = read_all(write_list(tmp_path, MIXED))

    assert rejected[0].reason == (
        "invalid address 'bob@@example.com' in column email: The part after the @-sign"
        " contains invalid characters: '@'."
    )
    assert rejected[0].value == "bob@@example.com"


def test_zero_width_padding_trimmed(tmp_path: Path) -> None:
    content = "email,name\n\u200b\ufeff ann@example.com\u2060\u00a0\u200d, Ann \n"
    accepted, _ = read_all(write_list(tmp_path, content))

    assert accepted[0].address == "ann@example.com"
    assert accepted[0].fields["name"] == "Ann"


# --- line numbers ---------------------------------------------------------------------------


def test_line_numbers_multiline_record(tmp_path: Path) -> None:
    content = (
        "email,notes\n"
        "a@example.com,one\n"
        "b@example.com,two\n"
        "c@example.com,three\n"
        'd@example.com,"spans\n'
        "three\n"
        'lines"\n'
        "e@example.com,after\n"
    )
    accepted, _ = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [2, 3, 4, 5, 8]


def test_line_numbers_crlf_and_blank_lines(tmp_path: Path) -> None:
    content = (
        'email,notes\r\na@example.com,one\r\nb@example.com,"x\r\ny"\r\n\r\n,\r\nc@example.com,end'
    )
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [2, 3, 7]
    assert accepted[1].fields["notes"] == "x\r\ny"
    assert rejected == []


# --- encodings ------------------------------------------------------------------------------

BAD_BYTE = b"\xe9"  # é in cp1252, never valid alone in UTF-8
CP1252_LIST = "email,name\na@example.com,Ann\nb@example.com,José\n".encode("cp1252")


def test_cp1252_error_names_fix(tmp_path: Path) -> None:
    path = write_list(tmp_path, CP1252_LIST)
    message = load_error(path)

    assert path in message
    assert "line 3" in message
    assert "0xE9" in message
    assert 'set encoding = "cp1252" (or the file\'s encoding) under [recipients]' in message


def test_cp1252_reads_with_encoding(tmp_path: Path) -> None:
    accepted, rejected = read_all(write_list(tmp_path, CP1252_LIST), encoding="cp1252")

    assert [r.fields["name"] for r in accepted] == ["Ann", "José"]
    assert rejected == []


def test_decode_error_mid_file_line(tmp_path: Path) -> None:
    rows = b"".join(b"user%d@example.com,Name\n" % i for i in range(3000))
    data = b"\xef\xbb\xbfemail,name\n" + rows + b"late@example.com,Ren\xe9e\n"
    message = load_error(write_list(tmp_path, data))

    assert "line 3002" in message
    assert f"byte offset {data.index(BAD_BYTE)}" in message


def test_decode_error_first_chunk_offset(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfemail,name\na@example.com,Ren\xe9e\n"
    message = load_error(write_list(tmp_path, data))

    assert "line 2" in message
    assert f"byte offset {data.index(BAD_BYTE)}" in message


def test_decode_error_line_crlf_across_chunks(tmp_path: Path) -> None:
    # The line count reads 1 MiB chunks. Padding the first row puts the CR of a CR LF on the
    # last byte of the first chunk and its LF on the first byte of the next.
    first = b"a@example.com," + b"x" * 9 + b"\r\n"
    data = b"email,name\r\n" + first + b"b@example.com,name\r\n" * 52_430 + b"c@x.com,\xe9\r\n"
    bad_line = data[: data.index(BAD_BYTE)].count(b"\n") + 1
    message = load_error(write_list(tmp_path, data))

    assert data[(1 << 20) - 1 : (1 << 20) + 1] == b"\r\n"
    assert f"line {bad_line} " in message


def test_bom_stripped_with_utf8_encoding(tmp_path: Path) -> None:
    path = write_list(tmp_path, "\ufeffemail,name\na@example.com,Ann\n")

    assert list_columns(RecipientSettings(path=path, encoding="utf-8")) == ["email", "name"]


def test_unknown_encoding_error(tmp_path: Path) -> None:
    message = load_error(write_list(tmp_path, "email\n"), encoding="no-such-codec")

    assert "unknown encoding 'no-such-codec'" in message


def test_non_text_encoding_error(tmp_path: Path) -> None:
    message = load_error(write_list(tmp_path, "email\n"), encoding="rot13")

    assert "'rot13' is not a text encoding" in message


def test_missing_file_error(tmp_path: Path) -> None:
    message = load_error(str(tmp_path / "absent.csv"))

    assert "absent.csv not found; check path under [recipients]" in message


# --- bad cells ------------------------------------------------------------------------------


def test_nul_byte_row_rejected(tmp_path: Path) -> None:
    content = "email,name\na@example.com,An\x00n\nb@example.com,Bea\n"
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [3]
    assert [r.line for r in rejected] == [2]
    assert rejected[0].reason == "control character U+0000 in column name; remove it from the list"


def test_control_characters_rejected(tmp_path: Path) -> None:
    content = (
        "email,name,notes\n"
        "a@example.com,Ann,ring\x07\n"
        "b@example.com,B\x85b,c1\n"
        "c@example.com,Cy\tTab,tab is fine\n"
    )
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.fields["name"] for r in accepted] == ["Cy\tTab"]
    assert rejected[0].reason == "control character U+0007 in column notes; remove it from the list"
    assert rejected[1].reason == "control character U+0085 in column name; remove it from the list"


def test_huge_field_rejects_only_row(tmp_path: Path) -> None:
    huge = "x" * 200_000
    content = (
        "email,notes\n"
        "a@example.com,short\n"
        f"b@example.com,{huge}\n"
        f'c@example.com,"{huge}\n{huge}"\n'
        "d@example.com,short\n"
    )
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [2, 6]
    assert [r.line for r in rejected] == [3, 4]
    assert rejected[0].reason == (
        "column notes is 200000 characters long, over the limit of 65536; shorten it or raise"
        " max_field_length under [recipients]"
    )
    assert len(rejected[0].value) == 200


def test_empty_email_rejected(tmp_path: Path) -> None:
    content = "email,name\n,Ann\n\u200b ,Bea\n,\nc@example.com,Cy\n"
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [5]
    assert [r.line for r in rejected] == [2, 3]
    assert rejected[0].reason == "empty address in column email; fill it in or delete the row"


def test_wrong_cell_count_rejected(tmp_path: Path) -> None:
    content = (
        "email,name,city\na@example.com,Ann\nb@example.com,Bea,Oslo,extra\nc@example.com,Cy,Rome\n"
    )
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [4]
    assert rejected[0].reason == (
        "row has 2 cells but the header has 3 columns; quote any field that contains ','"
        " and give every row 3 cells"
    )
    assert rejected[1].reason.startswith("row has 4 cells but the header has 3 columns")
    assert rejected[1].value == "b@example.com,Bea,Oslo,extra"


# --- quoting --------------------------------------------------------------------------------


def test_unterminated_quote_recovers(tmp_path: Path) -> None:
    rows = [f"user{n}@example.com,Name {n}" for n in range(1, 11)]
    rows[2] = 'user3@example.com,"Name 3'
    path = write_list(tmp_path, "email,name\n" + "\n".join(rows) + "\n")
    accepted, rejected = read_all(path)

    expected = [f"user{n}@example.com" for n in (1, 2, 4, 5, 6, 7, 8, 9, 10)]
    assert [r.address for r in accepted] == expected
    assert [r.line for r in accepted] == [2, 3, 5, 6, 7, 8, 9, 10, 11]
    assert [r.line for r in rejected] == [4]
    assert rejected[0].reason == (
        "unterminated quote in the record starting at line 4; close the quote"
    )


def test_unterminated_quote_last_row(tmp_path: Path) -> None:
    content = 'email,name\na@example.com,Ann\nb@example.com,"Bea\n'
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [2]
    assert [r.line for r in rejected] == [3]


def test_unterminated_quote_past_record_limit(tmp_path: Path) -> None:
    # Rows of 60,000 characters (under max_field_length) so the swallowed tail passes the
    # record limit after a few hundred rows.
    filler = "f" * 60_000
    count = MIN_RECORD_LIMIT // 60_000 + 20
    rows = "".join(f"user{n}@example.com,{filler}\n" for n in range(count))
    content = 'email,notes\nopen@example.com,"never closed\n' + rows
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert len(accepted) == count
    assert accepted[0].line == 3
    assert [r.line for r in rejected] == [2]
    assert "longer than 16777216 characters" in rejected[0].reason


def test_line_past_record_limit(tmp_path: Path) -> None:
    content = f"email,notes\na@example.com,{'x' * (MIN_RECORD_LIMIT + 10)}\nb@example.com,ok\n"
    accepted, rejected = read_all(write_list(tmp_path, content))

    assert [r.line for r in accepted] == [3]
    assert [r.line for r in rejected] == [2]


def test_stray_quote_inside_field_kept(tmp_path: Path) -> None:
    content = 'email,name\na@example.com,Ann "Annie" Lee\nb@example.com,"Smith, B" \n'
    accepted, _ = read_all(write_list(tmp_path, content))

    assert [r.fields["name"] for r in accepted] == ['Ann "Annie" Lee', "Smith, B"]


# --- header and delimiter -------------------------------------------------------------------


def test_missing_email_column_error(tmp_path: Path) -> None:
    path = write_list(tmp_path, "mail,name\na@example.com,Ann\n")
    message = load_error(path)

    assert "email column 'email' not found" in message
    assert "['mail', 'name']" in message
    assert "set email_column under [recipients]" in message
    assert path in message


def test_duplicate_header_error(tmp_path: Path) -> None:
    message = load_error(write_list(tmp_path, "email,name,name\n"))

    assert "duplicate column 'name'" in message
    assert "columns 2 and 3" in message


def test_unnamed_column_error(tmp_path: Path) -> None:
    message = load_error(write_list(tmp_path, "email,,name\n"))

    assert "column 2 in the header" in message


def test_empty_file_error(tmp_path: Path) -> None:
    message = load_error(write_list(tmp_path, b""))

    assert "is empty" in message


def test_blank_file_error(tmp_path: Path) -> None:
    message = load_error(write_list(tmp_path, "\ufeff\n  \n"))

    assert "is empty" in message


def test_header_only_yields_nothing(tmp_path: Path) -> None:
    accepted, rejected = read_all(write_list(tmp_path, "email,name\n"))

    assert accepted == []
    assert rejected == []


def test_semicolon_delimiter_detected(tmp_path: Path) -> None:
    content = '"Name, full";email;city\n"Smith, Ann";a@example.com;Oslo\n'
    accepted, _ = read_all(write_list(tmp_path, content))

    assert accepted[0].fields == {
        "Name, full": "Smith, Ann",
        "email": "a@example.com",
        "city": "Oslo",
    }


@pytest.mark.parametrize("delimiter", ["\t", "|", ","])
def test_delimiter_detected(tmp_path: Path, delimiter: str) -> None:
    content = f"email{delimiter}name\na@example.com{delimiter}Ann\n"
    accepted, _ = read_all(write_list(tmp_path, content))

    assert accepted[0].fields == {"email": "a@example.com", "name": "Ann"}


def test_delimiter_setting_overrides(tmp_path: Path) -> None:
    content = "email|name,first\na@example.com|Ann,Lee\n"
    accepted, _ = read_all(write_list(tmp_path, content), delimiter="|")

    assert accepted[0].fields == {"email": "a@example.com", "name,first": "Ann,Lee"}


def test_list_columns_csv(tmp_path: Path) -> None:
    path = write_list(tmp_path, "\n email ;Name\n")

    assert list_columns(RecipientSettings(path=path)) == ["email", "Name"]


# --- JSON Lines -----------------------------------------------------------------------------

JSONL = (
    '{"email": "a@example.com", "name": "Ann", "age": 31, "vip": true, "note": null}\n'
    "\n"
    '{"email": "b@example.com", "name": "Bob"\n'
    '["c@example.com"]\n'
    '{"name": "no address"}\n'
    '{"email": "bad@@example.com"}\n'
    '{"email": " D@Example.com ", "tags": ["x", "y"]}\r\n'
    '{"email": "e@example.com", "name": "E\\u0000"}\n'
)


def test_jsonl_accepted_rows(tmp_path: Path) -> None:
    accepted, _ = read_all(write_list(tmp_path, JSONL, "list.jsonl"))

    assert [r.line for r in accepted] == [1, 7]
    assert accepted[0].fields == {
        "email": "a@example.com",
        "name": "Ann",
        "age": "31",
        "vip": "true",
        "note": "",
    }
    assert accepted[1].fields == {"email": "D@example.com", "tags": '["x", "y"]'}


def test_jsonl_rejected_rows(tmp_path: Path) -> None:
    _, rejected = read_all(write_list(tmp_path, JSONL, "list.ndjson"))

    assert [r.line for r in rejected] == [3, 4, 5, 6, 8]
    assert rejected[0].reason == (
        "invalid JSON at column 41: Expecting ',' delimiter; write one JSON object per line"
    )
    assert rejected[1].reason == (
        "line holds a JSON array, not an object; write one JSON object per line"
    )
    assert rejected[2].reason == (
        "missing key 'email' in the JSON object; add it or set email_column under [recipients]"
    )
    assert rejected[3].reason.startswith("invalid address 'bad@@example.com' in column email")
    assert rejected[4].reason == "control character U+0000 in column name; remove it from the list"


def test_jsonl_empty_error(tmp_path: Path) -> None:
    message = load_error(write_list(tmp_path, "\n\n", "list.jsonl"))

    assert "is empty" in message


def test_list_columns_jsonl(tmp_path: Path) -> None:
    path = write_list(tmp_path, 'not json\n{"email": "a@example.com", "name": "A"}\n', "l.jsonl")

    assert list_columns(RecipientSettings(path=path)) == ["email", "name"]


def test_list_columns_jsonl_without_object(tmp_path: Path) -> None:
    path = write_list(tmp_path, "[1]\n", "list.jsonl")

    with pytest.raises(LoadError, match="contains no JSON object"):
        list_columns(RecipientSettings(path=path))


# --- memory ---------------------------------------------------------------------------------


def test_memory_bounded_200k_rows(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("email,first_name,city\n")
        handle.writelines(f"user{n}@example.com,Name{n},City {n % 90}\n" for n in range(200_000))

    tracemalloc.start()
    try:
        count = sum(1 for _ in read_recipients(RecipientSettings(path=str(path))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 200_000
    assert peak < 20 * 1024 * 1024


# --- address normalisation ------------------------------------------------------------------


def test_normalise_smtputf8_uses_u_label() -> None:
    assert normalise_address("Jörg@XN--BCHER-KVA.example") == (
        "Jörg@bücher.example",
        "jörg@xn--bcher-kva.example",
        True,
    )


def test_normalise_key_nfc() -> None:
    decomposed = normalise_address("Jo\u0308rg@example.com")
    composed = normalise_address("J\u00f6rg@example.com")

    assert decomposed[1] == composed[1]


def test_normalise_key_nfc_after_casefold() -> None:
    # "ǰ".casefold() is "j" followed by U+030C COMBINING CARON, which NFC composes back.
    key = normalise_address("\u01f0o@example.com")[1]

    assert key == "\u01f0o@example.com"


def test_normalise_invalid_message() -> None:
    with pytest.raises(ValueError, match="special-use or reserved name"):
        normalise_address("ann@example.test")


def test_fast_path_plain_address() -> None:
    assert _normalise_plain_ascii("Ann@Example.COM") == (
        "Ann@example.com",
        "ann@example.com",
        False,
    )


ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
LOCAL_PARTS = st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=12), min_size=1, max_size=3)
LABELS = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda label: "--" not in label
)
DOMAINS = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(LABELS, min_size=1, max_size=3),
    st.sampled_from(["com", "org", "net", "example", "de", "museum"]),
)
ASCII_ADDRESSES = st.builds(
    lambda local, domain: ".".join(local) + "@" + domain, LOCAL_PARTS, DOMAINS
)


@given(ASCII_ADDRESSES)
def test_key_ignores_case(address: str) -> None:
    validate_email(address, check_deliverability=False)

    assert normalise_address(address.upper())[1] == normalise_address(address.lower())[1]
    assert _normalise_validated(address.upper())[1] == _normalise_validated(address.lower())[1]


# Domains near the edges of the fast path: Punycode and reserved "--" labels, special-use and
# Punycode top-level names, labels around the 63-character limit, addresses over 254 characters.
EDGE_LABELS = st.one_of(
    st.from_regex(r"[a-zA-Z0-9-]{1,8}", fullmatch=True),
    st.sampled_from(["xn--bcher-kva", "XN--BCHER-KVA", "xn--zz", "ab--cd", "a--b", "a-b"]),
    st.sampled_from([62, 63, 64]).map(lambda length: "a" * length),
)
EDGE_TLDS = st.one_of(
    st.sampled_from(["com", "Example", "net"]),
    st.sampled_from(["test", "TEST", "local", "localhost", "onion", "arpa", "invalid", "xn--p1ai"]),
)
EDGE_DOMAINS = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(EDGE_LABELS, min_size=1, max_size=5),
    EDGE_TLDS,
)
EDGE_ADDRESSES = st.builds(
    lambda local, domain: ".".join(local) + "@" + domain,
    st.one_of(LOCAL_PARTS, st.just(["x" * 64])),
    EDGE_DOMAINS,
)
# 196 characters plus the local part, so the total straddles the 254-character limit.
LONG_ADDRESSES = st.builds(
    lambda local_length, tld: "x" * local_length + "@" + ".".join(["a" * 63] * 3) + "." + tld,
    st.integers(min_value=50, max_value=70),
    st.sampled_from(["com", "net"]),
)


@given(
    st.one_of(
        ASCII_ADDRESSES,
        st.from_regex(FAST_ADDRESS, fullmatch=True),
        st.text(alphabet="aZ9.-_+@!é\"' ", max_size=24),
    )
)
def test_fast_path_agrees_with_validator(candidate: str) -> None:
    fast = _normalise_plain_ascii(candidate)
    if fast is None:
        return

    assert fast == _normalise_validated(candidate)


@settings(max_examples=300)
@given(st.one_of(EDGE_ADDRESSES, LONG_ADDRESSES))
def test_fast_path_edges_agree(candidate: str) -> None:
    fast = _normalise_plain_ascii(candidate)
    if fast is None:
        return

    assert fast == _normalise_validated(candidate)
