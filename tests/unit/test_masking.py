"""Secrets are masked wherever Sluice shows text: snippets, URLs, log lines, settings errors."""

from __future__ import annotations

import json
import logging
import sys
from urllib.parse import quote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from sluice import errors, logs, masking
from sluice.masking import MASK, Redactor
from sluice.settings import Settings, load_settings
from sluice.store import db

SECRET_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
secrets_st = st.text(SECRET_ALPHABET, min_size=masking.MIN_SECRET_LEN, max_size=60)
# Filler characters that are never part of a secret, to push the secret to any offset
# (including across the snippet's cut at masking.SNIPPET_CHARS).
filler_st = st.text(" \n\t,;:={}[]\"'<>/é", max_size=20)


def windows(secret: str, size: int = masking.MIN_SECRET_LEN) -> set[str]:
    """Every substring of ``secret`` of ``size`` characters (a shorter secret: itself)."""
    return {secret[i : i + size] for i in range(max(1, len(secret) - size + 1))}


def leaks(text: str, secret: str) -> list[str]:
    """The 4-character pieces of ``secret`` that appear in ``text``."""
    return sorted(w for w in windows(secret) if w in text)


@settings(max_examples=300, deadline=None)
@given(
    secret=secrets_st,
    offset=st.integers(0, masking.SNIPPET_CHARS + 80),
    before=st.text(max_size=40),
    after=st.text(max_size=400),
    filler=filler_st,
)
@example(
    secret="tok-SECRET-0123456789",
    offset=masking.SNIPPET_CHARS - 8,
    before="",
    after="",
    filler=" ",
)
def test_snippet_never_shows_any_piece_of_a_secret(
    secret: str, offset: int, before: str, after: str, filler: str
) -> None:
    """Whatever the offset, a snippet shows no 4-character piece of a secret the text holds.

    Sound because the surrounding text is chosen to hold no such piece itself: any piece
    in the output must then come from the secret (masking first, then cutting, ensures
    none does; cutting first would leave the head of a secret that straddles the cut).
    """
    pad = (filler or " ") * offset
    text = before + pad[: max(0, offset - len(before))] + secret + after
    assume(not leaks(before + "\x00" + after, secret))
    assume(not leaks(pad, secret))
    shown = Redactor([secret]).snippet(text)
    assert not leaks(shown, secret)


@settings(max_examples=200, deadline=None)
@given(
    unit=st.text(SECRET_ALPHABET, min_size=1, max_size=4),
    length=st.integers(masking.MIN_SECRET_LEN, 30),
    repeats=st.integers(2, 20),
)
def test_overlapping_occurrences_are_masked_together(unit: str, length: int, repeats: int) -> None:
    """In a periodic text every overlapping occurrence is covered: no piece is left over.

    Masking occurrences one after the other would leave the tail of an overlapping one.
    """
    secret = (unit * length)[:length]
    text = unit * (repeats + length)
    redacted = Redactor([secret]).redact(f"<{text}>")
    assert redacted.startswith("<***")
    leftover = redacted.removeprefix("<***").removesuffix(">")
    assert len(leftover) < len(unit)
    assert not leaks(redacted, secret)


def test_a_secret_straddling_the_cut_is_masked_not_half_shown() -> None:
    """The known leak: a 300-character cut through a token once showed its first half."""
    token = "tok-LIVE-abcdefghijklmnop"
    body = "x" * (masking.SNIPPET_CHARS - 10) + token + " trailing"
    shown = Redactor([token]).snippet(body)
    assert "tok-LIVE" not in shown
    assert shown.endswith("...")
    assert shown.startswith("x" * 10)


def test_two_secrets_that_overlap_are_both_masked() -> None:
    """Overlapping different secrets become one mask, not a half-masked remainder."""
    redactor = Redactor(["token-12345", "12345-rest-of-it"])
    assert redactor.redact("a token-12345-rest-of-it b") == "a *** b"


def test_escaped_forms_of_a_secret_are_masked() -> None:
    """A secret quoted in JSON, a repr or a URL is masked in those forms too."""
    secret = 'pa"ss/wo rd\\x'
    redactor = Redactor([secret])
    for form in (json.dumps(secret), repr(secret), quote(secret, safe=""), "p=" + secret):
        assert secret not in redactor.redact(form)
        assert MASK in redactor.redact(form)


def test_short_strings_are_never_registered() -> None:
    """Strings under 4 characters would garble ordinary text, so they are not secrets."""
    redactor = Redactor(["abc", ""])
    assert redactor.redact("abc abc") == "abc abc"
    assert len(redactor) == 0


def test_rotating_secrets_are_bounded() -> None:
    """Fetched tokens are remembered up to a bound, the newest kept."""
    redactor = Redactor()
    for n in range(masking.ROTATING_KEPT + 50):
        redactor.add_rotating(f"token{n:06d}")
    assert len(redactor) <= masking.ROTATING_KEPT
    assert redactor.redact(f"token{masking.ROTATING_KEPT + 49:06d}") == MASK


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://app:s3cr3t@db.example/sluice", "postgresql://app:***@db.example/sluice"),
        ("redis://:s3cr3t@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://guest:p@ss@mq//", "amqp://guest:***@mq//"),
        ("url=postgres://u:s3cr3t@[broken host/db end", "url=postgres://u:***@[broken host/db end"),
        ("no password: amqp://guest@mq//", "no password: amqp://guest@mq//"),
        (
            "redis://cache:6379/0?password=s3cr3t&socket_timeout=3",
            "redis://cache:6379/0?password=***&socket_timeout=3",
        ),
        (
            "https://x.test/cb?page=2&access_token=a.b#top",
            "https://x.test/cb?page=2&access_token=***#top",
        ),
        ("https://x.test/search?q=token&page=2", "https://x.test/search?q=token&page=2"),
    ],
)
def test_url_passwords_are_masked_whether_or_not_the_url_parses(text: str, shown: str) -> None:
    """``scheme://user:password@`` keeps its user and host but never its password, nor a
    query parameter named for a secret (redis-py reads ``?password=``)."""
    assert masking.mask_urls(text) == shown


def test_a_password_in_a_configured_url_query_is_masked_in_any_text() -> None:
    """A Redis URL's ``?password=`` is remembered like a ``user:password@`` one: an error
    that quotes it alone is masked too."""
    Settings(redis_url="redis://127.0.0.1:6379/0?password=q-Str0ng-pw%21")
    assert masking.mask("AUTH failed for q-Str0ng-pw! and q-Str0ng-pw%21") == (
        f"AUTH failed for {MASK} and {MASK}"
    )


def test_an_unparseable_database_url_is_not_echoed() -> None:
    """The error for a database URL SQLAlchemy cannot parse never shows its password."""
    with pytest.raises(errors.ConfigError) as info:
        db.make_engine("postgresql://app:hunter2-PW@db:notaport/sluice")
    assert "hunter2-PW" not in str(info.value)
    assert "not a database URL" in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    "url",
    [
        "app:hunter2-PW@db.example/sluice",  # the scheme forgotten: masking cannot see a URL
        "//app:hunter2-PW@db.example/sluice",
        "postgresql:app:hunter2-PW@db/sluice",
        "postgresql://app:hunter2@PW:9@db/sluice",  # SQLAlchemy quotes 'PW:9@db' as the port
        "postgres ql://app:hunter2-PW@db/sluice",
    ],
)
def test_a_database_url_that_does_not_parse_is_named_by_its_scheme_only(url: str) -> None:
    """Whatever made the URL unusable, the error quotes no part of it but its scheme."""
    with pytest.raises(errors.ConfigError) as info:
        db.make_engine(url)
    message = str(info.value)
    assert leaks(message, "hunter2-PW") == []
    assert leaks(message, "hunter2@PW:9@db") == []
    assert "database_url (" in message
    assert "\n" not in message


def test_a_password_with_an_unencoded_at_sign_is_refused_before_connecting() -> None:
    """``user:pa@ss@host``: SQLAlchemy would take ``ss@host`` for the host and name it in
    every connection error; the URL is refused at once, saying how to write it."""
    with pytest.raises(errors.ConfigError, match="write it as %40") as info:
        db.make_engine("postgresql://app:first-half@second-half@127.0.0.1:5432/sluice")
    assert "half" not in str(info.value)
    encoded = db.make_engine("postgresql://app:first-half%40second-half@127.0.0.1:5432/sluice")
    assert encoded.url.password == "first-half@second-half"
    encoded.dispose()


def test_a_question_mark_in_the_password_is_masked_in_the_url_shown() -> None:
    """The URL named beside a connection error hides a password holding '?' too."""
    assert db.mask_url("postgresql://app:pass?word-9@db:5432/x") == "postgresql://app:***@db:5432/x"


def test_settings_errors_never_quote_the_value_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid setting is named (variable and key), and its value is not repeated."""
    monkeypatch.setenv("SLUICE_PORT", "hunter2-not-a-port")
    monkeypatch.setenv("SLUICE_PUMPS", "x-s3cret-y")
    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "SLUICE_PORT / [sluice] port" in message
    assert "SLUICE_PUMPS / [sluice] pumps" in message
    assert "hunter2" not in message
    assert "s3cret" not in message
    assert "input_value" not in message
    assert info.value.__cause__ is None


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("SLUICE_LOG_LEVEL", "log_level"),  # was a traceback quoting the level
        ("SLUICE_RETENTION_PERIOD", "retention_period"),  # its validator quoted the value
        ("SLUICE_AUTH", "auth"),
        ("SLUICE_CONSOLE_IDLE_S", "console_idle_s"),
        ("SLUICE_REDIS_URL", "redis_url"),  # was a traceback from redis-py, at first use
        ("SLUICE_BROKER_URL", "broker_url"),
    ],
)
def test_no_setting_quotes_a_bad_value_in_its_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, setting: str
) -> None:
    """A secret pasted into the wrong variable is not repeated by the error naming it."""
    value = "hunter2-s3cret-xq" if variable.endswith("_S") else "app:hunter2-s3cret-xq@db:1/0"
    monkeypatch.setenv(variable, value)
    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert f"{variable} / [sluice] {setting}: " in message
    assert leaks(message.lower(), "hunter2-s3cret-xq") == []
    assert len(message.splitlines()) == 1


def test_a_validator_message_quoting_its_input_is_masked() -> None:
    """Whatever a validator says, the value it was given does not reach the error."""
    from pydantic import BaseModel, ValidationError, field_validator

    from sluice.settings import describe_validation_error

    class Loud(BaseModel):
        token: str

        @field_validator("token")
        @classmethod
        def _never(cls, value: str) -> str:
            raise ValueError(f"bad token {value!r} (upper {value.upper()!r})")

    with pytest.raises(ValidationError) as info:
        Loud(token="hunter2-s3cret")
    message = describe_validation_error(info.value, ".".join)
    assert message.startswith("token: Value error, bad token '***'")
    assert "hunter2" not in message


def test_log_levels_are_read_in_any_case() -> None:
    """``debug`` and ``DEBUG`` are the same level."""
    assert Settings(log_level="debug").log_level == "DEBUG"


def test_settings_repr_hides_url_passwords() -> None:
    """Printing settings (a debugger, a log line) shows no database or broker password."""
    settings = Settings(
        database_url="postgresql://app:repr-PW-1@db/sluice",
        broker_url="amqp://mq:repr-PW-2@mq//",
        redis_url="redis://:repr-PW-3@cache/0",
    )
    shown = repr(settings) + str(settings)
    for password in ("repr-PW-1", "repr-PW-2", "repr-PW-3"):
        assert password not in shown


def test_settings_teach_the_log_formatter_their_passwords() -> None:
    """Once settings are built, their passwords are masked in any log line, even bare."""
    Settings(database_url="postgresql://app:bare-PW-42%21@db/sluice")
    formatter = logs.FieldsFormatter("%(message)s")
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "auth failed: %s", None, None)
    record.args = ("bare-PW-42!",)
    assert formatter.format(record) == "auth failed: ***"


def make_record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("sluice.test", logging.DEBUG, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_log_fields_with_credential_names_are_masked() -> None:
    """Extra fields named like credentials print ``***``, however deeply nested."""
    formatter = logs.FieldsFormatter("%(message)s")
    line = formatter.format(
        make_record(
            "request.sent",
            authorization="Bearer abc-unknown-token",
            headers={"X-Api-Key": "k-unknown-1234", "Accept": "application/json"},
            api_key="sk_live_unregistered",
            client_secret="cs-unregistered",
            password="pw-unregistered",
            provider="acme",
        )
    )
    for secret in ("abc-unknown-token", "k-unknown-1234", "sk_live_unregistered"):
        assert secret not in line
    assert "cs-unregistered" not in line
    assert "pw-unregistered" not in line
    assert "provider='acme'" in line
    assert "'Accept': 'application/json'" in line


def test_known_secrets_are_masked_in_messages_fields_and_tracebacks() -> None:
    """A registered secret never reaches a formatted line: message, fields or traceback."""
    masking.remember("known-TOKEN-5150")
    formatter = logs.FieldsFormatter("%(message)s")
    try:
        raise RuntimeError("server said: known-TOKEN-5150 is invalid (postgres://u:tb-PW@h/d)")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = make_record("provider said %s", detail="echo known-TOKEN-5150")
    record.args = ("known-TOKEN-5150",)
    record.exc_info = exc_info
    line = formatter.format(record)
    assert "known-TOKEN-5150" not in line
    assert "tb-PW" not in line
    assert "RuntimeError" in line
    assert line.count(MASK) >= 3


def test_masking_formatter_wraps_other_formatters() -> None:
    """Handlers installed by Celery or uvicorn mask secrets once wrapped."""
    masking.remember("celery-TOKEN-777")
    logger = logging.getLogger("sluice.test.wrapped")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        logs.mask_handlers(logger)
        assert handler.formatter is not None
        line = handler.formatter.format(make_record("token celery-TOKEN-777"))
    finally:
        logger.removeHandler(handler)
    assert line == "DEBUG token ***"


def test_also_mask_covers_redactions_and_log_lines_in_its_block_only() -> None:
    """Per-task values are masked while their block runs, and only then."""
    redactor = Redactor()
    formatter = logs.FieldsFormatter("%(message)s")
    with masking.also_mask(["4111111111111111"]):
        assert redactor.redact("card 4111111111111111 refused") == "card *** refused"
        assert formatter.format(make_record("card 4111111111111111")) == "card ***"
    assert redactor.redact("card 4111111111111111") == "card 4111111111111111"


def test_mask_paths_masks_dotted_fields_and_list_items() -> None:
    """``redact_fields`` paths mask the value there, in every item of a list on the way."""
    payload = {
        "name": "Spring",
        "card": {"number": "4111111111111111", "holder": "A. Person"},
        "lines": [{"token": "t-1"}, {"token": "t-2"}, {"other": 1}],
        "pin": 1234,
    }
    shown = masking.mask_paths(payload, ["card.number", "lines.token", "pin", "absent.field"])
    assert shown == {
        "name": "Spring",
        "card": {"number": MASK, "holder": "A. Person"},
        "lines": [{"token": MASK}, {"token": MASK}, {"other": 1}],
        "pin": MASK,
    }
    assert payload["card"] == {"number": "4111111111111111", "holder": "A. Person"}
    assert sorted(masking.values_at(payload, ["card.number", "lines.token", "pin"])) == [
        "1234",
        "4111111111111111",
        "t-1",
        "t-2",
    ]


def test_api_keys_and_bearer_credentials_are_masked_by_shape() -> None:
    """Any Sluice API key or Authorization credential in a line is masked, known or not."""
    key = "sk_0123456789ab_" + "Zq9" * 14 + "x"
    line = masking.mask(f"login with {key}; header Authorization: Bearer eyJhbGciOi.J9.xyz")
    assert line == "login with sk_0123456789ab_***; header Authorization: Bearer ***"
    assert masking.mask("a bearer token is required") == "a bearer token is required"


def test_an_unreachable_database_is_named_without_its_password() -> None:
    """Connection refused: one line naming the database (password hidden) and the reason."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = db.make_engine(f"postgresql://app:unreach-PW-9@127.0.0.1:{port}/sluice")
    try:
        with pytest.raises(errors.StoreUnavailable) as info:
            db.ensure_schema(engine)
    finally:
        engine.dispose()
    assert info.value.where.startswith("postgresql://app:***@")
    for shown in (str(info.value), info.value.where):
        assert "unreach-PW-9" not in shown
        assert "\n" not in shown


def test_short_default_url_passwords_are_masked_in_urls_only() -> None:
    """``guest:guest``: the password is hidden in the URL, the word elsewhere left alone."""
    Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert masking.mask("amqp://guest:guest@mq// by guest") == "amqp://guest:***@mq// by guest"


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        (
            'connection to server at "db.internal" (10.0.0.5), port 5432 failed: timeout expired',
            "connection to the server failed: timeout expired",
        ),
        (
            'connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: No such file',
            "connection to the server failed: No such file",
        ),
        (
            "Error 111 connecting to redis.internal:6379. Connection refused.",
            "Error 111 connecting to the server. Connection refused.",
        ),
        (
            "failed to resolve host 'db.internal': [Errno -2] Name or service not known",
            "failed to resolve host: [Errno -2] Name or service not known",
        ),
        # redis-py's answers once connected (a partition cuts a command short this way).
        ("Timeout reading from 10.72.32.3:6379", "Timeout reading from the server"),
        (
            "Error while reading from redis.internal:6379 : (104, 'Connection reset by peer')",
            "Error while reading from the server : (104, 'Connection reset by peer')",
        ),
        ("Timeout writing to socket", "Timeout writing to socket"),
        ("[Errno 111] Connection refused", "[Errno 111] Connection refused"),
    ],
)
def test_a_connection_failure_is_told_without_the_address(reason: str, shown: str) -> None:
    assert masking.without_addresses(reason) == shown
