"""ProviderClient's short way sends what httpx's Client.request sends, and answers the same."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.providers.client import ProviderClient

Seen = list[httpx.Request]


def _answer(request: httpx.Request) -> httpx.Response:
    body = {"method": request.method, "url": str(request.url), "size": len(request.content)}
    return httpx.Response(201, json=body, headers={"X-Answer": "yes"})


def _clients(base_url: str, **options: Any) -> tuple[ProviderClient, httpx.Client, Seen, Seen]:
    short: Seen = []
    long: Seen = []

    def short_handler(request: httpx.Request) -> httpx.Response:
        request.read()
        short.append(request)
        return _answer(request)

    def long_handler(request: httpx.Request) -> httpx.Response:
        request.read()
        long.append(request)
        return _answer(request)

    headers = {"Accept": "application/json", "User-Agent": "sluice-test"}
    provider = ProviderClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(3.5),
        transport=httpx.MockTransport(short_handler),
        **options,
    )
    plain = httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(3.5),
        transport=httpx.MockTransport(long_handler),
        **options,
    )
    return provider, plain, short, long


def _same(a: httpx.Request, b: httpx.Request) -> None:
    assert a.method == b.method
    assert str(a.url) == str(b.url)
    assert a.url.raw_path == b.url.raw_path
    assert a.headers.multi_items() == b.headers.multi_items()
    assert a.content == b.content
    assert a.extensions == b.extensions


_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="#"),
    max_size=12,
)
_segment = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/?#"),
    min_size=1,
    max_size=10,
)
_target = st.builds(
    lambda lead, parts, query: ("/" if lead else "") + "/".join(parts) + query,
    st.booleans(),
    st.lists(_segment, min_size=1, max_size=4),
    st.one_of(
        st.just(""),
        st.builds(
            lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs),
            st.lists(st.tuples(_segment, _text), min_size=1, max_size=3),
        ),
    ),
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_header_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABC", min_size=1, max_size=10)
_header_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
_headers = st.dictionaries(
    st.one_of(_header_name, st.sampled_from(["Accept", "user-agent", "Authorization"])),
    _header_value.map(str.strip),
    max_size=4,
)


@given(
    base=st.sampled_from(
        ["https://dsp.example", "https://dsp.example/api/v2", "http://127.0.0.1:8080/x/"]
    ),
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    target=st.one_of(_target, st.builds(lambda t: "https://other.example/" + t, _target)),
    body=st.one_of(st.none(), _json),
    headers=_headers,
)
def test_the_short_way_sends_what_client_request_sends(
    base: str, method: str, target: str, body: Any, headers: dict[str, str]
) -> None:
    provider, plain, short, long = _clients(base)
    with provider, plain:
        try:
            expected = plain.request(method, target, json=body, headers=headers)
        except httpx.InvalidURL as exc:
            # A target httpx refuses is refused the short way too, before anything is sent.
            with pytest.raises(httpx.InvalidURL, match=re.escape(str(exc))):
                provider.send_json(method, target, json=body, headers=headers)
            assert short == long == []
            return
        answer = provider.send_json(method, target, json=body, headers=headers)
    assert len(short) == len(long) == 1
    _same(short[0], long[0])
    assert answer.status_code == expected.status_code
    assert answer.headers.multi_items() == expected.headers.multi_items()
    assert answer.content == expected.content
    assert answer.json() == json.loads(expected.content)
    assert answer.request is short[0]
    assert answer.is_closed


def test_request_hooks_run_before_anything_is_sent() -> None:
    class Refused(Exception):
        pass

    def refuse(request: httpx.Request) -> None:
        raise Refused(request.url.path)

    provider, _, short, _ = _clients("https://dsp.example", event_hooks={"request": [refuse]})
    with provider, pytest.raises(Refused, match="/v1/campaigns"):
        provider.send_json("POST", "/v1/campaigns", json={"a": 1})
    assert short == []


def test_cookies_a_provider_sets_are_sent_back_as_httpx_sends_them() -> None:
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        return httpx.Response(200, json={}, headers={"Set-Cookie": "lb=node-2; Path=/"})

    provider = ProviderClient(
        base_url="https://dsp.example", transport=httpx.MockTransport(handler)
    )
    with provider:
        provider.send_json("GET", "/v1/a")
        provider.send_json("GET", "/v1/b")
    assert sent == [None, "lb=node-2"]


def test_a_closed_client_refuses_as_httpx_does() -> None:
    provider, _, short, _ = _clients("https://dsp.example")
    provider.close()
    with pytest.raises(RuntimeError, match="closed"):
        provider.send_json("GET", "/v1/a")
    assert short == []


def test_transport_errors_are_httpx_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    provider = ProviderClient(
        base_url="https://dsp.example", transport=httpx.MockTransport(handler)
    )
    with provider, pytest.raises(httpx.ReadTimeout):
        provider.send_json("POST", "/v1/campaigns", json={})


@given(
    targets=st.lists(
        st.one_of(_target, st.sampled_from(["v1/campaigns", "/v1/status?ids=1"])),
        min_size=1,
        max_size=8,
    ),
    new_base=st.sampled_from(["https://dsp.example/v3/", "http://127.0.0.1:9/"]),
)
def test_targets_sent_again_and_after_a_new_base_url_send_what_client_request_sends(
    targets: list[str], new_base: str
) -> None:
    """The merged URL a client keeps per target is the one ``Client.request`` builds, also
    once the base URL changed."""
    provider, plain, short, long = _clients("https://dsp.example/api/")
    with provider, plain:
        for base in (None, new_base):
            if base is not None:
                provider.base_url = plain.base_url = base
            for target in [*targets, *targets]:
                try:
                    plain.request("GET", target)
                except httpx.InvalidURL:
                    with pytest.raises(httpx.InvalidURL):
                        provider.send_json("GET", target)
                    continue
                provider.send_json("GET", target)
    assert len(short) == len(long)
    for a, b in zip(short, long, strict=True):
        _same(a, b)
