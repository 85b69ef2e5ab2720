"""``df uploads``: images a job starts from, stored in this machine's artifact store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dreamforge.cli.common import TYPER_OPTIONS, console, handle_errors, open_local_service, print_json

app = typer.Typer(help="Input images for image-to-image and inpainting jobs.", **TYPER_OPTIONS)


@app.command("add")
@handle_errors
def add(
    path: Annotated[Path, typer.Argument(help="A PNG, JPEG or WebP file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the upload as the API describes it.")] = False,
) -> None:
    """Check an image and store it as sent; prints its id (its sha256), which a job's input
    names. The same file twice is stored once, under the same id."""
    from rich.text import Text

    from dreamforge.errors import ImageRejected, InvalidRequest
    from dreamforge.text import inert

    service = open_local_service("df uploads add")
    limit = service.settings.upload_max_bytes
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InvalidRequest(f"{inert(str(path), 200)} is not a file")
        if size > limit:
            raise ImageRejected(f"{inert(path.name, 100)} is {size} bytes; at most {limit} are taken "
                                "(DF_UPLOAD_MAX_BYTES)", code="payload_too_large")
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{inert(str(path), 200)}: {exc.strerror or exc}") from None
    try:
        image = service.upload_image(data)
    finally:
        service.close()
    if as_json:
        print_json(image.upload_view())
        return
    console.print(Text(f"{image.sha256}  {image.width}x{image.height} {image.format}, {image.size_bytes} bytes"))
