"""Helpers shared by the client check scripts: check reporting, a small JSON Schema check, the
disconnect-cancel counter and the idle-pool wait."""
import json
import time
import urllib.request

results = []

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ASK_TOOL = "Call get_weather for Paris as JSON."
RESULT = json.dumps({"temperature_c": 18, "sky": "sunny"})


def check(prefix, name, fn):
    try:
        fn()
        results.append((name, True, ""))
        print(f"{prefix} {name} ... ok", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure with its message
        results.append((name, False, repr(e)))
        print(f"{prefix} {name} ... FAILED: {e!r}", flush=True)


def summary(prefix):
    failed = [r for r in results if not r[1]]
    print(f"{prefix}: {len(results) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


def validate(value, schema, path="$"):
    """A small JSON Schema check (type, properties, required, additionalProperties, enum, items)."""
    t = schema.get("type")
    kinds = {"object": dict, "string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list}
    if t:
        assert isinstance(value, kinds[t]) and not (t in ("integer", "number") and isinstance(value, bool)), f"{path}: {value!r} is not {t}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if t == "object":
        for k in schema.get("required", []):
            assert k in value, f"{path}: missing {k}"
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(props)
            assert not extra, f"{path}: unexpected {extra}"
        for k, v in value.items():
            if k in props:
                validate(v, props[k], f"{path}.{k}")
    if t == "array" and "items" in schema:
        for i, v in enumerate(value):
            validate(v, schema["items"], f"{path}[{i}]")


def canceled_total(base, reason):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tasks_canceled_total{") and f'reason="{reason}"' in line)


def wait_idle(base):
    """Waits until every pool has all slots free: pool-managerd frees a slot only once the engine's
    /slots shows it free."""
    deadline = time.time() + 30
    while time.time() < deadline:
        pools = json.loads(urllib.request.urlopen(base + "/v2/pools", timeout=10).read())["pools"]
        if all(p["slots_free"] == p["slots_total"] and p["queued"] == 0 for p in pools):
            return
        time.sleep(0.05)
    raise AssertionError("the pool did not become idle")


def cancel_by_closing(base, open_stream, events=2):
    """Opens a stream, reads a few events, closes it; the task must be canceled (reason
    disconnect) and the engine slot freed."""
    wait_idle(base)
    before = canceled_total(base, "disconnect")
    stream = open_stream()
    for i, _ in enumerate(stream):
        if i >= events:
            break
    stream.close()
    deadline = time.time() + 15
    while time.time() < deadline and canceled_total(base, "disconnect") <= before:
        time.sleep(0.05)
    assert canceled_total(base, "disconnect") > before, "closing the stream did not cancel the task"
    wait_idle(base)
