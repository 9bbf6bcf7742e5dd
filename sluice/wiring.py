"""Builds the running pieces from settings: store, providers, catalog, API."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from sluice.api.app import create_app
from sluice.catalog import Catalog, ProviderInfo
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository


@dataclass
class Runtime:
    """The long-lived objects of one Sluice process."""

    settings: Settings
    repo: TaskRepository
    catalog: Catalog


def build_catalog(settings: Settings) -> Catalog:
    """The providers the API accepts tasks for."""
    providers = {
        name: ProviderInfo(frozenset(raw.get("kinds", {})), "poll" in raw)
        for name, raw in settings.providers.items()
    }
    if not providers:
        providers = {settings.default_provider: ProviderInfo(frozenset(), True)}
    return Catalog(providers, settings.default_provider)


def build_runtime(settings: Settings) -> Runtime:
    """Open the store (migrating it to head) and load the providers."""
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    return Runtime(settings=settings, repo=TaskRepository(engine), catalog=build_catalog(settings))


def build_api(runtime: Runtime) -> FastAPI:
    return create_app(runtime.settings, runtime.repo, runtime.catalog)
