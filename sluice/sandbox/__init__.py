"""The sandbox DSP: a simulated third-party API that Sluice is run and judged against.

It imitates real demand-side platforms (hierarchies, asynchronous processing, rate limits
refused in seven styles with costs, daily quotas, hidden changing limits and spacing
judged to the millisecond, faults, expiring tokens) over real HTTP, and reports the
truth of what it saw at ``GET /_sandbox/stats``, ``/_sandbox/arrivals`` and
``/_sandbox/timeline``. It shares no code with Sluice's engine, limiter or store, so it
can judge them.

Modules, one concept each:

* :mod:`config` and :mod:`profiles`: what to imitate.
* :mod:`limiter` over :mod:`limit`: admission; the kinds of limit are :mod:`sliding`,
  :mod:`bucket` and :mod:`fixed`, with :mod:`schedule` for limits that change.
* :mod:`throttle` and :mod:`reveal`: how refusals and limit states are told.
* :mod:`entities` and :mod:`validation`: objects, hierarchy, processing.
* :mod:`faults`, :mod:`auth`, :mod:`stats`, :mod:`arrivals`: the rest of a call's life.
* :mod:`clock`: the sandbox's time, which tests may move forward.
* :mod:`core`: the order of checks; :mod:`app`: the HTTP edge; :mod:`errors`: its own
  error tree, each error the answer it becomes.
* :mod:`server` (background thread) and :mod:`cli` (foreground) run it.
"""
