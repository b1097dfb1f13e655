"""The official `openai` Python client: tool calls, structured output, logprobs and sampling fields.

Usage: openai_tools_check.py BASE_URL MODEL. The stack runs one single-slot pool started with a
tool-capable chat template (the Llama 3.1 one from the pinned llama.cpp source). Exits non-zero on
the first failed check.
"""
import json
import sys

import openai

from common import ASK_TOOL, RESULT, WEATHER_SCHEMA, cancel_by_closing, check, summary, validate

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused-in-open-mode", max_retries=0, timeout=120)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": WEATHER_SCHEMA,
    },
}
ASK = [{"role": "user", "content": ASK_TOOL}]


def check_call(name, arguments):
    assert name == "get_weather", name
    args = json.loads(arguments)
    validate(args, WEATHER["function"]["parameters"])
    assert args["city"].strip(), args


def tool_loop():
    r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=200)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", (c.finish_reason, c.message)
    assert c.message.tool_calls and len(c.message.tool_calls) == 1, c.message
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.id, call
    check_call(call.function.name, call.function.arguments)
    assert r.usage.completion_tokens > 0, r.usage
    messages = ASK + [c.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=48)
    f = final.choices[0]
    assert f.finish_reason in ("stop", "length") and not f.message.tool_calls, f
    assert f.message.content and f.message.content.strip(), f


def streamed_call(messages, **kw):
    """Streams one answer; returns (text, {index: [id, name, arguments]}, finish_reason)."""
    stream = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], temperature=0, stream=True, **kw)
    text, calls, finish = "", {}, None
    for chunk in stream:
        for ch in chunk.choices:
            d = ch.delta
            if d.content:
                text += d.content
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, [None, "", ""])
                if tc.id:
                    assert entry[0] is None, "a call's id comes once"
                    entry[0] = tc.id
                if tc.function and tc.function.name:
                    entry[1] += tc.function.name
                if tc.function and tc.function.arguments:
                    entry[2] += tc.function.arguments
            if ch.finish_reason:
                finish = ch.finish_reason
    return text, calls, finish


def tool_loop_stream():
    _, calls, finish = streamed_call(ASK, tool_choice="required", max_tokens=200)
    assert finish == "tool_calls", (finish, calls)
    assert list(calls) == [0], calls
    call_id, name, arguments = calls[0]
    assert call_id, calls
    check_call(name, arguments)
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": RESULT},
    ]
    text, calls, finish = streamed_call(messages, tool_choice="none", max_tokens=48)
    assert finish in ("stop", "length") and not calls, (finish, calls)
    assert text.strip(), text


def named_tool_choice():
    r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=200,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
    check_call(c.message.tool_calls[0].function.name, c.message.tool_calls[0].function.arguments)


SCHEMA = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}, "count": {"type": "integer"}},
    "required": ["color", "count"],
    "additionalProperties": False,
}


def structured_output_with_logprobs():
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Pick a color and a count."}], temperature=0, max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}},
        logprobs=True, top_logprobs=2)
    c = r.choices[0]
    validate(json.loads(c.message.content), SCHEMA)
    lps = c.logprobs.content
    assert lps, c.logprobs
    assert "".join(t.token for t in lps) == c.message.content, ([t.token for t in lps], c.message.content)
    for t in lps:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2, t
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob, t


def structured_output_stream():
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Pick a color and a count."}], temperature=0, max_tokens=48, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}}, logprobs=True)
    text, tokens = "", ""
    for chunk in stream:
        for ch in chunk.choices:
            text += ch.delta.content or ""
            if ch.logprobs and ch.logprobs.content:
                tokens += "".join(t.token for t in ch.logprobs.content)
    validate(json.loads(text), SCHEMA)
    assert tokens == text, (tokens, text)


def json_object():
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Describe Paris in JSON."}], temperature=0,
                                       max_tokens=64, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content
    else:
        assert r.choices[0].message.content.lstrip().startswith("{"), r.choices[0].message.content


def completion_logprobs():
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert lp and lp.tokens and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset), lp
    assert "".join(lp.tokens) == r.choices[0].text, (lp.tokens, r.choices[0].text)
    assert all(len(t) >= 1 for t in lp.top_logprobs), lp.top_logprobs
    assert lp.text_offset[0] == 0, lp.text_offset


def sampling_fields():
    ask = dict(model=model, prompt="The capital of France is", max_tokens=3, temperature=0, seed=7)
    # Token 28 is "," in the dev model's vocabulary: a +100 bias forces it, a -100 bias bans it.
    forced = client.completions.create(**ask, logit_bias={"28": 100})
    assert forced.choices[0].text == ",,,", forced.choices[0].text
    banned = client.completions.create(model=model, prompt="a, b, c, d, e", max_tokens=6, temperature=0, logit_bias={"28": -100})
    assert "," not in banned.choices[0].text, banned.choices[0].text
    penalized = client.completions.create(**ask, presence_penalty=0.5, frequency_penalty=0.5, stop=["\n"])
    assert penalized.choices[0].text, penalized
    assert client.completions.create(**ask).choices[0].text == client.completions.create(**ask).choices[0].text, "seeded greedy runs repeat"


def refusals():
    for kw, param in [({"n": 2}, "n"), ({"logit_bias": {"x": 1}}, "logit_bias.x"), ({"presence_penalty": 5}, "presence_penalty"),
                      ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
                      ({"tools": [WEATHER], "logprobs": True}, "logprobs")]:
        try:
            client.chat.completions.create(model=model, messages=ASK, max_tokens=4, **kw)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body.get("param") == param, (param, e.body)
        else:
            raise AssertionError(f"{kw} was accepted")


def tool_stream_cancel():
    cancel_by_closing(base, lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=400, stream=True))


for name, fn in [("tool_loop", tool_loop), ("tool_loop_stream", tool_loop_stream), ("named_tool_choice", named_tool_choice),
                 ("structured_output_logprobs", structured_output_with_logprobs), ("structured_output_stream", structured_output_stream),
                 ("json_object", json_object), ("completion_logprobs", completion_logprobs), ("sampling_fields", sampling_fields),
                 ("refusals", refusals), ("tool_stream_cancel", tool_stream_cancel)]:
    check("openai", name, fn)
sys.exit(summary("openai tools"))
