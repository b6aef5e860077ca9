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

print(json.dumps(out))
