"""Progress bars: tqdm's, redrawn live on a terminal or in a notebook, and updated now and then in a log.

Written to a file or a pipe (a cluster job's log, ``viker demo > demo.log``), a bar redrawn several times a
second writes each time: a minute of training would write hundreds of updates. There a bar is updated at most
every ``LOG_INTERVAL`` seconds, and a bar nested inside another is left out (a log cannot redraw it in place,
so it would only add its start and a blank at its end; the outer bar still counts the work), and so are the
bars of the libraries viker calls (transformers' loading and writing of weights, a second each, and the Hub's
downloads). With no
standard error to write to (none, or closed), bars are off. tqdm's own environment variables still
apply: ``TQDM_DISABLE=1`` hides every bar, ``TQDM_MININTERVAL`` sets the seconds between two updates.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import Callable

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as _auto  # tqdm.auto's choice: a notebook's widget, or the terminal's bar
from tqdm.std import tqdm as _terminal

LOG_INTERVAL = 30.0  # seconds between two updates of a bar written to a log


def live(stream=None) -> bool:
    """Whether a bar on ``stream`` (standard error by default) is seen as it is redrawn: a notebook's (with
    or without its widgets) or a terminal, not a file or a pipe."""
    if _auto is not _terminal or "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream or sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _writable(stream) -> bool:
    """Whether there is a stream to write a bar to: none (Python started without standard error) or a
    closed one turns bars off."""
    return stream is not None and not getattr(stream, "closed", False)


def progress_bar(iterable=None, *, inner: bool = False, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar over ``iterable`` (or of ``total`` steps). ``inner`` marks a bar nested inside another
    one's step: it is cleared when done, and left out of a log."""
    if not live(kwargs.get("file")):
        try:
            interval = float(os.environ.get("TQDM_MININTERVAL", LOG_INTERVAL))
        except ValueError:
            interval = LOG_INTERVAL
        # and no more often when tqdm's monitor thread steps in (its maxinterval); the clock is read at every
        # update (miniters 1), so that a bar whose work slows down is still updated every interval, and its monitor
        # never refreshes it out of turn (a second line in the same second)
        kwargs = {"mininterval": interval, "maxinterval": max(interval, LOG_INTERVAL), "miniters": 1} | kwargs
        disable = disable or inner
    if disable or not _writable(kwargs.get("file") or sys.stderr):
        kwargs["disable"] = True  # only then, so that TQDM_DISABLE is heard otherwise
    return tqdm(iterable, leave=not inner, **kwargs)


def bars_as_asked(run: Callable) -> Callable:
    """``run``'s ``progress=False`` silences the bars of the libraries it calls too (transformers' loading and
    writing of weights, the Hub's downloads), not only viker's own; in a log (standard error no terminal or
    notebook) they are silenced too, while viker's own bars are updated now and then."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def quiet_or_not(*args, **kwargs):
        if signature.bind(*args, **kwargs).arguments.get("progress", True) and live():
            return run(*args, **kwargs)
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            return run(*args, **kwargs)
        finally:
            if shown:
                hf_logging.enable_progress_bar()

    return quiet_or_not
