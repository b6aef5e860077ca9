"""Drives chatedge with the official OpenAI Python SDK, unmodified: base_url points at chatedge,
the api key is the user's JWT. Prints one JSON summary for the Rust test to assert on."""
import json
import sys

import openai

base_url, token = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)
out = {}

models = client.models.list()
out["models"] = [m.id for m in models.data]

done = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}], temperature=0.2
)
out["completion"] = {
    "content": done.choices[0].message.content,
    "finish_reason": done.choices[0].finish_reason,
    "prompt_tokens": done.usage.prompt_tokens,
    "completion_tokens": done.usage.completion_tokens,
}

text, usage, chunks = "", None, 0
stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Stream hi"}],
    stream=True,
    stream_options={"include_usage": True},
    extra_body={"store": True},
)
for chunk in stream:
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage.completion_tokens
out["stream"] = {"text": text, "completion_tokens": usage, "chunks": chunks}

try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[])
    out["bad_request"] = None
except openai.BadRequestError as e:
    out["bad_request"] = {"status": e.status_code, "code": e.body.get("code") if isinstance(e.body, dict) else None}

try:
    openai.OpenAI(base_url=base_url, api_key="not-a-jwt", max_retries=0).models.list()
    out["unauthorized"] = None
except openai.AuthenticationError as e:
    out["unauthorized"] = {"status": e.status_code}

# The SDK asks for base64 by default and decodes it itself; float is asked for explicitly.
vectors = client.embeddings.create(model="text-embedding-3-small", input=["first", "second"], dimensions=3)
out["embeddings"] = {
    "vectors": [d.embedding for d in vectors.data],
    "indexes": [d.index for d in vectors.data],
    "prompt_tokens": vectors.usage.prompt_tokens,
    "model": vectors.model,
}
floats = client.embeddings.create(model="text-embedding-3-small", input="one", encoding_format="float")
out["embeddings_float"] = floats.data[0].embedding

# The Responses API: the raw typed event stream, then the SDK's accumulating stream helper
# continuing it by id (it rebuilds the response from the events and fails on a malformed
# sequence), then the stored response read back.
events, text, final = [], "", None
stream = client.responses.create(model="gpt-4o-mini", input="Stream a response", instructions="Be brief", stream=True)
for event in stream:
    events.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type == "response.completed":
        final = event.response
out["responses_stream"] = {
    "events": events,
    "text": text,
    "id": final.id,
    "status": final.status,
    "output_text": final.output_text,
    "input_tokens": final.usage.input_tokens,
    "output_tokens": final.usage.output_tokens,
}
with client.responses.stream(model="gpt-4o-mini", input="Again", previous_response_id=final.id) as helper:
    for _ in helper:
        pass
    again = helper.get_final_response()
out["responses_helper"] = {"id": again.id, "output_text": again.output_text, "previous_response_id": again.previous_response_id}
got = client.responses.retrieve(again.id)
out["responses_retrieve"] = {"id": got.id, "output_text": got.output_text, "status": got.status}

print(json.dumps(out))
