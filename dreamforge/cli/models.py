"""``df models``: the checkpoints jobs can name: list, show, add (a file, a folder or a URL),
remove, verify, default, scan."""


from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dreamforge.cli import render
from dreamforge.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    TYPER_OPTIONS,
    console,
    err_console,
    fail,
    handle_errors,
    note,
    open_local_service,
    print_json,
)

if TYPE_CHECKING:
    from dreamforge.registry import ModelRecord

app = typer.Typer(help="The SDXL checkpoints and LoRAs jobs can name: list, add (file, folder or URL), "
                       "remove, verify, default, scan.", **TYPER_OPTIONS)


def _json(record: "ModelRecord") -> dict[str, Any]:
    from dreamforge.registry.views import model_object

    return {**model_object(record), "location": str(record.location)}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@contextmanager
def _bar(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A byte progress bar on stderr (on a terminal; silent elsewhere): yields ``update(done, total)``."""
    if not err_console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=err_console) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def _hash_bar(description: str, total: int) -> Any:
    """``_bar`` for hashing: fed byte counts as they are read."""
    done = 0

    @contextmanager
    def bar() -> Iterator[Callable[[int], None]]:
        with _bar(description) as update:
            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                update(done, total)
            yield on_bytes

    return bar()


@app.command("list")
@handle_errors
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help='Print {"object": "list", "data": [...]}, as '
                                                         "GET /v1/models does (plus each model's location).")] = False,
) -> None:
    """Every registered model; while none is the default, the model the settings name is listed
    first as `default`."""
    registry = open_local_service("df models").models
    records = registry.all()
    if not any(r.is_default for r in records):
        records.insert(0, registry.settings_default())
    if as_json:
        print_json({"object": "list", "data": [_json(r) for r in records]})
        return
    if not console.is_terminal:
        for r in records:
            render.line(r.name, "default" if r.is_default else "", r.kind, r.format, r.size_bytes or "-",
                        r.sha256 or "-", r.location)
        return
    from rich.table import Table

    table = Table("name", "default", "kind", "format", "size", "sha256", "added", "last used", "location")
    for r in records:
        table.add_row(render.cell(r.name), "*" if r.is_default else "", r.kind, r.format, _size(r.size_bytes),
                      render.cell((r.sha256 or "-")[:12]), _when(r.added_at), _when(r.last_used_at),
                      render.cell(r.location if r.registered else f"{r.location} ({r.chosen_by})"))
    console.print(table)


@app.command("show")
@handle_errors
def show(
    name: Annotated[str, typer.Argument(help="A registered name, or `default`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the model as GET /v1/models/{name} does.")] = False,
) -> None:
    """One model: what it is, where it lies, its hash, size and times."""
    from rich.text import Text

    record = open_local_service("df models").models.find(name)
    if as_json:
        print_json(_json(record))
        return
    lines: list[tuple[str, Any]] = [
        ("name", record.name), ("default", "yes" if record.is_default else "no"), ("kind", record.kind),
        ("format", record.format), ("looks like", record.details.get("looks_like")),
        ("source", record.source), ("location", record.location),
        ("sha256", record.sha256), ("size", f"{_size(record.size_bytes)} ({record.size_bytes} bytes)"
                                    if record.size_bytes is not None else None),
        ("downloaded", "yes" if record.downloaded else "no"),
        ("added", record.added_at.isoformat() if record.added_at else None),
        ("last used", record.last_used_at.isoformat() if record.last_used_at else None),
        ("verified", record.verified_at.isoformat() if record.verified_at else None)]
    if not record.registered:
        lines.append(("chosen by", f"{record.chosen_by} (not registered: `df models add` it to hash it)"))
    for label, value in lines:
        console.print(Text.assemble(f"{label + ':':<12}", render.cell(value)))


@app.command("add")
@handle_errors
def add(
    source: Annotated[str, typer.Argument(help="A .safetensors file, a Diffusers folder, or an https:// URL "
                                               "of a .safetensors file.")],
    name: Annotated[str | None, typer.Option(help="The registry name (default: the file's name without "
                                                  ".safetensors).")] = None,
    sha256: Annotated[str | None, typer.Option(help="The file's sha256, checked before it is registered.")] = None,
    make_default: Annotated[bool, typer.Option("--default", help="Make it the default model.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the registered model as JSON.")] = False,
) -> None:
    """Register an SDXL base checkpoint or an SDXL LoRA (kohya or PEFT/Diffusers keys) after
    checking what it is and that it is whole. A URL is downloaded into
    the models root (DF_MODELS_ROOT, else <DF_DATA_DIR>/models): resumed after an interruption,
    checked against --sha256, and renamed into place only when complete; http:// needs
    DF_MODELS_ALLOW_HTTP=1, and DF_MODELS_DOWNLOAD_TOKEN is sent as a bearer token (https, to the
    hosts in DF_MODELS_TOKEN_HOSTS only)."""
    from rich.text import Text

    from dreamforge.errors import InvalidRequest

    if sha256 is not None and not (len(sha256) == 64 and all(c in "0123456789abcdefABCDEF" for c in sha256)):
        raise InvalidRequest("--sha256 wants 64 hexadecimal digits")
    registry = open_local_service("df models").models
    if source.startswith(("https://", "http://")):
        try:
            with _bar(f"downloading {name or 'model'}") as update:
                record = registry.add_url(source, name, sha256, make_default=make_default, progress=update)
        except KeyboardInterrupt:
            note("Interrupted: what arrived is kept in the models folder; the same command resumes.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    else:
        path = Path(source).expanduser()
        total = _tree_size(path)
        with _hash_bar(f"hashing {path.name}", total) as on_bytes:
            record = registry.add_local(path, name, sha256, make_default=make_default, on_bytes=on_bytes)
    if as_json:
        print_json(_json(record))
        return
    console.print(Text.assemble("registered ", render.cell(record.name), f" ({record.format}, "
                                f"{_size(record.size_bytes)}, sha256 {record.sha256})",
                                " as the default" if record.is_default else ""))


def _tree_size(path: Path) -> int:
    from dreamforge.registry.identify import size_of

    try:
        return size_of(path) if path.exists() else 0
    except OSError:
        return 0


@app.command("remove")
@handle_errors
def remove(
    name: Annotated[str, typer.Argument(help="A registered name.")],
    keep_file: Annotated[bool, typer.Option("--keep-file", help="Keep a downloaded file on disk.")] = False,
) -> None:
    """Forget a model. Its file is deleted only when DreamForge downloaded it into the models root
    (unless --keep-file); a file or folder added from a local path is never touched."""
    from rich.text import Text

    record, deleted = open_local_service("df models").models.remove(name, keep_file=keep_file)
    where = f"; deleted {deleted}" if deleted else f"; {record.location} is left in place"
    console.print(Text.assemble("removed ", render.cell(record.name), render.cell(where)))


@app.command("verify")
@handle_errors
def verify(
    names: Annotated[list[str] | None, typer.Argument(help="Registered names; every model when none.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Hash each model's file again and compare it with the sha256 recorded when it was added;
    check its header too. Exit 1 when any differs or is missing."""
    from rich.text import Text

    registry = open_local_service("df models").models
    chosen = names or [r.name for r in registry.all()]
    if not chosen:
        note("no models are registered (df models add, df models scan)")
    results = []
    for name in chosen:
        record = registry.get(name)
        with _hash_bar(f"verifying {name}", record.size_bytes or 0) as on_bytes:
            results.append(registry.verify(name, on_bytes))
    if as_json:
        print_json([vars(r) for r in results])
    else:
        for r in results:
            mark = Text("ok", style="green") if r.ok else Text("FAILED", style="red")
            console.print(Text.assemble(mark, " ", render.cell(r.name), " ",
                                        render.cell(r.reason or f"sha256 {r.actual}")))
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_FAILED)


@app.command("default")
@handle_errors
def default(
    name: Annotated[str | None, typer.Argument(help="The model to make the default; none: show it.")] = None,
    unset: Annotated[bool, typer.Option("--unset", help="No registered default: the settings' model "
                                                        "(DF_GENERATE_MODEL_PATH, ...) is the default again.")] = False,
) -> None:
    """Show or set the default model: the one a job without `model` uses."""
    from rich.text import Text

    registry = open_local_service("df models").models
    if unset and name:
        fail("give a name or --unset, not both", 2)
    record = registry.set_default(None) if unset else registry.set_default(name) if name else registry.default()
    how = "" if record.registered else f" (not registered; chosen by {record.chosen_by})"
    console.print(Text.assemble("default: ", render.cell(record.name), " ", render.cell(record.location),
                                render.cell(how)))


@app.command("scan")
@handle_errors
def scan(
    as_json: Annotated[bool, typer.Option("--json", help="Print added, known and refused as JSON.")] = False,
) -> None:
    """Register the SDXL checkpoints already under the models root (.safetensors files and
    Diffusers folders, four levels deep), each named after its file; say why others are refused."""
    from rich.text import Text

    registry = open_local_service("df models").models
    if not registry.root.is_dir():
        fail(f"the models root {registry.root} does not exist (DF_MODELS_ROOT)")
    with _bar(f"hashing under {registry.root}") as update:
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            update(done, None)

        report = registry.scan(on_bytes)
    if as_json:
        print_json({"added": [_json(r) for r in report.added], "known": report.known, "refused": report.refused})
        return
    for r in report.added:
        console.print(Text.assemble("added   ", render.cell(r.name), " ", render.cell(r.path)))
    for known in report.known:
        console.print(Text.assemble("known   ", render.cell(known)))
    for refused in report.refused:
        console.print(Text.assemble("refused ", render.cell(refused["path"]), ": ", render.cell(refused["reason"])))
    if not (report.added or report.known or report.refused):
        note(f"no .safetensors files or Diffusers folders under {registry.root}")
