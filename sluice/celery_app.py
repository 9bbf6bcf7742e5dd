"""``celery -A sluice.celery_app worker --beat`` keeps working: the app lives in drivers/."""

from sluice.drivers.celery_app import app, celery_config, pump

__all__ = ["app", "celery_config", "pump"]
