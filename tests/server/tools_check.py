#!/usr/bin/env python3
"""lmtune server's tools, reasoning split and structured output on models/default, through the
official openai clients. models/default knows nothing of tools, so calls are made by forcing them
(tool_choice required / a named function: constrained decoding writes the call, the server's parser
must read it back); JSON output comes from a sampled (random-ish) model constrained to a schema.

  tools      a forced call whole and streamed (tool_calls, finish_reason tool_calls), history with
             tool_calls and tool messages, tool_choice auto / none, refusals naming the field
  reasoning  a template whose prompt opens <think>: the answer goes to `reasoning`, equal to the
             same prompt's raw completion, whole and streamed
  schema     response_format json_schema and json_object at temperature 1 over several seeds: every
             answer parses and validates (and without the constraint it does not); unsupported
             keywords refused with their path
  npm        the openai npm client (build/npm-openai) for chat, streaming, tools and json_schema
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_check  # noqa: E402
from server_check import Server, check, FAILS  # noqa: E402

# models/default's own template plus tools in the system turn and the hermes call markup, so the
# server reads the template's call format as <tool_call>.
TOOLS_TEMPLATE = (
    "{% if tools %}<|system|>\nYou may call: {{ tools | tojson }} as <tool_call>{\"name\": ..., \"arguments\": ...}"
    "</tool_call><|end|>\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# The same conversation markup with the other formats' markers, so the server picks their parsers.
MISTRAL_TEMPLATE = TOOLS_TEMPLATE.replace("<tool_call>", "[TOOL_CALLS][").replace("</tool_call>", "]")
LLAMA_TEMPLATE = TOOLS_TEMPLATE.replace("<tool_call>", "<|python_tag|>").replace("</tool_call>", "")
PYTHONIC_TEMPLATE = TOOLS_TEMPLATE.replace("<tool_call>", "[func_name1(").replace("</tool_call>", ")]")
THINK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n<think>\n{% endif %}")

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 12},
                          "unit": {"enum": ["celsius", "fahrenheit"]},
                          "days": {"type": "integer"}},
           "required": ["city", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time now",
                                           "parameters": {"type": "object", "properties": {}}}}]
PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 16},
                         "age": {"type": "integer"},
                         "height": {"type": "number"},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
                         "alive": {"type": "boolean"},
                         "pet": {"type": ["string", "null"], "maxLength": 8},
                         "kind": {"const": "person"},
                         "size": {"enum": ["S", "M", "L", 42]}},
          "required": ["name", "age", "tags", "kind"], "additionalProperties": False}


def valid(v, s):
    """The schema subset lmtune enforces, checked independently of it."""
    if "const" in s:
        return v == s["const"] and type(v) is type(s["const"])
    if "enum" in s:
        return any(v == e and type(v) is type(e) for e in s["enum"])
    t = s.get("type")
    if isinstance(t, list):
        return any(valid(v, dict(s, type=x)) for x in t)
    if t == "object":
        if not isinstance(v, dict) or any(r not in v for r in s.get("required", [])):
            return False
        props = s.get("properties", {})
        if s.get("additionalProperties") is False and any(k not in props for k in v):
            return False
        return all(valid(x, props[k]) for k, x in v.items() if k in props)
    if t == "array":
        return (isinstance(v, list) and len(v) >= s.get("minItems", 0) and len(v) <= s.get("maxItems", 1 << 30)
                and all(valid(x, s.get("items", {})) for x in v))
    if t == "string":
        return isinstance(v, str) and s.get("minLength", 0) <= len(v) <= s.get("maxLength", 1 << 30)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "boolean":
        return isinstance(v, bool)
    if t == "null":
        return v is None
    return True


def client_for(srv):
    return srv.openai_client(api_key="unused", max_retries=0)


def check_call(call, what):
    check(call.type == "function" and call.id.startswith("call_") and len(call.id) == 29, f"{what}: call {call}")
    args = json.loads(call.function.arguments)
    params = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.function.name)
    check(valid(args, params), f"{what}: arguments {args} do not match {params}")
    return args


def case_tools(a):
    import openai
    srv = Server(a.lmtune, a.model, "--chat-template", TOOLS_TEMPLATE)
    try:
        c = client_for(srv)
        msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
        named = {"type": "function", "function": {"name": "get_weather"}}
        for seed in (1, 2, 3):
            r = c.chat.completions.create(model=a.model, messages=msgs, tools=TOOLS, tool_choice=named,
                                          temperature=1.0, seed=seed, max_tokens=120)
            ch = r.choices[0]
            check(ch.finish_reason == "tool_calls", f"forced call finish_reason: {ch.finish_reason} {ch.message}")
            calls = ch.message.tool_calls or []
            check(len(calls) == 1 and calls[0].function.name == "get_weather", f"forced call: {ch.message}")
            check(ch.message.content is None, f"content beside a forced call: {ch.message.content!r}")
            if calls:
                check_call(calls[0], f"seed {seed}")

        # Streamed, any tool: delta.tool_calls with an index, then finish_reason tool_calls.
        parts, finish, content = {}, None, ""
        for chunk in c.chat.completions.create(model=a.model, messages=msgs, tools=TOOLS, tool_choice="required",
                                               max_tokens=120, stream=True):
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                p = parts.setdefault(tc.index, {"id": tc.id, "name": "", "args": ""})
                p["name"] += tc.function.name or ""
                p["args"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        check(finish == "tool_calls" and list(parts) == [0], f"streamed call: {finish} {parts}")
        check(content == "", f"streamed content beside a forced call: {content!r}")
        if parts:
            p = parts[0]
            check(p["id"].startswith("call_") and p["name"] in ("get_weather", "get_time"), f"streamed call {p}")
            params = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == p["name"])
            check(valid(json.loads(p["args"]), params), f"streamed arguments {p}")

        # A conversation carrying the call and its result renders and answers.
        history = msgs + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C and sunny"}]
        r = c.chat.completions.create(model=a.model, messages=history, tools=TOOLS, max_tokens=8, temperature=0)
        short = c.chat.completions.create(model=a.model, messages=msgs, tools=TOOLS, max_tokens=8, temperature=0)
        check(r.usage.prompt_tokens > short.usage.prompt_tokens + 10, f"history with tool_calls: {r.usage}")
        # auto: this model writes no call, so its text stays content; none: the same.
        for choice in ("auto", "none"):
            r = c.chat.completions.create(model=a.model, messages=msgs, tools=TOOLS, tool_choice=choice,
                                          max_tokens=12, temperature=0)
            ch = r.choices[0]
            check(ch.finish_reason in ("stop", "length") and isinstance(ch.message.content, str)
                  and ch.message.content and not ch.message.tool_calls, f"tool_choice {choice}: {ch}")

        def refused(what, param, messages=msgs, **kw):
            try:
                c.chat.completions.create(model=a.model, messages=messages, max_tokens=4, **kw)
                check(False, f"{what} was accepted")
            except openai.BadRequestError as e:
                got = (e.body or {}).get("param") if isinstance(e.body, dict) else None
                check(e.status_code == 400 and got == param, f"{what}: {e.status_code} {e.body}")

        refused("unknown tool", "tool_choice.function.name", tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "nope"}})
        bad = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "string", "pattern": "^a"}}}}}]
        refused("a forced tool with an unsupported keyword", "tools[0].function.parameters.properties.x.pattern",
                tools=bad, tool_choice="required")
        refused("a tool message without tool_call_id", "messages[1].tool_call_id", tools=TOOLS,
                messages=msgs + [{"role": "tool", "content": "x"}])
    finally:
        srv.stop()
    # Mistral's, Llama 3.1's and the pythonic format: the forced call is written in each and parsed back.
    for template, marker, written in ((MISTRAL_TEMPLATE, "[TOOL_CALLS]", "[TOOL_CALLS][{\"name\":\"get_weather\""),
                                      (LLAMA_TEMPLATE, "<|python_tag|>", "{\"name\":\"get_weather\",\"parameters\":"),
                                      (PYTHONIC_TEMPLATE, "func_name1(", "[get_weather(city=\"")):
        assert marker in template and "<tool_call>" not in template
        srv = Server(a.lmtune, a.model, "--chat-template", template)
        try:
            c = client_for(srv)
            r = c.chat.completions.create(model=a.model, messages=msgs, tools=TOOLS, temperature=1.0, seed=5,
                                          tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                          max_tokens=120, logprobs=True)
            ch = r.choices[0]
            raw = "".join(t.token for t in ch.logprobs.content)  # the text the model wrote
            check(raw.startswith(written), f"{marker} call written as {raw!r}")
            calls = ch.message.tool_calls or []
            check(ch.finish_reason == "tool_calls" and len(calls) == 1 and calls[0].function.name == "get_weather",
                  f"{marker} forced call: {ch}")
            if calls:
                check_call(calls[0], marker)
        finally:
            srv.stop()


def case_reasoning(a):
    srv = Server(a.lmtune, a.model, "--chat-template", THINK_TEMPLATE)
    try:
        c = client_for(srv)
        msgs = [{"role": "user", "content": "Define: lantern"}]
        r = c.chat.completions.create(model=a.model, messages=msgs, max_tokens=24, temperature=0)
        m = r.choices[0].message
        reasoning = getattr(m, "reasoning", None)
        st, raw = srv.post("/v1/completions", {"prompt": "<|user|>\nDefine: lantern<|end|>\n<|assistant|>\n<think>\n",
                                               "max_tokens": 24, "temperature": 0})
        want = raw["choices"][0]["text"] if st == 200 else None
        check(want and "</think>" not in want, f"the raw completion: {st} {raw}")
        check(reasoning == want and m.content == "", f"reasoning split: {reasoning!r} / {m.content!r} vs {want!r}")
        streamed, content = "", ""
        for chunk in c.chat.completions.create(model=a.model, messages=msgs, max_tokens=24, temperature=0,
                                               stream=True):
            if chunk.choices:
                streamed += getattr(chunk.choices[0].delta, "reasoning", None) or ""
                content += chunk.choices[0].delta.content or ""
        check(streamed == want and content == "", f"streamed reasoning: {streamed!r} / {content!r}")
    finally:
        srv.stop()


def case_schema(a):
    import openai
    srv = Server(a.lmtune, a.model)
    try:
        c = client_for(srv)
        msgs = [{"role": "user", "content": "Describe a person as JSON"}]
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
        for seed in range(6):
            r = c.chat.completions.create(model=a.model, messages=msgs, response_format=fmt, temperature=1.0,
                                          seed=seed, max_tokens=300)
            text, finish = r.choices[0].message.content, r.choices[0].finish_reason
            try:
                v = json.loads(text)
            except ValueError:
                v = None
                check(False, f"seed {seed}: not JSON ({finish}): {text!r}")
            check(finish == "stop" and valid(v, PERSON), f"seed {seed}: {finish} {text!r}")
        # Without the constraint the same sampled model writes no JSON: the check above can fail.
        r = c.chat.completions.create(model=a.model, messages=msgs, temperature=1.0, seed=0, max_tokens=40)
        try:
            json.loads(r.choices[0].message.content)
            check(False, f"unconstrained text parsed as JSON: {r.choices[0].message.content!r}")
        except ValueError:
            pass
        text = ""
        for chunk in c.chat.completions.create(model=a.model, messages=msgs, response_format=fmt, temperature=1.0,
                                               seed=11, max_tokens=300, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        check(valid(json.loads(text), PERSON), f"streamed json_schema: {text!r}")
        r = c.chat.completions.create(model=a.model, messages=msgs, response_format={"type": "json_object"},
                                      temperature=0.7, seed=5, max_tokens=300)
        ch = r.choices[0]
        if ch.finish_reason == "stop":
            check(isinstance(json.loads(ch.message.content), dict), f"json_object: {ch.message.content!r}")
        else:  # unbounded strings may run past max_tokens; the prefix is still a JSON object's start
            check(ch.message.content.startswith("{"), f"json_object prefix: {ch.message.content!r}")
        for schema, param in (({"type": "string", "pattern": "a+"}, "response_format.json_schema.schema.pattern"),
                              ({"$ref": "#/defs/x"}, "response_format.json_schema.schema.$ref"),
                              ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
                               "response_format.json_schema.schema.properties.n.minimum")):
            try:
                c.chat.completions.create(model=a.model, messages=msgs, max_tokens=4, response_format={
                    "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
                check(False, f"{schema} accepted")
            except openai.BadRequestError as e:
                check(e.body.get("param") == param and "not supported" in e.body.get("message", ""),
                      f"{schema}: {e.body}")
        lines = [l for l in srv.lines if "POST /v1/chat/completions 200" in l]
        print("\n".join(lines[:3]))
    finally:
        srv.stop()


NPM_SCRIPT = r"""
import OpenAI from "openai";
const [port, model] = process.argv.slice(2);
const c = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "unused", maxRetries: 0 });
const msgs = [{ role: "user", content: "What is the weather in Paris?" }];
const out = {};
let r = await c.chat.completions.create({ model, messages: msgs, max_tokens: 8, temperature: 0 });
out.chat = r.choices[0].message.content;
let text = "";
for await (const ch of await c.chat.completions.create({ model, messages: msgs, max_tokens: 8, temperature: 0, stream: true }))
  text += ch.choices[0]?.delta?.content ?? "";
out.stream = text;
const tools = JSON.parse(process.env.TOOLS);
r = await c.chat.completions.create({ model, messages: msgs, tools, max_tokens: 120, tool_choice: "required" });
out.tool_finish = r.choices[0].finish_reason;
out.tool_calls = r.choices[0].message.tool_calls;
r = await c.chat.completions.create({ model, messages: msgs, max_tokens: 300, temperature: 1, seed: 3,
  response_format: { type: "json_schema", json_schema: { name: "person", schema: JSON.parse(process.env.PERSON) } } });
out.json = r.choices[0].message.content;
console.log(JSON.stringify(out));
"""


def case_npm(a):
    node = shutil.which("node")
    mod = os.path.join(a.npm_dir, "node_modules", "openai")
    if not node or not os.path.isdir(mod):
        print(f"SKIPPED: needs node and the openai npm package in {a.npm_dir} (node: {node})")
        sys.exit(77)
    script = os.path.join(a.npm_dir, "lmtune_check.mjs")
    with open(script, "w") as f:
        f.write(NPM_SCRIPT)
    srv = Server(a.lmtune, a.model, "--chat-template", TOOLS_TEMPLATE)
    try:
        env = dict(os.environ, TOOLS=json.dumps(TOOLS), PERSON=json.dumps(PERSON))
        p = subprocess.run([node, script, str(srv.port), a.model], capture_output=True, text=True, env=env,
                           timeout=100, cwd=a.npm_dir)
        check(p.returncode == 0, f"node client failed: {p.stderr[-2000:]}")
        if p.returncode == 0:
            out = json.loads(p.stdout.strip().splitlines()[-1])
            print("npm client:", json.dumps(out)[:800])
            check(out["chat"] and out["stream"] == out["chat"], f"npm chat / stream: {out}")
            calls = out["tool_calls"] or []
            check(out["tool_finish"] == "tool_calls" and len(calls) == 1, f"npm tools: {out}")
            if calls:
                fn = calls[0]["function"]
                params = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == fn["name"])
                check(valid(json.loads(fn["arguments"]), params), f"npm tool arguments: {fn}")
            check(valid(json.loads(out["json"]), PERSON), f"npm json_schema: {out['json']!r}")
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--case", required=True, choices=["tools", "reasoning", "schema", "npm"])
    ap.add_argument("--npm-dir", default="")
    a = ap.parse_args()
    a.model = os.path.join(a.root, "models", "default")
    {"tools": case_tools, "reasoning": case_reasoning, "schema": case_schema, "npm": case_npm}[a.case](a)
    if FAILS:
        print(f"{len(FAILS)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print(f"server {a.case}: all checks passed")


if __name__ == "__main__":
    main()
