"""Drives chatedge's /v1/messages with the official Anthropic Python SDK, unmodified: base_url
points at chatedge, the api key is the user's JWT (sent as x-api-key). Prints one JSON summary
for the Rust test to assert on."""
import json
import sys

import anthropic

base_url, token = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base_url, api_key=token, max_retries=0)
tools = [
    {
        "name": "get_weather",
        "description": "Weather by city",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    }
]
out = {}

# messages.stream: the SDK's accumulating helper rebuilds the message from the events (and
# parses the tool input from the input_json_delta pieces).
question = {"role": "user", "content": "Weather in Paris?"}
with client.messages.stream(model="gpt-4o-mini", max_tokens=256, system="Be brief.", tools=tools, messages=[question]) as stream:
    texts = list(stream.text_stream)
    final = stream.get_final_message()
tool_use = next(b for b in final.content if b.type == "tool_use")
out["stream"] = {
    "texts": texts,
    "stop_reason": final.stop_reason,
    "tool_use": {"id": tool_use.id, "name": tool_use.name, "input": tool_use.input},
    "output_tokens": final.usage.output_tokens,
}

answer = client.messages.create(
    model="gpt-4o-mini",
    max_tokens=256,
    tools=tools,
    messages=[
        question,
        {"role": "assistant", "content": final.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "12C"}]},
    ],
)
out["create"] = {
    "text": answer.content[0].text,
    "stop_reason": answer.stop_reason,
    "input_tokens": answer.usage.input_tokens,
}

try:
    client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[])
    out["bad_request"] = None
except anthropic.BadRequestError as e:
    out["bad_request"] = {"status": e.status_code}

try:
    anthropic.Anthropic(base_url=base_url, api_key="not-a-jwt", max_retries=0).messages.create(
        model="gpt-4o-mini", max_tokens=5, messages=[question]
    )
    out["unauthorized"] = None
except anthropic.AuthenticationError as e:
    out["unauthorized"] = {"status": e.status_code}

print(json.dumps(out))
