"""The sandbox DSP: a simulated third-party API that Sluice is run and judged against.

It imitates real demand-side platforms (hierarchies, asynchronous processing, rate limits
in four styles, faults, expiring tokens) over real HTTP, and reports the truth of what it
saw at ``GET /_sandbox/stats``. It shares no code with Sluice's engine, so it can judge it.

Modules, one concept each:

* :mod:`config` and :mod:`profiles`: what to imitate.
* :mod:`limiter` and :mod:`throttle`: admission and refusal.
* :mod:`entities` and :mod:`validation`: objects, hierarchy, processing.
* :mod:`faults`, :mod:`auth`, :mod:`stats`: the rest of a call's life.
* :mod:`core`: the order of checks; :mod:`app`: the HTTP edge.
* :mod:`server` (background thread) and :mod:`cli` (foreground) run it.
"""
