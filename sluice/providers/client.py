"""The HTTP client providers send with: httpx's ``Client``, their calls taken the short way.

Every call a provider makes has one shape: a method, a target relative to the provider's
base URL, a JSON body or none, and headers. httpx's ``Client.request`` sends that through
layers made for the general case: an auth flow, a redirect loop, a cookie jar read and
written on every answer, a log record per request, a wrapper around the answer's body.
When no rate limit holds Sluice back those layers are a fifth of a send thread's work
(docs/scaling.md, "Efficiency"), and the threads take turns at one interpreter lock.

:meth:`ProviderClient.send_json` builds the very request ``Client.request`` would (the URL
merged with the base URL as httpx merges it, the client's headers under the call's, the
client's timeout), runs the client's request hooks (the send check), hands it to the
client's transport and reads the answer. The transport is the same, so what is gated,
metered and raised (httpx's exception types) is the same. Whatever the short way does not
cover goes through ``Client.request``: a closed client, cookies the provider has set (they
are sent back, as httpx would), default query parameters, an auth flow, followed
redirects, response hooks.
``tests/unit/providers/test_provider_client.py`` checks that both ways send the same request.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from typing import Any

import httpx

URLS_KEPT = 512
"""Targets whose merged URL a client keeps (then it starts again): parsing the target and
merging it with the base URL was a tenth of a send thread's work with no rate limit
(``httpx.URL`` checks whether a host is an IP address on every parse; docs/scaling.md)."""


class ProviderClient(httpx.Client):
    """A keep-alive ``httpx.Client`` with a short way for a provider's calls."""

    def __init__(self, *, transport: httpx.BaseTransport, **options: Any) -> None:
        super().__init__(transport=transport, **options)
        self._sender = transport
        self._urls: dict[str, tuple[httpx.URL, httpx.URL]] = {}
        """Each target's merged URL, with the base URL it was merged with."""

    def _url(self, target: str) -> httpx.URL:
        """``target`` merged with the base URL as httpx merges it (kept: see
        :data:`URLS_KEPT`; an ``httpx.URL`` is never changed, only copied)."""
        base = self.base_url
        kept = self._urls.get(target)
        if kept is not None and kept[0] is base:
            return kept[1]
        url = httpx.URL(target)
        if url.is_relative_url:
            url = base.copy_with(raw_path=base.raw_path + url.raw_path.lstrip(b"/"))
        if len(self._urls) >= URLS_KEPT:
            self._urls = {}  # many targets (ids in them): start again, keep the common ones
        self._urls[target] = (base, url)
        return url

    def send_json(
        self,
        method: str,
        target: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """What ``self.request(method, target, json=json, headers=headers)`` answers.

        Raises:
            httpx.HTTPError: as ``Client.request`` (the transport raises them).
        """
        if (
            self.is_closed
            or self.cookies
            or self.params
            or self.auth is not None
            or self.follow_redirects
            or self.event_hooks["response"]
        ):
            return self.request(method, target, json=json, headers=headers)
        url = self._url(target)
        merged = httpx.Headers(self.headers)
        if headers:
            merged.update(headers)
        request = httpx.Request(
            method, url, json=json, headers=merged, extensions={"timeout": self.timeout.as_dict()}
        )
        for hook in self.event_hooks["request"]:
            hook(request)
        started = time.perf_counter()
        response = self._sender.handle_request(request)
        response.request = request
        try:
            response.read()
        finally:
            response.close()
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        if "set-cookie" in response.headers:
            self.cookies.extract_cookies(response)
        return response
