"""The webhooks in the OpenAPI document (3.1's top-level ``webhooks``): what a receiver gets."""

from __future__ import annotations

from typing import Any

REF = "#/components/schemas/{model}"
HEADERS = {
    "webhook-id": "msg_… : the same on every attempt of one delivery (deduplicate on it)",
    "webhook-timestamp": "Unix seconds of this attempt; refuse ones more than five minutes away",
    "webhook-signature": "v1,<base64 of HMAC-SHA256 over id.timestamp.body with the whsec_ secret>",
}

SCHEMAS: dict[str, Any] = {"WebhookEnvelope": {
    "type": "object", "required": ["type", "timestamp", "data"],
    "properties": {
        "type": {"type": "string", "enum": ["job.running", "job.progress", "job.succeeded", "job.failed",
                                            "job.canceled"]},
        "timestamp": {"type": "string", "format": "date-time", "description": "When the event happened."},
        "data": {"type": "object", "required": ["event", "job"], "properties": {
            "event": {"$ref": REF.format(model="EventView")},
            "job": {"$ref": REF.format(model="JobView"),
                    "description": "The job as it was at the delivery's first attempt."}}}}}}


def webhooks_spec() -> dict[str, Any]:
    return {"jobEvent": {"post": {
        "operationId": "jobEvent",
        "summary": "A job's event, to the job's webhook and to DF_WEBHOOK_URLS",
        "description": "Signed per Standard Webhooks (verify with the standardwebhooks library and the "
                       "DF_WEBHOOK_SECRET). Answer 2xx to acknowledge; 408, 429 and 5xx (and timeouts) are "
                       "retried on DF_WEBHOOK_RETRY_SCHEDULE with the same webhook-id and body; other 4xx and "
                       "3xx are final.",
        "parameters": [{"name": name, "in": "header", "required": True, "description": text,
                        "schema": {"type": "string"}} for name, text in HEADERS.items()],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF.format(model="WebhookEnvelope")}}}},
        "responses": {"200": {"description": "Received"}},
        "security": [],
    }}}
