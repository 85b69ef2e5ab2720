"""The OpenAPI paths of /v1/uploads (built beside openapi.py)."""

from __future__ import annotations

from typing import Any

from dreamforge.server.openapi import REQUEST_ID, UNAUTHORIZED, _error

SHA = "3f9a0c5e1b7d2a4f6c8e0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a"
EXAMPLE_UPLOAD = {"id": SHA, "sha256": SHA, "size_bytes": 1534712, "width": 1024, "height": 1024,
                  "format": "png", "content_type": "image/png"}
UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object", "required": list(EXAMPLE_UPLOAD),
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{64}$",
               "description": "The upload's id: the sha256 of its bytes. A job's input names it."},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "size_bytes": {"type": "integer", "minimum": 0},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
        "content_type": {"type": "string", "enum": ["image/png", "image/jpeg", "image/webp"]}}}
ID_PARAM = {"name": "upload_id", "in": "path", "required": True,
            "schema": {"type": "string"}, "description": "The upload's id (its sha256)."}
UNKNOWN = _error("No upload has this id (or the id is not 64 hex digits)", "unknown_input",
                 "no upload with id 3f9a… (POST /v1/uploads or df uploads add)")
STORE_DOWN = _error("The artifact store can't be reached", "storage_unavailable",
                    "the artifact store could not be reached; try again")
IMAGE = {"type": "string", "format": "binary"}


def uploads_paths() -> dict[str, dict[str, Any]]:
    json_upload = {"application/json": {"schema": UPLOAD_SCHEMA, "example": EXAMPLE_UPLOAD}}
    return {
        "/v1/uploads": {"post": {
            "operationId": "createUpload",
            "summary": "Store an image a job can start from (PNG, JPEG or WebP)",
            "description": "The image goes in a `multipart/form-data` body's `file` field, or is the body itself "
                           "with its own Content-Type. It is stored exactly as sent under "
                           "`dreamforge/default/uploads/{sha256}.{ext}`; the same bytes sent again are the same "
                           "upload (same id, one object). Refused before any pixel is decoded: more than "
                           "DF_UPLOAD_MAX_SIDE (2048) pixels on a side, however small the file (a decompression "
                           "bomb). Then checked whole: a truncated or corrupt file is refused. Animated images "
                           "are refused.",
            "parameters": [REQUEST_ID],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                   "properties": {"file": IMAGE}}},
                "image/png": {"schema": IMAGE}, "image/jpeg": {"schema": IMAGE}, "image/webp": {"schema": IMAGE}}},
            "responses": {
                "201": {"description": "Stored (or stored already)", "content": json_upload,
                        "headers": {"Location": {"schema": {"type": "string"}, "description": "/v1/uploads/{id}"}}},
                "400": _error("A malformed multipart body, or one with more than one file", "invalid_multipart",
                              "the multipart body is malformed: …"),
                "401": UNAUTHORIZED,
                "413": _error("Over DF_UPLOAD_MAX_BYTES (20 MiB); the body is read no further", "payload_too_large",
                              "the upload is over 20971520 bytes (DF_UPLOAD_MAX_BYTES)"),
                "415": _error("Not PNG, JPEG or WebP (the message names what it is), or a Content-Type that "
                              "disagrees with the bytes", "unsupported_media_type",
                              "the file is a GIF (sent as image/png); send a PNG, JPEG or WebP image"),
                "422": _error("Too many pixels (image_too_large), truncated or corrupt (image_invalid), no "
                              "`file` field (validation_error)", "image_too_large",
                              "the image is 20000×20000 pixels; at most 2048 on a side is taken"),
                "503": STORE_DOWN}}},
        "/v1/uploads/{upload_id}": {"get": {
            "operationId": "getUpload", "summary": "An upload's description",
            "parameters": [REQUEST_ID, ID_PARAM],
            "responses": {"200": {"description": "The upload", "content": json_upload},
                          "401": UNAUTHORIZED, "422": UNKNOWN, "503": STORE_DOWN}}},
        "/v1/uploads/{upload_id}/content": {"get": {
            "operationId": "getUploadContent", "summary": "An upload's bytes, as sent",
            "description": "The ETag is the sha256; the bytes never change, so they may be cached for good.",
            "parameters": [REQUEST_ID, ID_PARAM],
            "responses": {"200": {"description": "The image", "content": {
                "image/png": {"schema": IMAGE}, "image/jpeg": {"schema": IMAGE}, "image/webp": {"schema": IMAGE}}},
                          "304": {"description": "Not modified (If-None-Match)"},
                          "401": UNAUTHORIZED, "422": UNKNOWN, "503": STORE_DOWN}}},
    }
