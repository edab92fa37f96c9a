"""The replay engine: invocation, memo, step planning, recording, errors.

Tasks call :func:`execute_run` and :func:`execute_step_task`; nothing else
here is public.
"""

from .runner import execute_run, execute_step_task

__all__ = ["execute_run", "execute_step_task"]
