"""What every command shares: settings, the service, consoles, and turning errors into exits.

Only typer and rich at module level: ``df --help`` must not pay for pydantic, SQLAlchemy, Huey or
Redis. Commands import the service inside their bodies.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from dreamforge.text import inert

if TYPE_CHECKING:
    from rich.console import Console

    from dreamforge.client import RemoteService
    from dreamforge.service import JobService
    from dreamforge.settings import Settings


class LazyConsole:
    """A rich Console made on first use: `df --help` never prints through rich, and importing
    rich's console and text modules costs it a third of its start-up."""

    def __init__(self, **options: Any):
        self._options = options
        self._console: Console | None = None

    def unwrap(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unwrap(), name)


def unwrap(console: Any) -> Console:
    """The rich Console behind a LazyConsole (or a Console a test put in its place)."""
    return console.unwrap() if isinstance(console, LazyConsole) else console


# soft_wrap: piped output (and long lines on a terminal) is never broken mid-sentence by rich;
# the terminal wraps what it must. Tables still fit the terminal's width.
console: Any = LazyConsole(soft_wrap=True, highlight=False)
err_console: Any = LazyConsole(stderr=True, soft_wrap=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
# Help as plain text: typer's rich panels label every flag `<bool>`, as if it took a value.
TYPER_OPTIONS: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """One line on stderr, then exit. ``message`` may carry outside text: it is shown inert."""
    from rich.text import Text

    err_console.print(Text.assemble(("error:", "red"), " ", inert(message)))
    raise typer.Exit(code)


def note(message: str) -> None:
    """A progress remark on stderr, so stdout stays for results."""
    from rich.text import Text

    err_console.print(Text(inert(message)))


def load_settings() -> Settings:
    from pydantic import ValidationError

    from dreamforge.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "DF_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
        fail(f"invalid setting {name}: {err['msg']}", EXIT_USAGE)


# `df --api URL`, for this invocation: wins over DF_API_URL.
api_option: str | None = None


def api_url(settings: Settings) -> str | None:
    """The `df serve` this CLI is a client of (--api, else DF_API_URL); None: the local store."""
    return api_option or settings.api_url or None


def open_service(settings: Settings | None = None) -> JobService | RemoteService:
    """The job service: this machine's job store, or the `df serve` at --api / DF_API_URL (the
    same verbs over HTTP)."""
    settings = settings or load_settings()
    if url := api_url(settings):
        from dreamforge.client import RemoteService

        return RemoteService.from_settings(settings, url)
    return open_local_service("", settings)


def open_local_service(command: str, settings: Settings | None = None) -> JobService:
    """This machine's job service, for what only it can do (run jobs, prune, migrate)."""
    from dreamforge.service import JobService

    settings = settings or load_settings()
    require_local(command, settings)
    return JobService.from_settings(settings)


def require_local(command: str, settings: Settings) -> None:
    """One line and exit 2 when a remote server is set: ``command`` needs this machine's store."""
    if command and (url := api_url(settings)):
        from dreamforge.settings import mask_url

        fail(f"{command} needs a local job store, and this CLI is a client of {mask_url(url)} "
             "(--api / DF_API_URL): run it on the server's host, or unset DF_API_URL", EXIT_USAGE)


def handle_errors(fn: F) -> F:
    """Domain errors become one line on stderr and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dreamforge.errors import ConfigError, DreamForgeError, InvalidRequest, JobStateError

        try:
            return fn(*args, **kwargs)
        except (InvalidRequest, ConfigError) as exc:
            fail(exc.message, EXIT_USAGE)
        except JobStateError as exc:
            # The code first (job_not_cancelable, ...): what a script tells cases apart by.
            fail(f"{exc.code}: {exc.message}", EXIT_FAILED)
        except DreamForgeError as exc:
            fail(exc.message, EXIT_FAILED)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("DF_DEBUG"):
                raise
            fail(f"internal error: {type(exc).__name__}: {inert(exc, 300)} "
                 "(set DF_DEBUG=1 for the traceback)")

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    # ensure_ascii: a control character stays an escape (\u001b) in the JSON text.
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=True) + "\n")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Huey's two lines a task ("Executing …", "… executed in …") name Huey's own task id, which
    # nothing else records; the job's own lines (started, succeeded, failed) carry the job id.
    # (They were 6% of a py-spy profile of `df worker` on 1-step jobs, too little to show in its
    # CPU per job.) Huey's warnings stay, and so do its consumer's lines (start-up, signals, shutdown).
    logging.getLogger("huey").setLevel(max(level, logging.WARNING))
    logging.getLogger("huey.consumer").setLevel(level)
