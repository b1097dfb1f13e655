"""The official `openai` Python client against llama-orch's `/v1/embeddings`.

Usage: embeddings_check.py BASE_URL MODEL DIMENSION. The stack runs one embedding pool
(`embedding = true`) and nothing else. Exits non-zero on the first failed check.
"""
import json
import math
import sys
import urllib.request

import openai

from common import check, summary, wait_idle

base, model, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=base + "/v1", api_key="unused-in-open-mode", max_retries=0, timeout=120)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def one():
    r = client.embeddings.create(model=model, input="The sky is blue.")
    assert r.object == "list" and r.model == model and len(r.data) == 1, r
    v = r.data[0].embedding
    assert len(v) == dim, (len(v), dim)
    assert all(math.isfinite(x) for x in v) and any(x != 0 for x in v), v[:8]
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens, r.usage


def float_and_base64_agree():
    # The client asks for base64 unless told otherwise and decodes it; float is the plain form.
    b = client.embeddings.create(model=model, input="Float or base64.").data[0].embedding
    f = client.embeddings.create(model=model, input="Float or base64.", encoding_format="float").data[0].embedding
    # Float JSON carries the shortest decimal of each f32; base64 its exact bits.
    assert len(f) == dim and max(abs(x - y) for x, y in zip(f, b)) < 1e-6, max(abs(x - y) for x, y in zip(f, b))


def deterministic():
    a = client.embeddings.create(model=model, input="The same text.").data[0].embedding
    b = client.embeddings.create(model=model, input="The same text.").data[0].embedding
    assert a == b, max(abs(x - y) for x, y in zip(a, b))
    c = client.embeddings.create(model=model, input="Something else entirely, about trains.").data[0].embedding
    assert a != c and cosine(a, c) < 0.9999, cosine(a, c)


def batch():
    texts = ["red apples", "green pears", "blue skies"]
    r = client.embeddings.create(model=model, input=texts)
    assert [d.index for d in r.data] == [0, 1, 2] and all(len(d.embedding) == dim for d in r.data), r.data
    for t, d in zip(texts, r.data):
        alone = client.embeddings.create(model=model, input=t).data[0].embedding
        assert cosine(alone, d.embedding) > 0.999, (t, cosine(alone, d.embedding))


def tokens():
    r = client.embeddings.create(model=model, input=[[504, 5838, 314], [1780, 314]])
    assert len(r.data) == 2 and all(len(d.embedding) == dim for d in r.data), r.data
    one = client.embeddings.create(model=model, input=[504, 5838, 314])
    assert cosine(one.data[0].embedding, r.data[0].embedding) > 0.999


def placement_matches_capability():
    pools = json.loads(urllib.request.urlopen(base + "/v2/pools", timeout=10).read())["pools"]
    assert pools and all(p["workload"] == "embedding" for p in pools), pools
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    except openai.APIStatusError as e:
        assert e.body.get("code") == "MODEL_NOT_AVAILABLE" and "completion" in e.body.get("message", ""), e.body
    else:
        raise AssertionError("a chat task was accepted with only an embedding pool")
    wait_idle(base)


def refusals():
    for kw, param in [({"encoding_format": "hex"}, "encoding_format"), ({"dimensions": 8}, "dimensions")]:
        try:
            client.embeddings.create(model=model, input="x", **kw)
        except openai.BadRequestError as e:
            assert e.body.get("param") == param, e.body
        else:
            raise AssertionError(f"{kw} was accepted")


def metered():
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    started = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("tasks_started_total{"))
    assert started >= 10, [l for l in text.splitlines() if l.startswith("tasks_")][:10]


for name, fn in [("one", one), ("float_and_base64_agree", float_and_base64_agree), ("deterministic", deterministic), ("batch", batch), ("tokens", tokens),
                 ("placement_matches_capability", placement_matches_capability), ("refusals", refusals), ("metered", metered)]:
    check("embeddings", name, fn)
sys.exit(summary("embeddings"))
