"""The REST API's OpenAPI 3.1 document (served at /api/v1/openapi.json),
written by hand beside chatbot/api.py so that it says exactly what the code
does; the limits in it come from the app's config."""
from .database import FEEDBACK_LABELS, ROUTES

ERROR_CODES = {
    "bad_json": "400: the body is not JSON",
    "bad_type": "400: the body is not an object with a string `text`",
    "bad_encoding": "400: `text` has control characters or lone surrogates",
    "empty": "400: `text` is empty once stripped",
    "bad_session": "400: `session` is not 1-64 characters of [A-Za-z0-9_.:-]",
    "bad_feedback": "400: the body is not {\"value\": \"up\" | \"down\" | null}, or the id is out of range",
    "bad_request": "400: any other request that cannot be read",
    "unauthorized": "401: no key, an unknown key or a revoked key",
    "not_found": "404: no such exchange of this key's, or no such path",
    "method_not_allowed": "405",
    "too_long": "413: `text` is over the message limit, or the body over the request size limit",
    "rate_limited": "429: over the key's rate limit, or too many failed keys from this address (see Retry-After)",
    "server_error": "500",
    "busy": "503: too many questions are waiting for the model; retry in a moment",
}


def _error(description):
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def document(config) -> dict:
    errors = {
        "400": _error("Bad input (`bad_json`, `bad_type`, `bad_encoding`, `empty`, `bad_session`, `bad_feedback`)"),
        "401": _error("Missing, unknown or revoked key (`unauthorized`); sent with `WWW-Authenticate: Bearer`"),
        "413": _error("Too long (`too_long`)"),
        "429": _error("Rate limited (`rate_limited`); `Retry-After` says how many seconds to wait"),
        "500": _error("Unexpected failure (`server_error`)"),
        "503": _error("The model is busy (`busy`)"),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "한마디 chatbot REST API",
            "version": "1",
            "description": (
                "Ask the chatbot and rate its replies. Every request but this document needs "
                "`Authorization: Bearer <key>`; reviewers make keys at /admin/api-keys. "
                f"Rate limit per key: {config['API_RATE_LIMIT']}; after {config['API_AUTH_FAILURE_LIMIT']} "
                "refused keys an address is refused (429) whatever key it sends. "
                f"Bodies over {config['MAX_REQUEST_BYTES']} bytes are refused (413)."),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/messages": {"post": {
                "summary": "Ask a question",
                "operationId": "postMessage",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"],
                    "properties": {
                        "text": {"type": "string", "minLength": 1, "maxLength": config["MAX_MESSAGE_CHARS"],
                                 "description": "The question; leading and trailing spaces are stripped"},
                        "session": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$",
                                    "description": "The caller's conversation id, stored with the "
                                                   "exchange (default: api-<key id>)"},
                    }}}}},
                "responses": {"200": {"description": "The reply", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Reply"}}}}, **errors},
            }},
            "/messages/{id}/feedback": {"post": {
                "summary": "Rate a reply: 👍 (up), 👎 (down) or no opinion (null)",
                "description": "Only for exchanges asked with the same key; a 👎 puts the exchange "
                               "first in the review queue.",
                "operationId": "postFeedback",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["value"],
                    "properties": {"value": {"enum": [*FEEDBACK_LABELS, None]}}}}}},
                "responses": {"200": {"description": "The feedback stored", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Feedback"}}}},
                    "404": _error("Not this key's exchange, or none (`not_found`)"), **errors},
            }},
            "/openapi.json": {"get": {
                "summary": "This document", "operationId": "getOpenApi", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key, hm_…, shown once when made"}},
            "schemas": {
                "Reply": {"type": "object",
                          "required": ["id", "question", "answer", "route", "model_version", "feedback", "session"],
                          "properties": {
                              "id": {"type": "integer", "description": "The exchange's id, for feedback"},
                              "question": {"type": "string"},
                              "answer": {"type": "string"},
                              "route": {"enum": list(ROUTES), "description": "How the answer was made; "
                                        "`unsure`: the bot was not confident and says so"},
                              "model_version": {"type": ["string", "null"]},
                              "feedback": {"enum": [*FEEDBACK_LABELS, None]},
                              "session": {"type": "string"},
                          }},
                "Feedback": {"type": "object", "required": ["id", "value"],
                             "properties": {"id": {"type": "integer"},
                                            "value": {"enum": [*FEEDBACK_LABELS, None]}}},
                "Error": {"type": "object", "required": ["code", "message"],
                          "properties": {"code": {"enum": list(ERROR_CODES),
                                                  "description": "; ".join(f"`{code}` {meaning}"
                                                                           for code, meaning in ERROR_CODES.items())},
                                         "message": {"type": "string", "description": "In Korean, for people"}}},
            },
        },
    }
