"""What every command shares: settings, the service, consoles, and turning errors into exits."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from dreamforge.errors import ConfigError, DreamForgeError, InvalidRequest, JobNotFound
from dreamforge.settings import Settings

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "DF_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
        fail(f"invalid setting {name}: {err['msg']}", EXIT_USAGE)


def handle_errors(fn: F) -> F:
    """Domain errors become one line on stderr and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (InvalidRequest, ConfigError) as exc:
            fail(exc.message, EXIT_USAGE)
        except JobNotFound as exc:
            fail(exc.message, EXIT_FAILED)
        except DreamForgeError as exc:
            fail(exc.message, EXIT_FAILED)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("DF_DEBUG"):
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (set DF_DEBUG=1 for the traceback)")

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
