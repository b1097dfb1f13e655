"""The official `openai` Python client against llama-orch's Responses API (`/v1/responses`).

Usage: responses_check.py BASE_URL MODEL. The stack runs one single-slot pool started with a
tool-capable chat template. Exits non-zero on the first failed check.
"""
import json
import sys

import openai

from common import ASK_TOOL, RESULT, WEATHER_SCHEMA, cancel_by_closing, check, summary, validate

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused-in-open-mode", max_retries=0, timeout=120)
TOOL = {"type": "function", "name": "get_weather", "description": "Get the weather for a city", "parameters": WEATHER_SCHEMA}


def create():
    r = client.responses.create(model=model, input="Name a color.", instructions="Answer briefly.", max_output_tokens=16, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response", r
    assert r.status in ("completed", "incomplete") and r.output_text.strip(), r
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage


def stream():
    events = list(client.responses.create(model=model, input="Count to five.", max_output_tokens=24, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[1] == "response.in_progress", kinds
    assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
    assert [e.sequence_number for e in events] == list(range(len(events))), "sequence numbers count from 0"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.strip() and events[-1].response.output_text == text, (text, events[-1].response)


def function_call():
    ask = [{"role": "user", "content": ASK_TOOL}]
    r = client.responses.create(model=model, input=ask, tools=[TOOL], tool_choice="required", max_output_tokens=200, temperature=0)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id, r.output
    validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)
    follow = ask + [calls[0].model_dump(exclude_none=True), {"type": "function_call_output", "call_id": calls[0].call_id, "output": RESULT}]
    final = client.responses.create(model=model, input=follow, tools=[TOOL], max_output_tokens=48, temperature=0)
    assert not [o for o in final.output if o.type == "function_call"], final.output
    assert final.output_text.strip(), final


def function_call_stream():
    events = list(client.responses.create(model=model, input=ASK_TOOL, tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"},
                                          max_output_tokens=200, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds, kinds
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
    assert done.arguments == args, (done.arguments, args)
    validate(json.loads(args), WEATHER_SCHEMA)
    final = events[-1].response
    assert final.status == "completed" and [o for o in final.output if o.type == "function_call"], final


def refused():
    try:
        client.responses.create(model=model, input="x", previous_response_id="resp_1")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body.get("param") == "previous_response_id", e.body
        return
    raise AssertionError("previous_response_id was accepted")


def stream_cancel():
    cancel_by_closing(base, lambda: client.responses.create(
        model=model, input="Count from one to one hundred in words.", max_output_tokens=400, temperature=0, stream=True), events=5)


for name, fn in [("create", create), ("stream", stream), ("function_call", function_call), ("function_call_stream", function_call_stream),
                 ("refused", refused), ("stream_cancel", stream_cancel)]:
    check("responses", name, fn)
sys.exit(summary("responses"))
