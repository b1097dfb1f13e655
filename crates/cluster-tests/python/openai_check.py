"""The official `openai` Python client against llama-orch's OpenAI-compatible API.

Usage: openai_check.py BASE_URL MODEL. The stack must run one single-slot pool with
queue.capacity = 1 (for the 429 path). Exits non-zero on the first failed check.
"""
import sys
import threading
import time
import urllib.request

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused-in-open-mode", max_retries=0, timeout=60)
results = []


def check(name, fn):
    try:
        fn()
        results.append((name, True, ""))
        print(f"openai {name} ... ok", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure with its message
        results.append((name, False, repr(e)))
        print(f"openai {name} ... FAILED: {e!r}", flush=True)


def models():
    ids = [m.id for m in client.models.list().data]
    assert model in ids, ids


def chat():
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a color."}], temperature=0, seed=1, max_tokens=16)
    assert r.id.startswith("chatcmpl-"), r.id
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip(), r
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def chat_stream():
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count to five."}], temperature=0, seed=1, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True})
    text, usage, finish, chunks = "", None, None, 0
    for c in stream:
        if c.usage:
            usage = c.usage
        for ch in c.choices:
            if ch.delta and ch.delta.content:
                text += ch.delta.content
                chunks += 1
            if ch.finish_reason:
                finish = ch.finish_reason
    assert text.strip() and finish in ("stop", "length"), (text, finish)
    assert usage is not None and usage.completion_tokens >= chunks > 0, (usage, chunks)


def completion():
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.id.startswith("cmpl-") and r.choices[0].text, r
    assert r.usage.completion_tokens > 0


def bad_request():
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body and e.body.get("code") == "INVALID_PARAMS", e.body
        assert e.body.get("param") == "n", e.body
        return
    raise AssertionError("n = 2 was accepted")


def unknown_model():
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
        return
    raise AssertionError("an unknown model was accepted")


def canceled_total(reason):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tasks_canceled_total{") and f'reason="{reason}"' in line)


def long_stream():
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
                                          temperature=0, seed=1, max_tokens=400, stream=True)


def wait_idle():
    import json
    deadline = time.time() + 15
    while time.time() < deadline:
        pools = json.loads(urllib.request.urlopen(base + "/v2/pools", timeout=10).read())["pools"]
        if all(p["slots_free"] == p["slots_total"] and p["queued"] == 0 for p in pools):
            return
        time.sleep(0.05)
    raise AssertionError("the pool did not become idle")


def rate_limited():
    # One runs, one queues (capacity 1), the third is refused with 429 and a backoff.
    wait_idle()
    holders = [long_stream(), long_stream()]
    try:
        long_stream()
    except openai.RateLimitError as e:
        assert e.status_code == 429, e
        assert int(e.response.headers["retry-after"]) >= 1 and int(e.response.headers["x-backoff-ms"]) >= 1000
        assert e.body.get("code") == "ADMISSION_REJECT", e.body
    else:
        raise AssertionError("a third request was admitted into a full queue")
    finally:
        for h in holders:
            h.close()


def client_cancel():
    before = canceled_total("disconnect")
    stream = long_stream()
    for i, _ in enumerate(stream):
        if i >= 3:
            break
    stream.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        if canceled_total("disconnect") > before:
            return
        time.sleep(0.05)
    raise AssertionError("closing the stream did not cancel the task")


for name, fn in [("models", models), ("chat", chat), ("chat_stream", chat_stream), ("completion", completion),
                 ("bad_request", bad_request), ("unknown_model", unknown_model), ("client_cancel", client_cancel),
                 ("rate_limited", rate_limited)]:
    check(name, fn)
failed = [r for r in results if not r[1]]
print(f"openai: {len(results) - len(failed)} passed, {len(failed)} failed", flush=True)
sys.exit(1 if failed else 0)
