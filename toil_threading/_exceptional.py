"""ExceptionalThread, imported on first use: threading costs milliseconds to import."""

import sys
import threading
from types import TracebackType
from typing import Any


class ExceptionalThread(threading.Thread):
    """A thread whose join() re-raises what run() raised.

    The exception is raised by the first join() that finds the thread finished; later
    joins return normally, and a join() that times out raises nothing.  Subclasses
    override tryRun() instead of run().

    >>> def divide():
    ...     return 1 // 0
    >>> thread = ExceptionalThread(target=divide)
    >>> thread.start()
    >>> thread.join()
    Traceback (most recent call last):
    ...
    ZeroDivisionError: integer division or modulo by zero
    >>> thread.join()
    >>> class Failing(ExceptionalThread):
    ...     def tryRun(self):
    ...         raise KeyError("missing")
    >>> thread = Failing()
    >>> thread.start()
    >>> thread.join()
    Traceback (most recent call last):
    ...
    KeyError: 'missing'
    """

    exc_info: tuple[type[BaseException], BaseException, TracebackType] | None = None

    def run(self) -> None:
        try:
            self.tryRun()
        except BaseException:
            self.exc_info = sys.exc_info()  # type: ignore[assignment]
            raise

    def tryRun(self) -> None:
        super().run()

    def join(self, *args: Any, **kwargs: Any) -> None:
        super().join(*args, **kwargs)
        if not self.is_alive() and self.exc_info is not None:
            _, error, traceback = self.exc_info
            self.exc_info = None
            raise error.with_traceback(traceback)


ExceptionalThread.__module__ = "toil_threading"  # where users import and pickle it from
