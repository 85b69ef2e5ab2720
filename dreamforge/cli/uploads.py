"""``df uploads``: images a job starts from, stored in the artifact store (this machine's, or the
`df serve` at DF_API_URL's)."""

from pathlib import Path
from typing import Annotated

import typer

from dreamforge.cli.common import (
    TYPER_OPTIONS,
    api_url,
    console,
    handle_errors,
    load_settings,
    open_service,
    print_json,
)

app = typer.Typer(help="Input images for image-to-image and inpainting jobs.", **TYPER_OPTIONS)

# With a remote server, its own DF_UPLOAD_MAX_BYTES decides; no server takes more than this.
MOST_ANY_SERVER_TAKES = 512 * 1024 * 1024


def read_image_file(path: Path, limit: int) -> bytes:
    """The file's bytes, refused before reading when it is over ``limit``."""
    from dreamforge.errors import ImageRejected, InvalidRequest
    from dreamforge.text import cut

    try:
        if not path.is_file():
            raise InvalidRequest(f"{cut(str(path), 200)} is not a file")
        size = path.stat().st_size
        if size > limit:
            raise ImageRejected(f"{cut(path.name, 100)} is {size} bytes; at most {limit} are taken "
                                "(DF_UPLOAD_MAX_BYTES)", code="payload_too_large")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{cut(str(path), 200)}: {exc.strerror or exc}") from None


@app.command("add")
@handle_errors
def add(
    path: Annotated[Path, typer.Argument(help="A PNG, JPEG or WebP file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the upload as the API describes it.")] = False,
) -> None:
    """Check an image and store it as sent; prints its id (its sha256), which a job's input
    names. The same file twice is stored once, under the same id. With DF_API_URL / --api, the
    server stores it (POST /v1/uploads)."""
    from rich.text import Text

    settings = load_settings()
    data = read_image_file(path, MOST_ANY_SERVER_TAKES if api_url(settings) else settings.upload_max_bytes)
    service = open_service(settings)
    try:
        image = service.upload_image(data)
    finally:
        service.close()
    if as_json:
        print_json(image.upload_view())
        return
    console.print(Text(f"{image.sha256}  {image.width}x{image.height} {image.format}, {image.size_bytes} bytes"))
