"""Settings come from SLUICE_* variables over a TOML file; mistakes name the file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sluice import errors
from sluice.settings import load_settings


def test_defaults_without_env_or_file() -> None:
    """With no variables and no file, Sluice uses SQLite and the sandbox provider."""
    settings = load_settings()

    assert settings.database_url.startswith("sqlite:///")
    assert settings.default_provider == "sandbox"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.config_file is None


def test_env_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field can be set through its SLUICE_ variable, converted to the field's type."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", "postgresql://db.example/sluice")
    monkeypatch.setenv("SLUICE_PORT", "9001")
    monkeypatch.setenv("SLUICE_DISPATCH_IDLE_S", "0.25")

    settings = load_settings()

    assert settings.database_url == "postgresql://db.example/sluice"
    assert settings.port == 9001
    assert settings.dispatch_idle_s == 0.25


def test_sluice_toml_in_working_directory_is_read() -> None:
    """./sluice.toml is read when present: [sluice] keys and [providers.*] tables."""
    Path("sluice.toml").write_text(
        '[sluice]\nport = 8123\ndefault_provider = "acme"\n\n'
        '[providers.acme]\nbase_url = "https://acme.example"\n',
        encoding="utf-8",
    )

    settings = load_settings()

    assert settings.port == 8123
    assert settings.default_provider == "acme"
    assert settings.providers == {"acme": {"base_url": "https://acme.example"}}
    assert settings.config_file == "sluice.toml"


def test_sluice_config_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SLUICE_CONFIG points at a TOML file elsewhere, which wins over ./sluice.toml."""
    Path("sluice.toml").write_text("[sluice]\nport = 1111\n", encoding="utf-8")
    other = tmp_path / "prod.toml"
    other.write_text("[sluice]\nport = 2222\n", encoding="utf-8")
    monkeypatch.setenv("SLUICE_CONFIG", str(other))

    settings = load_settings()

    assert settings.port == 2222
    assert settings.config_file == str(other)


def test_env_wins_over_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SLUICE_ variable overrides the same key in the TOML file."""
    Path("sluice.toml").write_text('[sluice]\nport = 8123\nlog_level = "DEBUG"\n', encoding="utf-8")
    monkeypatch.setenv("SLUICE_PORT", "9002")

    settings = load_settings()

    assert settings.port == 9002
    assert settings.log_level == "DEBUG"


def test_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arguments given to load_settings (CLI options) win over the environment."""
    monkeypatch.setenv("SLUICE_PORT", "9002")

    assert load_settings(port=7000).port == 7000


def test_unknown_key_names_file_and_key() -> None:
    """An unknown [sluice] key raises ConfigError naming the file and the key."""
    Path("sluice.toml").write_text("[sluice]\nprot = 8000\n", encoding="utf-8")

    with pytest.raises(errors.ConfigError, match=r"sluice\.toml.*prot") as caught:
        load_settings()

    assert "port" in str(caught.value)


def test_a_boolean_where_a_number_belongs_is_a_config_error() -> None:
    """`pumps = true` in sluice.toml was taken as 1 (Python's bool is an int), and
    `rate_margin = true` as 1.0; each is now refused, named, and nothing else is."""
    Path("sluice.toml").write_text(
        "[sluice]\npumps = true\nrate_margin = true\nport = false\nfair_share = false\n",
        encoding="utf-8",
    )

    with pytest.raises(errors.ConfigError) as caught:
        load_settings()

    lines = str(caught.value).splitlines()
    assert sorted(lines) == [
        "invalid setting SLUICE_PORT / [sluice] port in sluice.toml: "
        "Value error, must be an integer, not true or false",
        "invalid setting SLUICE_PUMPS / [sluice] pumps in sluice.toml: "
        "Value error, must be an integer, not true or false",
        "invalid setting SLUICE_RATE_MARGIN / [sluice] rate_margin in sluice.toml: "
        "Value error, must be a number, not true or false",
    ]


def test_an_error_names_the_file_only_for_a_value_read_from_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README promises errors that name the file: a bad value in sluice.toml was
    named "SLUICE_PUMPS / [sluice] pumps" like one from the environment, so with both in
    use the operator could not tell where to look. A variable set wins and is named alone."""
    Path("sluice.toml").write_text("[sluice]\npumps = 0\nport = 8000\n", encoding="utf-8")
    monkeypatch.setenv("SLUICE_PORT", "0")

    with pytest.raises(errors.ConfigError) as caught:
        load_settings()

    assert sorted(str(caught.value).splitlines()) == [
        "invalid setting SLUICE_PORT / [sluice] port: Input should be greater than or equal to 1",
        "invalid setting SLUICE_PUMPS / [sluice] pumps in sluice.toml: "
        "Input should be greater than or equal to 1",
    ]


def test_a_bad_api_rate_limit_in_the_file_names_the_file() -> None:
    from sluice.api.app import api_rate

    Path("sluice.toml").write_text('[sluice]\napi_rate_limit = "fast"\n', encoding="utf-8")

    with pytest.raises(errors.ConfigError) as caught:
        api_rate(load_settings())

    assert str(caught.value) == (
        "SLUICE_API_RATE_LIMIT / [sluice] api_rate_limit in sluice.toml: "
        "must be a rate like '20/s', '600/min' or '5/2s'"
    )


def test_numbers_from_the_file_and_the_environment_still_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refusing booleans leaves integers for float settings and numbers as text alone."""
    Path("sluice.toml").write_text("[sluice]\nrate_margin = 1\npumps = 3\n", encoding="utf-8")
    monkeypatch.setenv("SLUICE_PORT", "8001")

    settings = load_settings()

    assert (settings.rate_margin, settings.pumps, settings.port) == (1.0, 3, 8001)


def test_unknown_table_names_file_and_table() -> None:
    """An unknown top-level table raises ConfigError naming the file and the table."""
    Path("sluice.toml").write_text("[database]\nurl = 'x'\n", encoding="utf-8")

    with pytest.raises(errors.ConfigError, match=r"sluice\.toml.*database"):
        load_settings()


def test_missing_config_file_is_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SLUICE_CONFIG naming a file that does not exist raises ConfigError naming it."""
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("SLUICE_CONFIG", str(missing))

    with pytest.raises(errors.ConfigError, match=r"nope\.toml"):
        load_settings()


def test_invalid_toml_is_config_error() -> None:
    """A file that is not TOML raises ConfigError naming it."""
    Path("sluice.toml").write_text("[sluice\nport = ", encoding="utf-8")

    with pytest.raises(errors.ConfigError, match=r"sluice\.toml"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sluice = 3\n", "sluice.toml: sluice must be a table ([sluice]), got an integer"),
        ("sluice = [1]\n", "sluice.toml: sluice must be a table ([sluice]), got an array"),
        ('sluice = "x"\n', "sluice.toml: sluice must be a table ([sluice]), got a string"),
        ("providers = 3\n", "sluice.toml: providers must be a table ([providers.NAME]), got"),
        ("sandbox = true\n", "sluice.toml: sandbox must be a table ([sandbox]), got a boolean"),
    ],
)
def test_a_top_level_key_that_is_not_a_table_is_config_error(text: str, expected: str) -> None:
    """`sluice = 3` (a key where the table belongs) was a TypeError traceback from every
    command, and `sluice = "x"` a message about dictionary update sequences."""
    Path("sluice.toml").write_text(text, encoding="utf-8")

    with pytest.raises(errors.ConfigError) as raised:
        load_settings()

    assert str(raised.value).startswith(expected), str(raised.value)


def test_a_provider_that_is_not_a_table_is_named_in_its_own_table() -> None:
    """`[providers] sandbox = 3` was "[sluice] providers (sandbox)", a table the file did
    not have; it is named where it is written."""
    Path("sluice.toml").write_text("[providers]\nsandbox = 3\n", encoding="utf-8")

    with pytest.raises(errors.ConfigError) as raised:
        load_settings()

    assert str(raised.value) == (
        "invalid setting SLUICE_PROVIDERS / [providers.sandbox]: Input should be a valid dictionary"
    )


def test_a_config_file_that_is_not_utf8_is_config_error_naming_it() -> None:
    """Saved as UTF-16 (Notepad's "Unicode"), it was "invalid settings: 'utf-8' codec
    can't decode byte 0xff in position 0", naming no file."""
    Path("sluice.toml").write_bytes("[sluice]\nport = 8001\n".encode("utf-16"))

    with pytest.raises(errors.ConfigError) as raised:
        load_settings()

    assert str(raised.value) == (
        "sluice.toml: not UTF-8 text (byte 0: invalid start byte); save it as UTF-8"
    )


def test_a_config_path_that_is_a_fifo_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SLUICE_CONFIG naming a FIFO (it exists) said "no such file"."""
    fifo = tmp_path / "sluice.toml"
    os.mkfifo(fifo)
    monkeypatch.setenv("SLUICE_CONFIG", str(fifo))

    with pytest.raises(errors.ConfigError) as raised:
        load_settings()

    assert str(raised.value) == f"SLUICE_CONFIG={fifo}: not a regular file"


def test_a_config_path_that_is_a_folder_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SLUICE_CONFIG naming a folder said "no such file"."""
    monkeypatch.setenv("SLUICE_CONFIG", str(tmp_path))

    with pytest.raises(errors.ConfigError, match="is a folder, not a file"):
        load_settings()


def test_wrongly_typed_value_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value of the wrong type raises ConfigError naming the setting."""
    monkeypatch.setenv("SLUICE_PORT", "eighty")

    with pytest.raises(errors.ConfigError, match="port"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("bogus://x", "No such transport: bogus"),
        ("127.0.0.1:6379", "must be a URL with a scheme"),
    ],
)
def test_a_broker_url_kombu_cannot_use_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    """An unknown broker scheme was accepted, and `sluice worker` then died with a KeyError
    traceback from kombu; kombu is now asked when the settings are read."""
    monkeypatch.setenv("SLUICE_BROKER_URL", url)

    with pytest.raises(errors.ConfigError, match="broker_url") as info:
        load_settings()
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://h:6379/0", "amqp://guest:guest@127.0.0.1:5672//"],
)
def test_the_documented_broker_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SLUICE_BROKER_URL", url)

    assert load_settings().broker_url == url


@pytest.mark.parametrize("port", ["0", "99999"])
def test_a_port_outside_1_to_65535_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, port: str
) -> None:
    """Port 99999 was accepted, and the API then listened on 34463 (99999 mod 65536)."""
    monkeypatch.setenv("SLUICE_PORT", port)

    with pytest.raises(errors.ConfigError, match="port"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SLUICE_EXECUTOR_THREADS", "0"),
        ("SLUICE_CLAIM_LEASE_S", "nan"),
        ("SLUICE_CLAIM_LEASE_S", "-1"),
        ("SLUICE_DISPATCH_BATCH", "0"),
        ("SLUICE_DISPATCH_IDLE_S", "-1"),
        ("SLUICE_PUMPS", "0"),
        ("SLUICE_PUMP_S", "inf"),
        ("SLUICE_RECONCILE_EVERY_S", "0"),
        ("SLUICE_RATE_MARGIN", "inf"),
        ("SLUICE_RATE_CATCH_UP_S", "nan"),
        ("SLUICE_MAX_BODY_BYTES", "-1"),
        ("SLUICE_CONSOLE_SESSION_S", "inf"),
        ("SLUICE_USAGE_RETENTION_S", "1e308"),
        ("SLUICE_RETENTION_EVERY_S", "inf"),
    ],
)
def test_an_engine_number_out_of_range_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """SLUICE_EXECUTOR_THREADS=0 and SLUICE_CLAIM_LEASE_S=nan were accepted, and `sluice
    submit` then failed with a ValueError traceback; every such number has bounds now."""
    monkeypatch.setenv(variable, value)

    with pytest.raises(errors.ConfigError, match=variable):
        load_settings()


SECRET = "Sup3rSecretPw"


@pytest.mark.parametrize("setting", ["SLUICE_BROKER_URL", "SLUICE_REDIS_URL"])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # '@' mistyped: the password and the host read as the host part's port.
        (f"redis://:{SECRET}!127.0.0.1:6379/0", "its port is not a number"),
        (f"redis://:{SECRET}@127.0.0.1:notaport/0", "its port is not a number"),
        (f"redis://:{SECRET}@127.0.0.1:99999/0", "its port is not a number"),
        (f"redis://:{SECRET}@[::1/0", "its host part does not parse"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0?socket_timeout=abc", "?options (socket_timeout)"),
    ],
)
def test_a_url_that_does_not_parse_is_a_config_error_that_quotes_none_of_it(
    monkeypatch: pytest.MonkeyPatch, setting: str, url: str, expected: str
) -> None:
    """A broker URL whose '@' was mistyped answered "Port could not be cast to integer value
    as 'Sup3rSecretPw!127.0.0.1:6379'"; a limiter URL that did not parse (or an option its
    client cannot take: a broker's too) passed the settings and was a traceback from
    redis-py or kombu in every command that started."""
    monkeypatch.setenv(setting, url)

    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert setting in message
    assert expected in message
    assert SECRET not in message


@pytest.mark.parametrize("path", ["/abc", "/1/2", "/one"])
def test_a_redis_url_whose_path_is_not_a_database_number_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """redis-py reads a path that is not a number as database 0: a limiter meant for its
    own database shared the default one, silently."""
    monkeypatch.setenv("SLUICE_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:6379{path}")

    with pytest.raises(errors.ConfigError, match="database number") as info:
        load_settings()
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://:pw@127.0.0.1:6379/11",
        "rediss://user:pw@h:6380/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=2",
        "redis://[::1]:6379/1",
    ],
)
def test_the_usual_redis_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SLUICE_REDIS_URL", url)

    assert load_settings().redis_url == url


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("99999d", "must be at most 3650d (ten years)"),
        ("3651d", "must be at most 3650d (ten years)"),
        ("0d", "must be a positive duration like '30d' or '12h'"),
        ("garbage", "must be a positive duration like '30d' or '12h'"),
    ],
)
def test_a_retention_period_too_long_is_not_called_not_positive(
    monkeypatch: pytest.MonkeyPatch, value: str, said: str
) -> None:
    """SLUICE_RETENTION_PERIOD=99999d was refused as "must be a positive duration", which it
    is: the bound it is past is named instead, and the value is still not quoted."""
    monkeypatch.setenv("SLUICE_RETENTION_PERIOD", value)
    with pytest.raises(errors.ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.endswith(f"retention_period: Value error, {said}"), message
    assert repr(value) not in message
