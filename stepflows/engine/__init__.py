"""The replay engine: invocation, memo, step planning, errors, limits.

Tasks call :func:`stepflows.engine.runner.execute_run` and
:func:`stepflows.engine.runner.execute_step_task`; nothing else here is public.
This package imports nothing at import time, so leaf modules below it
(``stepflows.serialization``, ``stepflows.store``) never pull the engine in.
"""
