"""Create bodies: shape errors answered at once, semantic errors found during processing."""

from __future__ import annotations

import pytest

from sluice.sandbox.errors import InvalidRequest
from sluice.sandbox.validation import (
    EXCLUDE_CAP,
    INCLUDE_CAP,
    FieldError,
    check_shape,
    is_ip_range,
    semantic_errors,
)


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.1",
        "10.0.0.0/8",
        "10.0.0.1/24",
        "1.1.1.1-1.1.1.9",
        "2001:db8::1",
        "2001:db8::/32",
        "2001:db8::1-2001:db8::ff",
        " 8.8.8.8 ",
    ],
)
def test_valid_ip_ranges_are_accepted(entry: str) -> None:
    """Addresses, CIDRs and a-b ranges of either IP version are valid entries."""
    assert is_ip_range(entry)


@pytest.mark.parametrize(
    "entry",
    [
        "192.168.1.256",
        "10.0.0.0/33",
        "1.1.1.9-1.1.1.1",
        "1.1.1.1-2001:db8::1",
        "",
        "abc",
        "1.2.3",
        "2001:db8::/129",
    ],
)
def test_invalid_ip_ranges_are_rejected(entry: str) -> None:
    """Out-of-range octets, bad prefixes, reversed or mixed-version ranges are invalid."""
    assert not is_ip_range(entry)


def test_semantic_errors_carry_field_paths_and_the_prototype_message() -> None:
    """A bad entry is reported as include[i] with 'Invalid IP range: <entry>'."""
    fields = {"include": ["10.0.0.1", "192.168.1.256"], "exclude": ["bad"], "budget": 0}
    assert semantic_errors(fields) == [
        FieldError("budget", "budget must be > 0, got 0"),
        FieldError("include[1]", "Invalid IP range: 192.168.1.256"),
        FieldError("exclude[0]", "Invalid IP range: bad"),
    ]


def test_list_caps_are_3500_include_and_10_exclude() -> None:
    """One entry over either cap is an error on the list itself; at the cap is fine."""
    at_cap = {"include": ["10.0.0.1"] * INCLUDE_CAP, "exclude": ["10.0.0.1"] * EXCLUDE_CAP}
    assert semantic_errors(at_cap) == []
    over = {"include": ["10.0.0.1"] * 3501, "exclude": ["10.0.0.1"] * 11}
    assert [e.field for e in semantic_errors(over)] == ["include", "exclude"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"advertiser_id": "adv-1"}, "name"),
        ({"name": "  ", "advertiser_id": "adv-1"}, "name"),
        ({"name": "c"}, "advertiser_id"),
        ({"name": "c", "advertiser_id": 1}, "advertiser_id"),
        ({"name": "c", "advertiser_id": "adv-1", "budget": "10"}, "budget"),
        ({"name": "c", "advertiser_id": "adv-1", "budget": True}, "budget"),
        ({"name": "c", "advertiser_id": "adv-1", "client_ref": 5}, "client_ref"),
    ],
)
def test_shape_errors_name_the_field(body: dict[str, object], field: str) -> None:
    """Missing or ill-typed fields are refused at once, naming the field."""
    with pytest.raises(InvalidRequest) as raised:
        check_shape(body, "advertiser_id", audience=False)
    assert raised.value.field == field


def test_audiences_need_type_ip_range_and_string_lists() -> None:
    """An audience must be of type ip_range with include/exclude lists of strings."""
    base = {"name": "a", "advertiser_id": "adv-1"}
    with pytest.raises(InvalidRequest, match="ip_range"):
        check_shape({**base, "type": "email"}, "advertiser_id", audience=True)
    with pytest.raises(InvalidRequest, match="'include' must be a list of strings"):
        check_shape({**base, "type": "ip_range", "include": [1]}, "advertiser_id", audience=True)
    assert check_shape({**base, "type": "ip_range"}, "advertiser_id", audience=True) == {
        **base,
        "type": "ip_range",
    }
