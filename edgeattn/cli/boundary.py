"""The CLI's error boundary: what reaches the user when a command fails.

- An `EdgeAttnError` (what the user asked for cannot be done) prints its message on one line.
- Faults of the environment or of a file the user gave (`OSError`: missing, unreadable or full disk;
  text that is not UTF-8; a file that does not deserialize; memory exhausted) print one line naming the
  file where it is known and what to do.
- click's usage errors (unknown option, bad value) print one line too.
- Ctrl-C and SIGTERM end the command cleanly: staged outputs are removed on the way out.
- Anything else is a bug in edgeattn: its traceback is shown, with a request to report it.

All of these exit with code 1; a clean run exits 0.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
import traceback
from typing import Iterator, NoReturn

import click

from edgeattn.errors import EdgeAttnError

MAX_MESSAGE_CHARS = 500

_ERRNO_ADVICE = {
    errno.ENOSPC: "free some disk space and run again",
    errno.EFBIG: "the file system (or a size limit) refuses a file this large; free space or write elsewhere",
    errno.EDQUOT: "free some disk space and run again",
    errno.EACCES: "check the permissions of the file and its folder",
    errno.EPERM: "check the permissions of the file and its folder",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "the path is a folder; give a file",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and run again",
}


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line (whitespace runs joined), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def fail(message: str) -> NoReturn:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(1)


def describe_os_error(err: OSError) -> str:
    where = err.filename if err.filename is not None else None
    what = err.strerror or type(err).__name__
    if err.errno is None and err.args:
        what = str(err.args[0])
    advice = _ERRNO_ADVICE.get(err.errno or -1, "check the path and the disk")
    if where is None:
        return f"{what} while reading or writing a file; {advice}"
    target = f"{where!s}" + (f" -> {err.filename2!s}" if err.filename2 is not None else "")
    return f"cannot use {target}: {what}; {advice}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised by edgeattn's own handler.

    A subclass on purpose: when a bare KeyboardInterrupt passes through code run from a string (dataclasses,
    torch.fx and torch.export all `exec` generated source), CPython 3.11 remembers it and, under `python -m`,
    ends the process with SIGINT after the boundary has already printed its line and chosen exit code 1.
    """


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def terminate_like_interrupt() -> None:
    """Ctrl-C and SIGTERM raise `Interrupted`, so cleanup code runs before the process ends with code 1.

    A signal that was set to be ignored (nohup, a shell's background job) stays ignored.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave the default
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, _raise_interrupted)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    try:
        yield
    except EdgeAttnError as err:
        fail(str(err))
    except (KeyboardInterrupt, click.exceptions.Abort):
        fail("interrupted; nothing was written (partial outputs were removed)")
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.UsageError as err:
        hint = f"; see `{err.ctx.command_path} --help`" if err.ctx is not None else ""
        fail(f"{err.format_message()}{hint}")
    except click.ClickException as err:
        fail(err.format_message())
    except OSError as err:
        fail(describe_os_error(err))
    except UnicodeError as err:
        fail(f"text that is not valid UTF-8 ({err}); give UTF-8 text files and arguments")
    except MemoryError:
        fail("out of memory; the input is too large for this machine (try smaller shapes or fewer threads)")
    except RecursionError:
        fail("the input nests too deeply to be processed (a graph or file far deeper than any real model)")
    except Exception:  # noqa: BLE001 - a bug: show it, ask for a report
        traceback.print_exc()
        click.echo("error: an unexpected error inside edgeattn (a bug); please report it with the command "
                   "and the traceback above", err=True)
        sys.exit(1)
