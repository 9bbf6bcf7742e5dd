"""Who drives the dispatcher loop, and the executor that sends.

Embedded: a thread of the ``sluice up`` process (:mod:`sluice.drivers.embedded`).
Distributed: bounded pumps in Celery worker processes (:mod:`sluice.drivers.pump`,
:mod:`sluice.drivers.celery_app`). Both hand granted work to the same
:class:`~sluice.drivers.executor.ThreadExecutor`. Nothing here imports the API or the sandbox.
"""
