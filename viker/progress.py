"""Progress bars: tqdm's, redrawn live on a terminal or in a notebook, and a line now and then in a log.

Written to a file or a pipe (a cluster job's log, ``viker demo > demo.log``), a bar redrawn several times a
second leaves a line each time: a minute of training would fill hundreds. There a bar writes a line at most
every ``LOG_INTERVAL`` seconds, and a bar nested inside another is left out (a log cannot redraw it in place,
so it would only add a line at its start and a blank one at its end; the outer bar still counts the work).
tqdm's own environment variables still apply: ``TQDM_DISABLE=1`` hides every bar, ``TQDM_MININTERVAL``
sets the seconds between two lines.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as _auto  # tqdm.auto's choice: a notebook's widget, or the terminal's bar
from tqdm.std import tqdm as _terminal

LOG_INTERVAL = 30.0  # seconds between two lines of a bar written to a log


def live(stream=None) -> bool:
    """Whether a bar on ``stream`` (standard error by default) is seen as it is redrawn: a notebook's widget
    or a terminal, not a file or a pipe."""
    if _auto is not _terminal:
        return True
    isatty = getattr(stream or sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable=None, *, inner: bool = False, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar over ``iterable`` (or of ``total`` steps). ``inner`` marks a bar nested inside another
    one's step: it is cleared when done, and left out of a log."""
    if not live(kwargs.get("file")):
        if "TQDM_MININTERVAL" not in os.environ:  # and no more often when tqdm's monitor thread steps in
            kwargs = {"mininterval": LOG_INTERVAL, "maxinterval": LOG_INTERVAL} | kwargs
        disable = disable or inner
    if disable:  # only then, so that TQDM_DISABLE is heard otherwise
        kwargs["disable"] = True
    return tqdm(iterable, leave=not inner, **kwargs)
