"""The official `anthropic` Python client against llama-orch's `/v1/messages`.
The pinned client (2.10.0) no longer takes `temperature`; it goes as an extra body field.

Usage: anthropic_check.py BASE_URL MODEL. The stack runs one single-slot pool started with a
tool-capable chat template. Exits non-zero on the first failed check.
"""
import sys

import anthropic

from common import ASK_TOOL, RESULT, WEATHER_SCHEMA, cancel_by_closing, check, summary, validate

base, model = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base, api_key="unused-in-open-mode", max_retries=0, timeout=120)
TOOL = {"name": "get_weather", "description": "Get the weather for a city", "input_schema": WEATHER_SCHEMA}


def create():
    m = client.messages.create(model=model, max_tokens=16, extra_body={"temperature": 0}, system="Answer briefly.",
                               messages=[{"role": "user", "content": "Name a color."}])
    assert m.id.startswith("msg_") and m.role == "assistant" and m.type == "message", m
    assert m.content and m.content[0].type == "text" and m.content[0].text.strip(), m.content
    assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0, m.usage


def stream():
    with client.messages.stream(model=model, max_tokens=24, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "Count to five."}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip() and final.content[0].text == text, (text, final.content)
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0, final


def tool_round_trip():
    ask = [{"role": "user", "content": ASK_TOOL}]
    m = client.messages.create(model=model, max_tokens=200, extra_body={"temperature": 0}, tools=[TOOL], tool_choice={"type": "any"}, messages=ask)
    assert m.stop_reason == "tool_use", (m.stop_reason, m.content)
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id, m.content
    validate(uses[0].input, WEATHER_SCHEMA)
    follow = ask + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": RESULT}]}]
    final = client.messages.create(model=model, max_tokens=48, extra_body={"temperature": 0}, tools=[TOOL], messages=follow)
    assert final.stop_reason in ("end_turn", "max_tokens"), (final.stop_reason, final.content)
    assert final.content and final.content[0].type == "text" and final.content[0].text.strip(), final.content


def tool_stream():
    with client.messages.stream(model=model, max_tokens=200, extra_body={"temperature": 0}, tools=[TOOL],
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": ASK_TOOL}]) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and "content_block_start" in kinds and kinds[-1] == "message_stop", kinds
    assert final.stop_reason == "tool_use", final
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather", final.content
    validate(uses[0].input, WEATHER_SCHEMA)


def unknown_model():
    try:
        client.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    except anthropic.NotFoundError as e:
        assert e.status_code == 404 and e.body["type"] == "error", e.body
        return
    raise AssertionError("an unknown model was accepted")


def stream_cancel():
    cancel_by_closing(base, lambda: client.messages.create(
        model=model, max_tokens=400, extra_body={"temperature": 0}, stream=True,
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}]), events=4)


for name, fn in [("create", create), ("stream", stream), ("tool_round_trip", tool_round_trip), ("tool_stream", tool_stream),
                 ("unknown_model", unknown_model), ("stream_cancel", stream_cancel)]:
    check("anthropic", name, fn)
sys.exit(summary("anthropic"))
