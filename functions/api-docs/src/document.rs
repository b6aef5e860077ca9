//! The OpenAPI 3.1 document, built from small helpers so every operation says the same things
//! the same way: its security, its error statuses (each with the one envelope), its bodies.
//! Response schemas name the fields clients rely on and leave the rest open
//! (`additionalProperties` is allowed), so adding a field never breaks the contract.

use serde_json::{json, Map, Value};
use shared::ErrorCode;

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (path, item) in [
        ("/functions/v1/health", health()),
        ("/functions/v1/openapi.json", openapi_json()),
        ("/functions/v1/conversations", conversations()),
        ("/functions/v1/conversations/{id}", conversation()),
        ("/functions/v1/conversations/{id}/messages", conversation_messages()),
        ("/functions/v1/chat-completion", native_chat()),
        ("/v1/models", models()),
        ("/v1/chat/completions", chat_completions()),
        ("/v1/responses", responses()),
        ("/v1/responses/{id}", response_by_id()),
        ("/v1/messages", anthropic_messages()),
        ("/v1/embeddings", embeddings()),
        ("/functions/v1/documents/{id}/process", document_process()),
        ("/functions/v1/search", search()),
        ("/functions/v1/rate-limit", rate_limit()),
        ("/functions/v1/file-upload", uploads()),
        ("/functions/v1/file-upload/{id}", upload()),
        ("/functions/v1/code-execution", code_execution()),
        ("/functions/v1/code-execution/visualizations/{id}", visualization()),
        ("/functions/v1/code-execution/sessions/{id}", session()),
    ] {
        paths.insert(path.to_owned(), item);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "chatedge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Chat completions from OpenAI, Anthropic, Mistral and OpenAI-compatible servers, \
                conversations kept in Postgres under row-level security, uploads, document search and \
                sandboxed code execution, behind one rate limiter. Every error is the envelope \
                `{\"error\": {\"code\", \"message\", ...}}` with a code from the closed set `ErrorCode`. \
                Every response carries `x-request-id` (the caller's, or one made up); quote it when \
                reporting a failure.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "servers": [{"url": "/", "description": "this deployment"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "conversations"}, {"name": "chat"}, {"name": "openai"}, {"name": "anthropic"},
            {"name": "documents"}, {"name": "files"}, {"name": "code"}, {"name": "limits"}, {"name": "meta"}
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A Supabase access token (HS256 with the project's JWT secret, or \
                        ES256/RS256 from its JWKS), or the anon / service-role key."
                },
                "apiKeyAuth": {
                    "type": "apiKey", "in": "header", "name": "x-api-key",
                    "description": "The same token as `x-api-key`, as Anthropic's SDKs send it (`/v1/messages` only)."
                }
            },
            "schemas": schemas(),
            "headers": {
                "RequestId": {"description": "The request's id, in every log line about it.", "schema": {"type": "string"}},
                "RetryAfter": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}
            }
        }
    })
}

/// The schemas several operations share.
fn schemas() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let described: Vec<Value> =
        ErrorCode::ALL.iter().map(|c| json!({"const": c.as_str(), "description": c.description()})).collect();
    json!({
        "ErrorCode": {
            "type": "string",
            "enum": codes,
            "description": "The closed set of codes a client can branch on.",
            "x-codes": described
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"$ref": "#/components/schemas/ErrorCode"},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"},
                        "field": {"type": "string", "description": "The body field that failed validation."},
                        "retry_after": {"type": "integer", "description": "Seconds, on 429."}
                    }
                }
            }
        },
        "Uuid": {"type": "string", "format": "uuid"},
        "Conversation": {
            "type": "object",
            "required": ["id", "title", "archived", "created_at", "updated_at"],
            "properties": {
                "id": {"$ref": "#/components/schemas/Uuid"},
                "title": {"type": "string"},
                "provider": {"type": ["string", "null"]},
                "model": {"type": ["string", "null"]},
                "temperature": {"type": ["number", "null"]},
                "max_tokens": {"type": ["integer", "null"]},
                "system_prompt": {"type": ["string", "null"]},
                "archived": {"type": "boolean"},
                "archived_at": {"type": ["string", "null"]},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"}
            }
        },
        "Message": {
            "type": "object",
            "required": ["id", "conversation_id", "role", "content", "created_at"],
            "properties": {
                "id": {"$ref": "#/components/schemas/Uuid"},
                "conversation_id": {"$ref": "#/components/schemas/Uuid"},
                "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
                "content": {"type": ["string", "null"]},
                "status": {"type": ["string", "null"]},
                "provider": {"type": ["string", "null"]},
                "model": {"type": ["string", "null"]},
                "prompt_tokens": {"type": ["integer", "null"]},
                "completion_tokens": {"type": ["integer", "null"]},
                "cost_usd": {"type": ["number", "string", "null"]},
                "latency_ms": {"type": ["integer", "null"]},
                "tool_calls": {},
                "metadata": {},
                "created_at": {"type": "string"}
            }
        },
        "Upload": {
            "type": "object",
            "required": ["id", "original_name", "storage_key", "size_bytes", "status", "created_at"],
            "properties": {
                "id": {"$ref": "#/components/schemas/Uuid"},
                "conversation_id": {"type": ["string", "null"]},
                "original_name": {"type": "string"},
                "safe_name": {"type": "string"},
                "storage_key": {"type": "string"},
                "mime_type": {"type": ["string", "null"]},
                "size_bytes": {"type": "integer"},
                "sha256": {"type": ["string", "null"]},
                "status": {"type": "string"},
                "processing_status": {"type": ["string", "null"], "enum": ["pending", "processing", "completed", "failed", null]},
                "chunk_count": {"type": ["integer", "null"]},
                "processing_error": {"type": ["string", "null"]},
                "download_url": {"type": "string"},
                "expires_in": {"type": "integer"},
                "created_at": {"type": "string"}
            }
        },
        "ChatMessage": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                "content": {"type": ["string", "array", "null"], "description": "Text, or content parts (text, image_url)."},
                "name": {"type": "string"},
                "tool_calls": {"type": "array"},
                "tool_call_id": {"type": "string"}
            }
        },
        "Usage": {
            "type": "object",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"}
            }
        },
        "ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {
                    "type": "object",
                    "required": ["index", "message"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {"$ref": "#/components/schemas/ChatMessage"},
                        "finish_reason": {"type": ["string", "null"]}
                    }
                }},
                "usage": {"$ref": "#/components/schemas/Usage"},
                "chatedge": {"$ref": "#/components/schemas/ChatedgeMeta"}
            }
        },
        "ChatedgeMeta": {
            "type": "object",
            "description": "What chatedge adds: where the exchange was stored and what it cost.",
            "properties": {
                "conversation_id": {"type": ["string", "null"]},
                "user_message_id": {"type": ["string", "null"]},
                "assistant_message_id": {"type": ["string", "null"]},
                "provider": {"type": "string"},
                "cost_usd": {"type": ["number", "null"]},
                "sources": {"type": "array", "items": {"type": "object"}}
            }
        },
        "CodeOutcome": {
            "type": "object",
            "required": ["id", "language", "status", "stdout", "stderr", "truncated", "duration_ms", "artifacts"],
            "properties": {
                "id": {"type": "string"},
                "language": {"type": "string", "enum": ["python", "javascript", "typescript"]},
                "status": {"type": "string", "enum": ["ok", "error", "compile_error", "timeout", "out_of_fuel", "memory_limit", "disk_limit"]},
                "exit_code": {"type": ["integer", "null"]},
                "stdout": {"type": "string"},
                "stderr": {"type": "string"},
                "truncated": {"type": "boolean"},
                "stdout_bytes": {"type": "integer"},
                "stderr_bytes": {"type": "integer"},
                "duration_ms": {"type": "number"},
                "fuel_used": {"type": "integer"},
                "artifacts": {"type": "array", "items": {"type": "object"}},
                "visualizations": {"type": "array", "items": {"type": "object"}},
                "session_id": {"type": ["string", "null"]}
            }
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// A server-sent-event stream: each event's name (`message` when the stream names none) from
/// `events`, and a `data` that is one JSON document.
fn sse(events: &[&str], description: &str) -> Value {
    json!({"text/event-stream": {"schema": {
        "type": "object",
        "description": description,
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": events},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "id": {"type": "string"},
            "retry": {"type": "integer"}
        }
    }}})
}

fn ok(description: &str, content: Value) -> Value {
    json!({"description": description, "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}}, "content": content})
}

/// The error responses of one operation: each status with the envelope, described by the codes
/// it carries. Every operation that is not public also answers 401; every one reading a body
/// 400/413; all may meet a rate limit (429) or an unavailable dependency (503), and a defect (500).
fn errors(statuses: &[u16]) -> Map<String, Value> {
    let mut out = Map::new();
    for status in statuses {
        let codes: Vec<&str> = ErrorCode::ALL
            .iter()
            .filter(|c| c.description().starts_with(&format!("{status}:")))
            .map(|c| c.as_str())
            .collect();
        let mut response = json!({
            "description": format!("codes: {}", codes.join(", ")),
            "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
            "content": json_content(schema_ref("Error"))
        });
        if matches!(status, 429 | 503) {
            response["headers"]["retry-after"] = json!({"$ref": "#/components/headers/RetryAfter"});
        }
        out.insert(status.to_string(), response);
    }
    out
}

/// One operation: summary, tag, its success responses and its error statuses.
fn op(tag: &str, summary: &str, success: &[(u16, Value)], error_statuses: &[u16]) -> Value {
    let mut responses = errors(error_statuses);
    for (status, response) in success {
        responses.insert(status.to_string(), response.clone());
    }
    json!({"tags": [tag], "summary": summary, "responses": responses})
}

fn with(mut operation: Value, key: &str, value: Value) -> Value {
    operation[key] = value;
    operation
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": json_content(schema)})
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

fn path_id(description: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": description})
}

fn page(items: Value) -> Value {
    json!({
        "type": "object",
        "required": ["data", "has_more"],
        "properties": {"data": {"type": "array", "items": items}, "next_cursor": {"type": ["string", "null"]}, "has_more": {"type": "boolean"}}
    })
}

fn paging(order: bool) -> Value {
    let mut params = vec![
        query("limit", json!({"type": "integer", "minimum": 1, "maximum": 100}), "Page size (default 20)."),
        query("cursor", json!({"type": "string"}), "`next_cursor` of the previous page."),
    ];
    if order {
        params.push(query(
            "order",
            json!({"type": "string", "enum": ["asc", "desc"]}),
            "Oldest first (default) or newest.",
        ));
    }
    Value::Array(params)
}

/// The Responses API's stream events.
const RESPONSE_EVENTS: &[&str] = &[
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
];
/// Anthropic's Messages stream events.
const MESSAGE_EVENTS: &[&str] = &[
    "message_start",
    "ping",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "error",
];

/// Statuses of a signed-in JSON read: bad query, no token, limits, dependencies.
const READ: &[u16] = &[400, 401, 429, 500, 503];
/// Statuses of a signed-in JSON write: adds the body's 413 (JSON routes read the body as JSON
/// whatever its declared type, so no 415).
const WRITE: &[u16] = &[400, 401, 413, 429, 500, 503];
/// Statuses of a call that reaches a model provider.
const PROVIDER: &[u16] = &[400, 401, 404, 413, 429, 500, 502, 503, 504];

fn health() -> Value {
    json!({"get": with(
        op("meta", "Liveness probe; touches nothing", &[(200, ok("alive", json_content(json!({
            "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}
        }))))], &[]),
        "security", json!([]))})
}

fn openapi_json() -> Value {
    json!({"get": with(
        op("meta", "This document", &[(200, ok("the OpenAPI 3.1 document", json_content(json!({"type": "object", "required": ["openapi", "paths"]}))))], &[]),
        "security", json!([]))})
}

/// Create takes the conversation's settings; an update renames or (un)archives it.
fn conversation_fields(create: bool) -> Value {
    // null: the default title on create, unchanged on update.
    let title = json!({"type": ["string", "null"], "minLength": 1, "maxLength": 200});
    let properties = if create {
        json!({
            "title": title,
            "provider": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._:/@-]{1,64}$"},
            "model": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._:/@-]{1,128}$"},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000},
            "system_prompt": {"type": ["string", "null"], "maxLength": 32000}
        })
    } else {
        json!({"title": title, "archived": {"type": ["boolean", "null"]}})
    };
    json!({"type": "object", "additionalProperties": false, "properties": properties})
}

fn conversations() -> Value {
    json!({
        "get": with(op("conversations", "The caller's conversations, newest first",
            &[(200, ok("a page", json_content(page(schema_ref("Conversation")))))], READ),
            "parameters", {
                let mut p = paging(false);
                if let Some(list) = p.as_array_mut() {
                    list.push(query("archived", json!({"type": "string", "enum": ["false", "true", "all"]}), "Which to list (default false)."));
                }
                p
            }),
        "post": with(op("conversations", "Start a conversation",
            &[(201, ok("created (Location names it)", json_content(schema_ref("Conversation"))))], WRITE),
            "requestBody", json!({"required": false, "content": json_content(conversation_fields(true))}))
    })
}

fn conversation() -> Value {
    let params = json!([path_id("The conversation's id (a UUID; anything else is a 404).")]);
    json!({
        "parameters": params,
        "get": op("conversations", "One conversation", &[(200, ok("the conversation", json_content(schema_ref("Conversation"))))], &[401, 404, 429, 500, 503]),
        "patch": with(op("conversations", "Rename, re-configure, archive or unarchive",
            &[(200, ok("the conversation as changed", json_content(schema_ref("Conversation"))))], &[400, 401, 404, 413, 429, 500, 503]),
            "requestBody", json_body(conversation_fields(false))),
        "delete": op("conversations", "Delete it and its messages", &[(204, json!({"description": "deleted"}))], &[401, 404, 429, 500, 503])
    })
}

fn conversation_messages() -> Value {
    json!({
        "parameters": [path_id("The conversation's id.")],
        "get": with(op("conversations", "Its messages, oldest first",
            &[(200, ok("a page", json_content(page(schema_ref("Message")))))], &[400, 401, 404, 429, 500, 503]),
            "parameters", paging(true))
    })
}

fn chat_answer(json_schema: Value, event_names: &[&str], stream_events: &str) -> Value {
    let mut content = json_content(json_schema);
    if let (Some(map), Some(events)) = (content.as_object_mut(), sse(event_names, stream_events).as_object()) {
        map.extend(events.clone());
    }
    ok("the answer: JSON, or with `stream: true` server-sent events", content)
}

fn native_chat() -> Value {
    let body = json!({
        "type": "object",
        "additionalProperties": false,
        "description": "`message` (one user turn) or `messages` (the whole turn list); creates a conversation unless `conversation_id` names one.",
        "not": {"required": ["message", "messages"]},
        "properties": {
            "conversation_id": {"type": ["string", "null"], "format": "uuid"},
            "message": {"type": "string", "minLength": 1, "maxLength": 100000},
            "messages": {"type": "array", "minItems": 1, "items": schema_ref("ChatMessage")},
            "file_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
            "use_documents": {"type": "boolean"},
            "provider": {"type": ["string", "null"], "enum": ["openai", "anthropic", "mistral", "openai_compatible", null]},
            "model": {"type": ["string", "null"], "minLength": 1, "maxLength": 128},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000},
            "system_prompt": {"type": ["string", "null"], "maxLength": 32000},
            "stream": {"type": ["boolean", "null"], "description": "Default true."},
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {},
            "stop": {},
            "top_p": {"type": "number"},
            "response_format": {"type": "object"},
            "seed": {"type": "integer"}
        }
    });
    json!({"post": with(op("chat", "Chat, stored in a conversation",
        &[(200, chat_answer(schema_ref("ChatCompletion"), &["message"],
            "`data:` chat.completion.chunk objects; the last one has `usage` and `chatedge` \
             (conversation and message ids, cost, sources); then `data: [DONE]`. A failure after \
             the first byte is an `error` object in a data line."))], PROVIDER),
        "requestBody", json_body(body))})
}

fn models() -> Value {
    json!({"get": op("openai", "Models of the configured providers (OpenAI's list shape)",
        &[(200, ok("the list", json_content(json!({
            "type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
                "type": "object", "required": ["id", "object"],
                "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "owned_by": {"type": "string"}, "created": {"type": "integer"}}
            }}}
        }))))], &[401, 429, 500, 503])})
}

fn chat_completions() -> Value {
    let body = json!({
        "type": "object",
        "required": ["messages"],
        "description": "OpenAI's chat completions body; unknown OpenAI parameters pass through to the provider. \
            `conversation_id` or `store: true` (extra body) persists the exchange.",
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 128},
            "messages": {"type": "array", "minItems": 1, "items": schema_ref("ChatMessage")},
            "stream": {"type": "boolean"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "tools": {"type": "array", "items": {"type": "object"}},
            "response_format": {"type": "object"},
            "conversation_id": {"type": "string", "format": "uuid"},
            "store": {"type": "boolean"}
        }
    });
    json!({"post": with(op("openai", "OpenAI-compatible chat completions, any provider",
        &[(200, chat_answer(schema_ref("ChatCompletion"), &["message"],
            "`data:` chat.completion.chunk objects (usage in the last with `stream_options.include_usage`), then `data: [DONE]`."))],
        PROVIDER), "requestBody", json_body(body))})
}

fn response_object() -> Value {
    json!({
        "type": "object", "required": ["id", "object", "status", "output"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "response"}, "status": {"type": "string"},
            "model": {"type": "string"}, "output": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": ["object", "null"]}, "previous_response_id": {"type": ["string", "null"]}
        }
    })
}

fn responses() -> Value {
    let message = json!({
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "type": {"const": "message"},
            "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "object"}}]}
        }
    });
    let call_output = json!({
        "type": "object",
        "required": ["type", "call_id", "output"],
        "properties": {"type": {"const": "function_call_output"}, "call_id": {"type": "string", "minLength": 1}, "output": {"type": "string"}}
    });
    let body = json!({
        "type": "object",
        "required": ["model", "input"],
        "additionalProperties": false,
        "description": "OpenAI's Responses body. Accepted and echoed, not acted on: text, user, metadata, reasoning, \
            truncation, include, service_tier, prompt_cache_key, safety_identifier, parallel_tool_calls.",
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "\\S"},
            "input": {"oneOf": [
                {"type": "string", "minLength": 1, "pattern": "\\S"},
                {"type": "array", "minItems": 1, "maxItems": 500, "items": {"oneOf": [message, call_output]}}
            ]},
            "instructions": {"type": ["string", "null"], "maxLength": 32000},
            "tools": {"type": "array", "items": {"type": "object", "required": ["type", "name"],
                "properties": {"type": {"const": "function"}, "name": {"type": "string", "minLength": 1}, "parameters": {"type": "object"}}}},
            "tool_choice": {},
            "stream": {"type": "boolean"},
            "store": {"type": "boolean"},
            "previous_response_id": {"type": ["string", "null"], "pattern": "^resp_[0-9a-fA-F]{32}$"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "max_output_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "provider": {"type": "string", "enum": ["openai", "anthropic", "mistral", "openai_compatible"]},
            "background": {"const": false},
            "parallel_tool_calls": {"type": "boolean"},
            "text": {}, "user": {}, "metadata": {}, "reasoning": {}, "truncation": {}, "include": {},
            "service_tier": {}, "prompt_cache_key": {}, "safety_identifier": {}
        }
    });
    json!({"post": with(op("openai", "OpenAI's Responses API, any provider",
        &[(200, chat_answer(response_object(), RESPONSE_EVENTS,
            "Typed events: response.created, response.in_progress, response.output_item.added, \
             response.content_part.added, response.output_text.delta…, response.output_text.done, \
             response.content_part.done, response.output_item.done, response.completed (usage)."))],
        PROVIDER), "requestBody", json_body(body))})
}

fn response_by_id() -> Value {
    json!({
        "parameters": [path_id("A stored response's id (`resp_…`).")],
        "get": op("openai", "A stored response", &[(200, ok("the response", json_content(response_object())))], &[401, 404, 429, 500, 503])
    })
}

fn anthropic_messages() -> Value {
    let body = json!({
        "type": "object",
        "required": ["model", "max_tokens", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 128},
            "max_tokens": {"type": "integer", "minimum": 1},
            "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"],
                "properties": {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": {"type": ["string", "array"]}}}},
            "system": {"type": ["string", "array", "null"]},
            "tools": {"type": ["array", "null"], "items": {"type": "object"}},
            "stream": {"type": ["boolean", "null"]},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 1}
        }
    });
    let message = json!({
        "type": "object", "required": ["id", "type", "role", "content"],
        "properties": {"id": {"type": "string"}, "type": {"const": "message"}, "role": {"const": "assistant"},
            "content": {"type": "array", "items": {"type": "object"}}, "stop_reason": {"type": ["string", "null"]},
            "usage": {"type": "object"}}
    });
    json!({"post": with(with(op("anthropic", "Anthropic's Messages API in front of any provider",
        &[(200, chat_answer(message, MESSAGE_EVENTS,
            "Named events: message_start, ping, content_block_start, content_block_delta (text_delta, \
             input_json_delta), content_block_stop, message_delta (stop_reason, usage), message_stop."))],
        PROVIDER), "requestBody", json_body(body)),
        "security", json!([{"bearerAuth": []}, {"apiKeyAuth": []}]))})
}

fn embeddings() -> Value {
    let text = json!({"type": "string", "minLength": 1});
    let tokens = json!({"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}});
    let body = json!({
        "type": "object",
        "required": ["model", "input"],
        "additionalProperties": false,
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "\\S"},
            "input": {"oneOf": [
                text.clone(),
                {"type": "array", "minItems": 1, "maxItems": 2048, "items": text},
                tokens.clone(),
                {"type": "array", "minItems": 1, "maxItems": 2048, "items": tokens}
            ], "description": "A string, strings, token ids, or lists of token ids."},
            "encoding_format": {"type": ["string", "null"], "enum": ["float", "base64", null]},
            "dimensions": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
            "user": {"description": "Passed to the provider as given."},
            "provider": {"type": ["string", "null"], "enum": ["openai", "mistral", "openai_compatible", null]}
        }
    });
    json!({"post": with(op("openai", "OpenAI-compatible embeddings (OpenAI, Mistral, compatible servers)",
        &[(200, ok("the vectors", json_content(json!({
            "type": "object", "required": ["object", "data", "model"],
            "properties": {"object": {"const": "list"}, "model": {"type": "string"},
                "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                    "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"}, "embedding": {"type": ["array", "string"]}}}},
                "usage": {"type": "object"}, "chatedge": {"type": "object"}}
        }))))], PROVIDER), "requestBody", json_body(body))})
}

fn document_process() -> Value {
    json!({
        "parameters": [path_id("An upload's id.")],
        "post": op("documents", "Embed a document's chunks now (or again, after a failure)",
            &[(200, ok("the file, processed", json_content(json!({
                "type": "object", "required": ["id", "processing_status"],
                "properties": {"id": {"type": "string"}, "processing_status": {"type": "string"}, "chunk_count": {"type": ["integer", "null"]}, "embedded_chunks": {"type": "integer"}}
            }))))], &[400, 401, 404, 422, 429, 500, 502, 503, 504])
    })
}

fn search() -> Value {
    json!({"get": with(op("documents", "Semantic (or hybrid) search over the caller's messages and documents",
    &[(200, ok("hits, best first", json_content(json!({
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "query": {"type": "string"}, "data": {"type": "array", "items": {
            "type": "object", "required": ["kind", "score"],
            "properties": {"kind": {"type": "string", "enum": ["document", "message"]}, "score": {"type": "number"}, "snippet": {"type": "string"}}
        }}}
    }))))], &[400, 401, 429, 500, 502, 503, 504]),
    "parameters", json!([
        {"name": "q", "in": "query", "required": true, "schema": {"type": "string", "minLength": 1}, "description": "The query text."},
        query("scope", json!({"type": "string", "enum": ["documents", "messages", "all"]}), "What to search (default all)."),
        query("hybrid", json!({"type": "boolean"}), "Fuse full-text rank with vector rank."),
        query("limit", json!({"type": "integer", "minimum": 1, "maximum": 50}), "Hits (default 10)."),
        query("conversation_id", json!({"type": "string", "format": "uuid"}), "Only this conversation's messages.")
    ]))})
}

fn rate_limit() -> Value {
    let limit = json!({"type": "object", "required": ["policy"], "properties": {"policy": {"type": "string"}, "rate": {"type": "integer"}, "window_seconds": {"type": "integer"}, "burst": {"type": "integer"}, "remaining": {"type": "integer"}}});
    json!({
        "get": op("limits", "The caller's rate limits and budget",
            &[(200, ok("limits", json_content(json!({
                "type": "object", "required": ["user_id", "anonymous", "limits"],
                "properties": {"user_id": {"type": "string"}, "anonymous": {"type": "boolean"}, "limits": {"type": "array", "items": limit}, "budget": {"type": ["object", "null"]}}
            }))))], &[401, 429, 500, 503]),
        "post": with(op("limits", "Check (and spend) a named limit: trusted backends, service role only",
            &[(200, ok("admitted", json_content(json!({"type": "object", "required": ["allowed"], "properties": {"allowed": {"const": true}, "limit": limit}}))))],
            &[400, 401, 403, 413, 429, 500, 503]),
            "requestBody", json_body(json!({
                "type": "object", "required": ["key", "limit"],
                "properties": {"key": {"type": "string", "minLength": 1}, "limit": {"type": "string", "description": "`rate/period[:burst]`, e.g. `10/min:20`."}, "cost": {"type": "integer", "minimum": 1}}
            })))
    })
}

fn uploads() -> Value {
    let multipart = json!({"type": "object", "properties": {
        "file": {"type": "string", "contentMediaType": "application/octet-stream"},
        "conversation_id": {"type": "string", "format": "uuid"}
    }});
    json!({
        "post": with(with(op("files", "Upload files: multipart (one or more `file` parts) or one raw body named by x-file-name",
            &[(201, ok("stored", json_content(json!({"type": "object", "required": ["files"], "properties": {"files": {"type": "array", "items": schema_ref("Upload")}}}))))],
            &[400, 401, 404, 413, 415, 429, 500, 503]),
            "requestBody", json!({"required": true, "content": {
                "multipart/form-data": {"schema": multipart},
                "application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
            }})),
            "parameters", json!([{"name": "x-file-name", "in": "header", "required": false, "schema": {"type": "string"}, "description": "The raw body's file name (percent-encoded)."}])),
        "get": with(op("files", "The caller's uploads, newest first",
            &[(200, ok("a page", json_content(page(schema_ref("Upload")))))], READ), "parameters", paging(false))
    })
}

fn upload() -> Value {
    json!({
        "parameters": [path_id("An upload's id.")],
        "get": op("files", "One upload with a presigned download_url", &[(200, ok("the upload", json_content(schema_ref("Upload"))))], &[401, 404, 429, 500, 503]),
        "delete": op("files", "Delete the object, then its row", &[(204, json!({"description": "deleted"}))], &[401, 404, 429, 500, 503])
    })
}

fn code_execution() -> Value {
    let body = json!({
        "type": "object",
        "required": ["language", "code"],
        "additionalProperties": false,
        "properties": {
            "language": {"type": "string", "enum": ["python", "javascript", "typescript"]},
            "code": {"type": "string", "minLength": 1, "maxLength": 1_048_576, "pattern": "\\S"},
            "stdin": {"type": ["string", "null"]},
            "timeout_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": 60000},
            "conversation_id": {"type": ["string", "null"], "format": "uuid"},
            "file_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
            "session": {"type": "boolean", "description": "Start a session (state kept between calls)."},
            "session_id": {"type": ["string", "null"], "description": "Run in this live session."},
            "stream": {"type": "boolean"}
        }
    });
    json!({"post": with(op("code", "Run Python, JavaScript or TypeScript in the sandbox",
        &[(200, chat_answer(schema_ref("CodeOutcome"), &["stdout", "stderr", "outcome", "error"],
            "Named events: stdout and stderr (`{\"data\": …}`) as the program writes, then outcome (the JSON answer, artifacts and visualizations in it) or error."))],
        &[400, 401, 404, 413, 429, 500, 503, 504]), "requestBody", json_body(body))})
}

fn visualization() -> Value {
    json!({
        "parameters": [path_id("A visualization's id.")],
        "get": op("code", "A stored chart with a fresh download link",
            &[(200, ok("the visualization", json_content(json!({"type": "object", "required": ["id", "url"], "properties": {"id": {"type": "string"}, "url": {"type": "string"}, "kind": {"type": "string"}}}))))],
            &[401, 404, 429, 500, 503])
    })
}

fn session() -> Value {
    json!({
        "parameters": [path_id("A session's id.")],
        "delete": op("code", "End a session now", &[(204, json!({"description": "ended"}))], &[401, 404, 429, 500, 503])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_in_the_enum_with_its_meaning() {
        let doc = document();
        let listed: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all);
        for code in ErrorCode::ALL {
            let status: u16 = code.description().split(':').next().unwrap().parse().unwrap();
            assert!((400..600).contains(&status), "{code}: {}", code.description());
        }
    }

    #[test]
    fn every_operation_answers_json_errors_and_signed_in_ones_say_401() {
        let doc = document();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                operations += 1;
                let public = operation.get("security") == Some(&json!([]));
                let responses = operation["responses"].as_object().unwrap();
                assert_eq!(responses.contains_key("401"), !public, "{method} {path}");
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"]["application/json"]["schema"],
                            schema_ref("Error"),
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        assert_eq!(operations, 26);
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = &piece[..piece.find('"').unwrap()];
            let (section, name) = target.split_once('/').unwrap();
            assert!(doc["components"][section].get(name).is_some(), "dangling $ref {target}");
        }
    }
}
