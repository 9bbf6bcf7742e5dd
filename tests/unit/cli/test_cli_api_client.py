"""The commands that call a running API (``--api URL --key K``): a key or URL that cannot
be sent, or an answer that is not the API's JSON, is one line on stderr, never a
traceback, and the key is never shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .running import one_line, run_cli

KEY = "sk_0123456789ab_Wq3VtYdR8pLmN2xK5sHgJf"

COMMANDS = [
    ("explain", "1"),
    ("pause", "sandbox", "--reason", "r"),
    ("resume", "sandbox"),
    ("pin", "sandbox", "5/s", "--reason", "r"),
    ("status", "--once"),
    ("rates",),
    ("tasks",),
]


def api_answers(
    monkeypatch: pytest.MonkeyPatch, handler: Callable[[httpx.Request], httpx.Response]
) -> None:
    """Every httpx client the CLI makes sends its requests to ``handler``."""
    real_client = httpx.Client

    def client(**kwargs: Any) -> httpx.Client:
        return real_client(transport=httpx.MockTransport(handler), **kwargs)

    monkeypatch.setattr(httpx, "Client", client)


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Response]:
    """Every request to the API gets the next of these answers (the last one repeats)."""
    queued: list[httpx.Response] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return queued.pop(0) if len(queued) > 1 else queued[0]

    api_answers(monkeypatch, handler)
    return queued


def two_tasks(folder: Path) -> Path:
    data = folder / "tasks.json"
    data.write_text(
        '[{"kind": "campaign", "payload": {"name": "a"}},'
        ' {"kind": "campaign", "payload": {"name": "b"}}]'
    )
    return data


@pytest.fixture
def tasks_file(tmp_path: Path) -> Path:
    data = tmp_path / "tasks.json"
    data.write_text('[{"kind": "campaign", "payload": {"name": "x"}}]')
    return data


@pytest.mark.parametrize("via_env", [False, True])
@pytest.mark.parametrize("key", [KEY + "\u2026", "\u00e9" + KEY, KEY + "\r"])
@pytest.mark.parametrize("command", [*COMMANDS, ("submit", "FILE", "--no-wait")])
def test_a_key_that_cannot_be_sent_is_one_line_that_does_not_show_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tasks_file: Path,
    command: tuple[str, ...],
    key: str,
    via_env: bool,
) -> None:
    """A key pasted with a character HTTP headers cannot carry (an ellipsis, an accent, a
    Windows line end) was a UnicodeEncodeError traceback from httpx."""
    args = [str(tasks_file) if arg == "FILE" else arg for arg in command]
    if via_env:
        monkeypatch.setenv("SLUICE_API_KEY", key)
    else:
        args += ["--key", key]

    code, err = run_cli(monkeypatch, capsys, *args, "--api", "http://127.0.0.1:9")

    assert code == 2
    assert one_line(err) == (
        "error: --key (SLUICE_API_KEY): an API key is printable ASCII text "
        "(sk_<id>_<secret>); this one holds other characters"
    )
    assert KEY[16:] not in err


@pytest.mark.parametrize("command", [*COMMANDS, ("submit", "FILE", "--no-wait")])
def test_an_api_url_that_is_not_a_url_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tasks_file: Path,
    command: tuple[str, ...],
) -> None:
    """A host that is not a name (bytes a shell in another encoding passed, read by Python
    as surrogates) was httpx's InvalidURL with a traceback."""
    args = [str(tasks_file) if arg == "FILE" else arg for arg in command]

    code, err = run_cli(monkeypatch, capsys, *args, "--api", "http://\udcff:pw@h\udcff/")

    assert code == 2
    line = one_line(err)
    assert line.startswith("error: --api (SLUICE_API_URL): not a URL: "), line
    assert "pw" not in line


PROXY_PAGE = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>\n"


@pytest.mark.parametrize("status", [200, 502])
@pytest.mark.parametrize("command", COMMANDS)
def test_an_answer_that_is_not_json_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answers: list[httpx.Response],
    command: tuple[str, ...],
    status: int,
) -> None:
    """A proxy's error page (the API behind it down) or a URL that is not the API: an
    answer 200 without JSON was a JSONDecodeError traceback for every command, an error
    page one for `sluice status`."""
    answers.append(httpx.Response(status, text=PROXY_PAGE, headers={"Content-Type": "text/html"}))

    code, err = run_cli(monkeypatch, capsys, *command, "--api", "http://sluice.test")

    assert code == 2
    line = one_line(err)
    assert "http://sluice.test" in line or status != 200, line
    assert f"{status}" in line, line


def test_submit_given_an_answer_that_is_not_json_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answers: list[httpx.Response],
    tasks_file: Path,
) -> None:
    """`sluice submit --api URL` answered 201 without JSON was a JSONDecodeError traceback."""
    answers.append(httpx.Response(201, text=PROXY_PAGE, headers={"Content-Type": "text/html"}))

    code, err = run_cli(
        monkeypatch, capsys, "submit", str(tasks_file), "--no-wait", "--api", "http://sluice.test"
    )

    assert code == 2
    assert one_line(err) == (
        "error: http://sluice.test answered 201 without JSON: is it a Sluice API?"
    )


@pytest.mark.parametrize(
    "listing",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.Response(401, json={"detail": "a valid API key is required"}),
        httpx.Response(502, text=PROXY_PAGE),
    ],
)
def test_submit_that_loses_the_api_while_waiting_is_one_line_saying_the_tasks_exist(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tasks_file: Path,
    listing: httpx.Response | Exception,
) -> None:
    """`sluice submit FILE --api URL` follows the tasks it created; the API going away
    meanwhile (killed, restarted, the key revoked) was a ConnectError or KeyError
    traceback. The line says the tasks were created, so nobody submits them twice.
    (An API that does not answer is followed for ``FOLLOW_GRACE_S`` first: 0 here.)"""
    monkeypatch.setattr("sluice.submit.FOLLOW_GRACE_S", 0.0, raising=False)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"count": 1, "ids": [7]})
        if isinstance(listing, Exception):
            raise listing
        return listing

    api_answers(monkeypatch, handler)

    code, err = run_cli(
        monkeypatch, capsys, "submit", str(tasks_file), "--api", "http://sluice.test"
    )

    assert code == 2
    line = one_line(err)
    assert line.startswith(
        "error: lost the Sluice API at http://sluice.test while following tasks 7-7, which "
        "were created: "
    ), line


def test_submit_follows_its_tasks_through_a_restart_of_the_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tasks_file: Path
) -> None:
    """In the embedded soak, `sluice up` was restarted (2 to 6 s without an API) while a
    `sluice submit FILE --api URL` followed its tasks: the submit ended with "lost the
    Sluice API ... Connection refused", exit code 2, though its tasks went on. It now keeps
    following through an API that refuses connections for a while."""
    monkeypatch.setattr("sluice.submit.FOLLOW_RETRY_S", 0.0, raising=False)
    listings = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal listings
        if request.method == "POST":
            return httpx.Response(201, json={"count": 1, "ids": [7]})
        listings += 1
        if listings in (2, 3, 4):
            raise httpx.ConnectError("[Errno 111] Connection refused")
        status = "In Progress" if listings == 1 else "Completed"
        task = {"id": 7, "status": status, "kind": "campaign", "validation_error": None}
        return httpx.Response(200, json={"items": [task], "next_cursor": None})

    api_answers(monkeypatch, handler)

    code, err = run_cli(
        monkeypatch, capsys, "submit", str(tasks_file), "--api", "http://sluice.test"
    )

    assert (code, err) == (0, "")
    assert listings >= 5


def test_a_key_without_api_is_not_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without --api the key is not sent, so a SLUICE_API_KEY HTTP could not carry is no
    reason to refuse a command on the local database."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'local.db'}")
    assert run_cli(monkeypatch, capsys, "db", "upgrade")[0] == 0
    monkeypatch.setenv("SLUICE_API_KEY", KEY + "\r")

    code, err = run_cli(monkeypatch, capsys, "resume", "sandbox")

    assert (code, err) == (0, "")


def test_submit_that_outlives_its_first_tasks_retention_ends_when_the_rest_are_final(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`sluice submit FILE --api URL` stops once every task it created is final, counting a
    task pruned meanwhile (continuous retention deletes only final tasks) as final; it used
    to list the remaining ones every second for ever."""
    data = two_tasks(tmp_path)
    listings: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"count": 2, "ids": [7, 8]})
        listings.append(1)
        if len(listings) > 3:  # still waiting: end the run instead of hanging the suite
            raise httpx.ConnectError("gave up waiting")
        # Task 7 was final and has been pruned; task 8 is Completed.
        done = {"id": 8, "status": "Completed", "kind": "campaign", "validation_error": None}
        return httpx.Response(200, json={"items": [done], "next_cursor": None})

    api_answers(monkeypatch, handler)

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--api", "http://sluice.test")

    assert (code, err) == (0, "")
    assert len(listings) == 2  # the wait's one listing, then the summary's


def test_submit_follows_only_its_own_tasks_when_another_submit_drew_ids_between_them(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`sluice submit FILE --api URL` waits for the tasks it created, not for the tasks whose
    ids fall between them (a concurrent submit drew ids from the same sequence): another
    submitter's finished task used to count as one of its own, so it stopped with one of
    its tasks still In Progress."""
    data = two_tasks(tmp_path)
    listings: list[int] = []

    def task(task_id: int, status: str) -> dict[str, Any]:
        return {"id": task_id, "status": status, "kind": "campaign", "validation_error": None}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"count": 2, "ids": [7, 9]})
        listings.append(1)
        if len(listings) > 4:
            raise httpx.ConnectError("gave up waiting")
        # Task 8 is another submitter's; task 9 finishes after the first listing.
        ninth = "In Progress" if len(listings) == 1 else "Completed"
        items = [task(7, "Completed"), task(8, "Completed"), task(9, ninth)]
        return httpx.Response(200, json={"items": items, "next_cursor": None})

    api_answers(monkeypatch, handler)

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--api", "http://sluice.test")

    assert (code, err) == (0, "")
    # Waited while task 9 was In Progress, saw it Completed, then read the summary.
    assert len(listings) == 3
