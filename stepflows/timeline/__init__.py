"""Run timelines, drawn server-side as SVG (no JavaScript, no front-end build).

One lane per run and per step, on a shared time axis:

- the run's lane: **queued** (an outline, from when it was created, i.e. its
  event sent, to when a worker picked it up), then its span, coloured by status;
- a step's lane: **waiting** (a dotted outline, from when a parallel step was
  handed to Celery to when a worker started it), then **one bar per attempt**
  (green done, red failed and marked with a cross, blue still running), with
  the **backoff** between two attempts drawn as a dashed line labelled with its
  delay, and a retry still to come labelled with its time;
- durable waits (``step.sleep``, ``step.wait_for_event``, ``step.invoke``) have
  bars of their own colour, dashed while pending, with their wake-up time;
- **markers**: a vertical line where a person (or code, or the command line)
  retried, reran, cancelled, replayed or forked the run, titled with who, when
  and why.

No bar is narrower than ``MIN_BAR`` pixels, so a 1 ms step in a 1 s run stays
visible; a lane whose bars are that narrow gets its running time written beside
them. Steps of one ``step.parallel`` call sit in consecutive lanes on a shaded
band. Several runs can share one axis (the compare page): either on the wall
clock (``relative=False``) or each from its own creation (``relative=True``).

Every text that comes from users (step ids, error messages, workflow ids,
reasons) is escaped; the result is a ``SafeString`` ready for a template.
"""

from .draw import (
    ATTEMPT_FAILED,
    ATTEMPT_OK,
    ATTEMPT_OPEN,
    DUE_STRETCH,
    LABEL_WIDTH,
    MIN_BAR,
    ROW,
    RUN_FILL,
    WAIT_CLASS,
    WAIT_FILL,
    WAIT_STROKE,
    WIDTH,
    render,
)
from .lanes import (
    MAX_STEP_LANES,
    WAIT_KINDS,
    WAIT_NAME,
    AttemptBar,
    Lane,
    Marker,
    Track,
    attempts_of,
    describe_wait,
    format_seconds,
    local_time,
    markers_of,
    track_for_run,
    wait_lane,
)

__all__ = [
    "ATTEMPT_FAILED",
    "ATTEMPT_OK",
    "ATTEMPT_OPEN",
    "DUE_STRETCH",
    "LABEL_WIDTH",
    "MAX_STEP_LANES",
    "MIN_BAR",
    "ROW",
    "RUN_FILL",
    "WAIT_CLASS",
    "WAIT_FILL",
    "WAIT_KINDS",
    "WAIT_NAME",
    "WAIT_STROKE",
    "WIDTH",
    "AttemptBar",
    "Lane",
    "Marker",
    "Track",
    "attempts_of",
    "describe_wait",
    "format_seconds",
    "local_time",
    "markers_of",
    "render",
    "track_for_run",
    "wait_lane",
]
