"""Every complete TOML example in docs/providers.md loads without a configuration error."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from sluice.providers.registry import load_providers
from sluice.settings import Settings

DOC = Path(__file__).resolve().parents[3] / "docs" / "providers.md"
BLOCKS = [
    block
    for block in re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    if not block.startswith("# fragment")
]


def test_the_document_has_complete_examples() -> None:
    """The reference keeps at least the prototype, TTD, Meta, Criteo, DV360 and sandbox examples."""
    text = "\n".join(BLOCKS)
    for name in ("thirdparty", "ttd", "meta", "criteo", "dv360", "xandr", "sandbox"):
        assert f"[providers.{name}]" in text


def _name(block: str) -> str:
    found = re.search(r"\[providers\.([\w-]+)", block)
    return found.group(1) if found else "block"


@pytest.mark.parametrize("block", BLOCKS, ids=_name)
def test_example_loads(block: str) -> None:
    """A documented example is a valid configuration (with its ${VAR}s set)."""
    data = tomllib.loads(block)
    environ = {name: "value-for-docs" for name in re.findall(r"\$\{([A-Za-z_]\w*)\}", block)}
    providers = data["providers"]
    default = data.get("sluice", {}).get("default_provider", next(iter(providers)))
    loaded = load_providers(
        Settings(providers=providers, default_provider=default), environ=environ
    )
    assert set(loaded) == set(providers)
