"""A process whose wall clock is off by ``SLUICE_TEST_CLOCK_SKEW_S`` seconds, as on a host
whose clock is wrong: ``time.time`` and ``datetime.now``/``utcnow`` read that much ahead
(or behind, when negative); the monotonic clock is left alone, as it is on such a host.

Python imports ``sitecustomize`` at start-up from the first folder of ``PYTHONPATH`` that
holds one: :func:`harness.cluster.skewed_clock_env` puts this folder first for one child
process. It is loaded before any other module, so every later ``from datetime import
datetime`` (Celery's, Sluice's) gets the skewed class. (libfaketime would be the usual
tool, but it breaks Python's ``time.sleep`` when its offset is negative.)
"""

import datetime as _datetime
import os
import time as _time

_OFFSET_S = float(os.environ.get("SLUICE_TEST_CLOCK_SKEW_S", "0") or 0)

if _OFFSET_S:
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _time.time = lambda: _real_time() + _OFFSET_S
    _time.time_ns = lambda: _real_time_ns() + int(_OFFSET_S * 1e9)
    _base = _datetime.datetime
    _delta = _datetime.timedelta(seconds=_OFFSET_S)

    class datetime(_base):  # stands in for datetime.datetime
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return _base.now(tz) + _delta

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def]
            return _base.utcnow() + _delta

        @classmethod
        def today(cls):  # type: ignore[no-untyped-def]
            return _base.today() + _delta

    datetime.__module__ = "datetime"
    datetime.__qualname__ = "datetime"
    _datetime.datetime = datetime  # type: ignore[misc]
