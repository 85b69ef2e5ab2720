"""Input images (issue 19): POST /v1/uploads takes PNG, JPEG and WebP, stores the bytes as sent
once per content, and refuses hostile files with a 4xx before decoding them; references to an
upload or an earlier artifact resolve to an InputImage."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from starlette.requests import Request
from starlette.testclient import TestClient
from typer.testing import CliRunner

from dreamforge.errors import ImageRejected, InvalidRequest
from dreamforge.inputs import InputImage, check_mask, resolve_input
from dreamforge.runners.fake import FakeRunner
from dreamforge.server.app import create_app
from dreamforge.server.errors import ApiError
from dreamforge.server.uploads_api import read_body
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.worker import InlineWorker
from tests.conftest import s3_settings_env

# The database plays no part here: one backend is enough.
sqlite_only = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)


def image_bytes(fmt: str, size: tuple[int, int] = (48, 32), color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few bytes whose header declares ``width`` × ``height``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def svc(df_env) -> Iterator[JobService]:
    service = JobService.from_settings(Settings())
    yield service
    service.close()


def stored_uploads(settings: Settings) -> list[Path]:
    root = settings.data_dir
    return sorted(p for p in root.rglob("*") if p.is_file() and "uploads" in p.parts)


@sqlite_only
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_each_format_is_taken_raw_and_as_multipart_and_stored_as_sent(api, fmt):
    data = image_bytes(fmt)
    ours = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt]
    raw = api.post("/v1/uploads", content=data, headers={"Content-Type": f"image/{ours}"})
    assert raw.status_code == 201, raw.text
    sha = hashlib.sha256(data).hexdigest()
    assert raw.json() == {"id": sha, "sha256": sha, "size_bytes": len(data), "width": 48, "height": 32,
                          "format": ours, "content_type": f"image/{ours}"}
    assert raw.headers["location"] == f"/v1/uploads/{sha}"
    form = api.post("/v1/uploads", files={"file": (f"x.{ours}", data, "application/octet-stream")})
    assert form.status_code == 201, form.text
    assert form.json() == raw.json()
    assert api.get(f"/v1/uploads/{sha}").json() == raw.json()
    content = api.get(f"/v1/uploads/{sha}/content")
    assert content.status_code == 200 and content.content == data  # the bytes as sent, metadata and all
    assert content.headers["content-type"] == f"image/{ours}"
    assert api.get(f"/v1/uploads/{sha}/content", headers={"If-None-Match": f'"{sha}"'}).status_code == 304


@sqlite_only
def test_the_same_bytes_twice_are_one_object(api):
    data = image_bytes("PNG")
    first = api.post("/v1/uploads", content=data, headers={"Content-Type": "image/png"}).json()
    second = api.post("/v1/uploads", files={"file": ("again.png", data, "image/png")}).json()
    assert first == second
    other = api.post("/v1/uploads", content=image_bytes("PNG", color=(1, 2, 3)),
                     headers={"Content-Type": "image/png"}).json()
    files = stored_uploads(Settings())
    assert [f.name for f in files] == sorted([f"{first['id']}.png", f"{other['id']}.png"])
    assert all("dreamforge/default/uploads" in f.as_posix() for f in files)


def refusal(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    return error["message"]


@sqlite_only
def test_a_decompression_bomb_is_refused_from_its_header(api):
    bomb = png_declaring(20000, 20000)
    assert len(bomb) < 200
    message = refusal(api.post("/v1/uploads", content=bomb, headers={"Content-Type": "image/png"}),
                      422, "image_too_large")
    assert "400000000 pixels" in message
    # Pillow's own guard, for an image within the side limit the setting allows: set, not default.
    assert Image.MAX_IMAGE_PIXELS == 4096 * 4096
    # Within Pillow's limit but over the side limit: refused by the header's sides, named.
    message = refusal(api.post("/v1/uploads", files={"file": ("big.png", png_declaring(4000, 4000), "image/png")}),
                      422, "image_too_large")
    assert "4000×4000" in message
    assert stored_uploads(Settings()) == []


@sqlite_only
def test_sides_over_the_limit_are_refused(api, monkeypatch):
    refusal(api.post("/v1/uploads", content=image_bytes("PNG", (2056, 8)), headers={"Content-Type": "image/png"}),
            422, "image_too_large")


@sqlite_only
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_file_is_refused(api, fmt):
    # Noise, so the compressed body is long enough to cut into.
    noisy = Image.frombytes("RGB", (256, 256), random.Random(1).randbytes(256 * 256 * 3))
    out = io.BytesIO()
    noisy.save(out, format=fmt)
    data = out.getvalue()
    ours = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt]
    response = api.post("/v1/uploads", content=data[: len(data) * 2 // 3],
                        headers={"Content-Type": f"image/{ours}"})
    refusal(response, 422, "image_invalid")
    assert stored_uploads(Settings()) == []


@sqlite_only
@pytest.mark.parametrize(("data", "named"), [
    (b"hello, I am text", "not an image"),
    (b"", "an empty file"),
    (image_bytes("GIF"), "a GIF"),
    (image_bytes("BMP"), "a BMP"),
])
def test_what_is_not_png_jpeg_or_webp_is_415(api, data, named):
    message = refusal(api.post("/v1/uploads", files={"file": ("x.png", data, "image/png")}),
                      415, "unsupported_media_type")
    assert named in message


def _frames(fmt: str, **options) -> bytes:
    out = io.BytesIO()
    first, second = Image.new("RGB", (32, 32), (1, 2, 3)), Image.new("RGB", (32, 32), (200, 2, 1))
    first.save(out, format=fmt, save_all=True, append_images=[second], **options)
    return out.getvalue()


def _with_chunk(kind: bytes, data: bytes) -> bytes:
    png = image_bytes("PNG")
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return png[:33] + chunk + png[33:]  # after IHDR


@sqlite_only
@pytest.mark.parametrize(("data", "says"), [
    (_frames("PNG"), "several frames"),
    (_frames("WEBP", duration=[100, 100], lossless=True), "several frames"),
    (_frames("MPO"), "several frames"),
    # A text chunk that inflates to 50 MiB: Pillow's text limit (set on purpose) stops it.
    (_with_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * (50 * 1024 * 1024))), "MAX_TEXT_CHUNK"),
    (_with_chunk(b"tEXt", b"k\0v")[:-30] + b"\0" * 30, "truncated or corrupt"),
    (png_declaring(0, 10), "header is broken"),
])
def test_hostile_images_are_422_and_not_stored(api, data, says):
    message = refusal(api.post("/v1/uploads", content=data, headers={"Content-Type": "image/png"}),
                      422, "image_invalid")
    assert says in message
    assert stored_uploads(Settings()) == []


@sqlite_only
def test_content_types_must_be_images_and_agree_with_the_bytes(api):
    png = image_bytes("PNG")
    refusal(api.post("/v1/uploads", content=png, headers={"Content-Type": "application/json"}),
            415, "unsupported_media_type")
    refusal(api.post("/v1/uploads", content=png, headers={"Content-Type": "image/gif"}),
            415, "unsupported_media_type")
    message = refusal(api.post("/v1/uploads", content=png, headers={"Content-Type": "image/jpeg"}),
                      415, "unsupported_media_type")
    assert "PNG" in message


@sqlite_only
def test_malformed_multipart_bodies_are_4xx(api):
    refusal(api.post("/v1/uploads", files={"image": ("x.png", image_bytes("PNG"), "image/png")}),
            422, "validation_error")
    refusal(api.post("/v1/uploads", data={"file": "just text"}, files={"other": ("a", b"b")}),
            422, "validation_error")
    two = [("file", ("a.png", image_bytes("PNG"), "image/png")), ("file", ("b.png", image_bytes("PNG"), "image/png"))]
    refusal(api.post("/v1/uploads", files=two), 400, "invalid_multipart")
    response = api.post("/v1/uploads", content=b"--x\r\nnonsense", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400, response.text


@sqlite_only
def test_over_the_byte_limit_is_413_without_reading_it_all(df_env, monkeypatch):
    monkeypatch.setenv("DF_UPLOAD_MAX_BYTES", "2048")
    noisy = Image.frombytes("RGB", (64, 64), random.Random(2).randbytes(64 * 64 * 3))
    out = io.BytesIO()
    noisy.save(out, format="PNG")
    big = out.getvalue()
    assert len(big) > 2048
    with TestClient(create_app(Settings())) as api:
        refusal(api.post("/v1/uploads", content=big, headers={"Content-Type": "image/png"}), 413, "payload_too_large")
        refusal(api.post("/v1/uploads", files={"file": ("big.png", big, "image/png")}), 413, "payload_too_large")
    # No Content-Length (chunked): the reader gives up once past the limit, not after 10 MiB.
    received: list[int] = []

    async def receive() -> dict:
        received.append(1024)
        return {"type": "http.request", "body": b"\0" * 1024, "more_body": len(received) < 10240}

    request = Request({"type": "http", "method": "POST", "headers": [(b"content-type", b"image/png")]}, receive)
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_body(request, 2048))
    assert refused.value.status == 413 and sum(received) <= 4096


@sqlite_only
def test_unknown_uploads_are_422_and_ids_are_checked(api):
    missing = "0" * 64
    refusal(api.get(f"/v1/uploads/{missing}"), 422, "unknown_input")
    refusal(api.get(f"/v1/uploads/{missing}/content"), 422, "unknown_input")
    refusal(api.get("/v1/uploads/" + "z" * 64), 422, "unknown_input")
    refusal(api.get("/v1/uploads/..%2E"), 422, "unknown_input")
    refusal(api.get("/v1/uploads/" + "A" * 64), 422, "unknown_input")


@sqlite_only
def test_resolve_input_takes_uploads_and_earlier_artifacts(svc):
    data = image_bytes("JPEG", (64, 48))
    stored = svc.upload_image(data, None)
    for ref in (stored.sha256, {"upload": stored.sha256}):
        assert resolve_input(svc, ref) == stored
    job = svc.submit(_request()).view.id
    worker = InlineWorker(svc, FakeRunner(step_delay_s=0), job)
    worker.start()
    worker.join()
    art = svc.get(job).artifacts[0]
    found = resolve_input(svc, {"job_id": job, "item": 0})
    assert (found.sha256, found.key, found.width, found.height, found.format) == \
        (art.sha256, art.s3_key, 64, 64, "png")
    assert resolve_input(svc, {"job_id": job}) == found
    for bad in ({"job_id": job, "item": 1}, {"job_id": "nope", "item": 0}, {"job_id": job, "item": True},
                {"job_id": job, "item": -1}, {"job_id": job, "other": 1}, {"upload": 5}, "f" * 64, "short", 7):
        with pytest.raises(ImageRejected) as refused:
            resolve_input(svc, bad)  # type: ignore[arg-type]
        assert refused.value.code == "unknown_input"


def _request():
    from dreamforge.schemas import parse_request

    return parse_request({"prompt": "an input", "width": 64, "height": 64, "steps": 2, "seed": 1})


def test_a_mask_must_match_its_image():
    init = InputImage("a" * 64, "k", 64, 48, "png")
    check_mask(init, InputImage("b" * 64, "m", 64, 48, "png"))
    with pytest.raises(ImageRejected) as refused:
        check_mask(init, InputImage("b" * 64, "m", 48, 64, "png"))
    assert refused.value.code == "mask_size_mismatch" and "48×64" in refused.value.message


@sqlite_only
def test_df_uploads_add(df_env, tmp_path):
    from dreamforge.cli.main import app

    path = tmp_path / "in.webp"
    path.write_bytes(image_bytes("WEBP"))
    runner = CliRunner()
    result = runner.invoke(app, ["uploads", "add", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert '"format": "webp"' in result.output
    plain = runner.invoke(app, ["uploads", "add", str(path)])
    assert plain.exit_code == 0 and hashlib.sha256(path.read_bytes()).hexdigest() in plain.output
    path.write_bytes(b"GIF89a not really")
    refused = runner.invoke(app, ["uploads", "add", str(path)])
    assert refused.exit_code == 2 and "GIF" in refused.output
    assert runner.invoke(app, ["uploads", "add", str(tmp_path / "missing.png")]).exit_code == 2


@sqlite_only
def test_an_upload_round_trips_through_s3(df_env, seaweed, monkeypatch):
    for name, value in s3_settings_env(seaweed.endpoint).items():
        monkeypatch.setenv(name, value)
    data = image_bytes("PNG")
    with TestClient(create_app(Settings())) as api:
        made = api.post("/v1/uploads", files={"file": ("x.png", data, "image/png")})
        assert made.status_code == 201, made.text
        again = api.post("/v1/uploads", content=data, headers={"Content-Type": "image/png"})
        assert again.json() == made.json()
        assert api.get(f"/v1/uploads/{made.json()['id']}").json() == made.json()
        content = api.get(f"/v1/uploads/{made.json()['id']}/content")
        assert content.content == data
        refusal(api.get(f"/v1/uploads/{'1' * 64}"), 422, "unknown_input")
    svc = JobService.from_settings(Settings())
    try:
        assert svc.artifact_store.exists(f"dreamforge/default/uploads/{made.json()['id']}.png")
    finally:
        svc.close()


@sqlite_only
def test_a_remote_cli_uploads_through_the_api(df_env, tmp_path):
    """RemoteService.upload_image (what `df uploads add` uses with DF_API_URL) posts to the API and
    answers as JobService does; refusals come back as the same errors."""
    import httpx

    from dreamforge.client import RemoteService

    class InProcess(httpx.BaseTransport):
        """The app in this process, answered as a plain httpx.Client expects."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            answer = api._transport.handle_request(request)
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())

    data = image_bytes("JPEG")
    with TestClient(create_app(Settings())) as api:
        remote = RemoteService("http://testserver", transport=InProcess(), retry_s=0)
        image = remote.upload_image(data)
        svc = JobService.from_settings(Settings())
        try:
            assert image == svc.upload(image.sha256)
        finally:
            svc.close()
        with pytest.raises(InvalidRequest) as refused:
            remote.upload_image(b"GIF89a nope")
        assert refused.value.code == "unsupported_media_type" and "a GIF" in refused.value.message
