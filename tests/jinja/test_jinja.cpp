// Unit tests of the chat-template interpreter: each statement, expression form, filter, test
// and method against the string jinja2 (trim_blocks, lstrip_blocks) renders.
#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer/jinja/jinja.h"

using lmtune::jinja::Template;
using json = nlohmann::ordered_json;

namespace {

std::string render(const std::string& src, const json& ctx = json::object()) {
  return Template::parse(src).render(ctx);
}

std::string error_of(const std::string& src, const json& ctx = json::object()) {
  try {
    render(src, ctx);
  } catch (const lmtune::Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Jinja, TextAndOutput) {
  EXPECT_EQ(render("hello"), "hello");
  EXPECT_EQ(render("a{{ 1 + 2 }}b"), "a3b");
  EXPECT_EQ(render("{{ x }}", {{"x", "y"}}), "y");
  EXPECT_EQ(render("{{ missing }}|"), "|");
  EXPECT_EQ(render("line\n"), "line");  // one trailing newline dropped, as jinja2 does
  EXPECT_EQ(render("a\r\nb"), "a\nb");
}

TEST(Jinja, PythonPrinting) {
  EXPECT_EQ(render("{{ true }} {{ False }} {{ none }} {{ None }}"), "True False None None");
  EXPECT_EQ(render("{{ 1.0 }} {{ 0.5 }} {{ 1e-5 }} {{ 1e16 }} {{ 2.5e3 }} {{ 7 / 2 }} {{ 4 / 2 }}"),
            "1.0 0.5 1e-05 1e+16 2500.0 3.5 2.0");
  // Float literals past the double range read as Python's float() reads them (fuzz_jinja's finding: std::stod threw).
  EXPECT_EQ(render("{{ 1e561 }} {{ -1e561 }} {{ 1e-400 }} {{ 99000000000000000009e561 > 1 }}"), "inf -inf 0.0 True");
  EXPECT_EQ(render("{{ ['a', 1, none, true] }}"), "['a', 1, None, True]");
  EXPECT_EQ(render("{{ {'k': 'v', 'n': [1.5]} }}"), "{'k': 'v', 'n': [1.5]}");
  EXPECT_EQ(render("{{ (1, 2) }} {{ (1,) }}"), "(1, 2) (1,)");
  EXPECT_EQ(render("{{ [\"it's\"] }}"), "[\"it's\"]");
  EXPECT_EQ(render("{{ x }}", {{"x", json::parse(R"({"b": 1, "a": [true, null]})")}}), "{'b': 1, 'a': [True, None]}");
}

TEST(Jinja, StringLiterals) {
  EXPECT_EQ(render(R"({{ 'a\nb' }}|{{ "q\"q" }}|{{ 'x' 'y' }}|{{ '\u00e9' }})"), "a\nb|q\"q|xy|\xc3\xa9");
}

TEST(Jinja, Arithmetic) {
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 + 2.5 }} {{ 3 - 5 }}"),
            "3 -4 1 2 1024 3.5 -2");
  EXPECT_EQ(render("{{ 'a' + 'b' }} {{ 'ab' * 2 }} {{ [1] + [2] }} {{ 1 ~ 'x' ~ none }}"), "ab abab [1, 2] 1xNone");
  EXPECT_EQ(render("{{ -x|abs }}", {{"x", 3}}), "3");
  EXPECT_EQ(render("{{ '%s-%s' % ('a', 1) }}"), "a-1");
}

TEST(Jinja, ComparisonsAndLogic) {
  EXPECT_EQ(render("{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ 2 >= 3 }} {{ 1 != 2 }}"), "True True False True");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 1 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}"),
            "True True True True");
  EXPECT_EQ(render("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not [] }} {{ '' or [] }}"), "x y True []");
  EXPECT_EQ(render("{{ 'a' if x else 'b' }}{{ 'c' if not x }}", {{"x", false}}), "bc");
}

TEST(Jinja, AttributesAndSubscripts) {
  json ctx = {{"m", {{"role", "user"}, {"content", "hi"}}}, {"l", {1, 2, 3, 4, 5}}};
  EXPECT_EQ(render("{{ m.role }} {{ m['content'] }} {{ m.nope }}|{{ m.nope is defined }}", ctx), "user hi |False");
  EXPECT_EQ(render("{{ l[0] }} {{ l[-1] }} {{ l[1:3] }} {{ l[::-1] }} {{ l[::2] }} {{ l[-2:] }} {{ l.1 }}", ctx),
            "1 5 [2, 3] [5, 4, 3, 2, 1] [1, 3, 5] [4, 5] 2");
  EXPECT_EQ(render("{{ 'hello'[1:] }} {{ 'hello'[::-1] }} {{ 'h\xc3\xa9llo'[1] }}"), "ello olleh \xc3\xa9");
  // As jinja2's default Undefined: looking inside an undefined value fails.
  EXPECT_NE(error_of("{{ m.nope.deeper is defined }}", ctx).find("'nope'"), std::string::npos);
  EXPECT_NE(error_of("{{ foo.bar }}").find("'foo' is undefined"), std::string::npos);
  EXPECT_EQ(render("{{ (foo|default({})).bar }}|{{ l[9] is defined }}|{{ foo|length }}", ctx), "|False|0");
}

TEST(Jinja, IfElifElse) {
  std::string t = "{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %}";
  EXPECT_EQ(render(t, {{"x", 1}}), "one");
  EXPECT_EQ(render(t, {{"x", 2}}), "two");
  EXPECT_EQ(render(t, {{"x", 5}}), "many");
}

TEST(Jinja, ForLoop) {
  json ctx = {{"xs", {"a", "b", "c"}}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", ctx),
            "1a,2b,3c");
  EXPECT_EQ(
      render("{% for x in xs %}{{ loop.index0 }}{{ loop.first }}{{ loop.revindex }}{{ loop.length }} {% endfor %}",
             ctx),
      "0True33 1False23 2False13 ");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }} {% endfor %}", ctx), "-b a-c b- ");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in xs if x != 'b' %}{{ x }}{{ loop.length }}{% endfor %}", ctx), "a2c2");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(render("{% for k in {'z': 1, 'a': 2} %}{{ k }}{% endfor %}"), "za");
  EXPECT_EQ(
      render("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}"
             "{{ x }}{% endfor %}"),
      "02");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.cycle('o', 'e') }}{% endfor %}", ctx), "oeo");
}

TEST(Jinja, ScopingAndNamespace) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(render("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}"),
            "4");
  EXPECT_EQ(render("{% if true %}{% set y = 3 %}{% endif %}{{ y }}"), "3");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a }}{{ b }}"), "12");
  // Body assignments are per iteration: x reads the outer value each time.
  EXPECT_EQ(render("{% set x = 0 %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{% endfor %}{{ x }}"), "000");
  EXPECT_EQ(render("{% set block %}hi {{ 1 }}{% endset %}[{{ block }}]"), "[hi 1]");
}

TEST(Jinja, Macros) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('a') }} {{ greet('b', '?') }} {{ greet(name='c', punct='.') }}"),
            "Hi a! Hi b? Hi c.");
  EXPECT_EQ(render("{% set g = 'G' %}{% macro m() %}{{ g }}{% endmacro %}{% for g in [1] %}{{ m() }}{% endfor %}"),
            "G");
}

TEST(Jinja, WhitespaceControl) {
  EXPECT_EQ(render("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(render("a\n  {%- if true -%}\n  b\n{%- endif %}"), "ab");
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it goes.
  EXPECT_EQ(render("{% if true %}\nx\n{% endif %}\ny"), "x\ny");
  EXPECT_EQ(render("  {% if true %}\n  x\n  {% endif %}\n"), "  x\n");
  EXPECT_EQ(render("a {% if true %}b{% endif %}"), "a b");  // not at line start: kept
  EXPECT_EQ(render("  {{ 'v' }}\n"), "  v");                // lstrip does not touch {{
  EXPECT_EQ(render("{# c #}\nx"), "x");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("{% if true +%}\nx{% endif %}"), "\nx");
  EXPECT_EQ(render("{% raw %}{{ not parsed }}{% endraw %}"), "{{ not parsed }}");
}

TEST(Jinja, Tests) {
  EXPECT_EQ(render("{{ x is defined }} {{ y is undefined }} {{ none is none }} {{ 'a' is string }} {{ 1 is number }}",
                   {{"x", 1}}),
            "True True True True True");
  EXPECT_EQ(
      render("{{ 1 is integer }} {{ 1.0 is float }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is sequence }}"),
      "True True True True True");
  EXPECT_EQ(render("{{ true is boolean }} {{ true is true }} {{ 0 is false }} {{ 4 is even }} {{ 3 is odd }}"),
            "True True False True True");
  EXPECT_EQ(
      render("{{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 'a' is eq 'a' }} {{ x is not none }}", {{"x", 1}}),
      "True False True True");
  EXPECT_EQ(render("{{ 'abc' is lower }} {{ 'aBc' is upper }}"), "True False");
}

TEST(Jinja, Filters) {
  EXPECT_EQ(render("{{ '  a b  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ [1, 2]|length }}|{{ 'ab'|count }}"), "a b|a|2|2");
  EXPECT_EQ(render("{{ 'aB'|upper }} {{ 'aB'|lower }} {{ 'hello wORLD'|title }} {{ 'hELLO'|capitalize }}"),
            "AB ab Hello World Hello");
  EXPECT_EQ(render("{{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }} {{ [1, 2]|join(', ') }} {{ 'a-b'|replace('-', '+') }}"),
            "1 3 1, 2 a+b");
  EXPECT_EQ(render("{{ x|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ none|d('n', true) }}"),
            "d  d n");
  EXPECT_EQ(render("{{ ['a', 'b']|map('upper')|list }} {{ [{'n': 1}, {'n': 2}]|map(attribute='n')|list }}"),
            "['A', 'B'] [1, 2]");
  EXPECT_EQ(
      render("{{ [1, 2, 3, 4]|select('even')|list }} {{ [1, 2, 3]|reject('odd')|list }} {{ [0, 1, '']|select|list }}"),
      "[2, 4] [2] [1]");
  std::string people = "{% set p = [{'n': 'a', 'ok': true}, {'n': 'b', 'ok': false}, {'n': 'c'}] %}";
  EXPECT_EQ(render(people +
                   "{{ p|selectattr('ok')|map(attribute='n')|join }} {{ p|rejectattr('ok')|map(attribute='n')|join }}"
                   " {{ p|selectattr('n', 'equalto', 'c')|list|length }}"),
            "a bc 1");
  EXPECT_EQ(
      render("{{ '42'|int + 1 }} {{ 'x'|int }} {{ 3.9|int }} {{ '2.5'|float }} {{ 2.567|round(2) }} {{ 2.5|round }}"),
      "43 0 3 2.5 2.57 2.0");
  EXPECT_EQ(render("{{ -3|abs }} {{ 5|string ~ 'x' }} {{ 'a'|safe }} {{ [3, 1, 2]|sort }} {{ [1, 1, 2]|unique|list }}"),
            "3 5x a [1, 2, 3] [1, 2]");
  EXPECT_EQ(render("{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}"), "a\n  b\n\n  c|  a\n  b");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2}|dictsort }} {{ {'k': 1}|items|list }} {{ 'a b  c'|wordcount }}"),
            "[('a', 2), ('b', 1)] [('k', 1)] 3");
  EXPECT_EQ(render("{{ [1, 2, 3]|batch(2)|list }} {{ [1, 2]|sum }} {{ [3, 1]|min }} {{ [3, 1]|max }}"),
            "[[1, 2], [3]] 3 1 3");
  EXPECT_EQ(render("{% filter upper %}abc{% endfilter %}"), "ABC");
}

TEST(Jinja, ToJson) {
  json ctx = {{"x", json::parse(R"({"name": "f", "n": [1, 2.5, true, null], "s": "é\"\n", "e": {}})")}};
  EXPECT_EQ(render("{{ x|tojson }}", ctx), R"({"name": "f", "n": [1, 2.5, true, null], "s": "é\"\n", "e": {}})");
  EXPECT_EQ(render("{{ x.n|tojson(indent=2) }}", ctx), "[\n  1,\n  2.5,\n  true,\n  null\n]");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}"), R"({"a": 2, "b": 1})");
  EXPECT_EQ(render("{{ 'é'|tojson(ensure_ascii=true) }}"), R"("\u00e9")");
}

TEST(Jinja, Methods) {
  EXPECT_EQ(render("{{ '  a  '.strip() }}|{{ 'xax'.lstrip('x') }}|{{ 'xax'.rstrip('x') }}|{{ 'a,b,c'.split(',') }}"),
            "a|ax|xa|['a', 'b', 'c']");
  EXPECT_EQ(render("{{ 'a b  c'.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'abc'.startswith('a') }} "
                   "{{ 'abc'.endswith(('x', 'c')) }}"),
            "['a', 'b', 'c'] ['a', 'b,c'] True True");
  EXPECT_EQ(render("{{ 'ab'.upper() }} {{ 'AB'.lower() }} {{ 'a-b'.replace('-', '') }} {{ 'hi there'.title() }} "
                   "{{ 'abc'.find('c') }} {{ 'aaa'.count('a') }} {{ ', '.join(['x', 'y']) }}"),
            "AB ab ab Hi There 2 3 x, y");
  EXPECT_EQ(render("{{ '{} and {}'.format(1, 'b') }}"), "1 and b");
  EXPECT_EQ(render("{% set d = {'a': 1} %}{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 9) }} {{ d.keys()|list }} "
                   "{{ d.values()|list }}"),
            "1 None 9 ['a'] [1]");
  EXPECT_EQ(render("{% set l = [1] %}{% set _ = l.append(2) %}{{ l }} {{ l.pop() }} {{ l }}"), "[1, 2] 2 [1]");
}

TEST(Jinja, Globals) {
  EXPECT_EQ(render("{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ dict(a=1) }}"), "[0, 1, 2] [1, 3, 5] {'a': 1}");
  EXPECT_EQ(render("{{ strftime_now('%Y')|length }}"), "4");
  EXPECT_NE(error_of("{{ raise_exception('bad role') }}").find("bad role"), std::string::npos);
}

TEST(Jinja, Generation) { EXPECT_EQ(render("a{% generation %}b{{ 1 }}{% endgeneration %}c"), "ab1c"); }

TEST(Jinja, Errors) {
  EXPECT_EQ(error_of("a\nb\n{{ x|frobnicate }}"), "[jinja] line 3, column 6: unknown filter 'frobnicate'");
  EXPECT_EQ(error_of("{% if x is frob %}{% endif %}"), "[jinja] line 1, column 12: unknown test 'frob'");
  EXPECT_NE(error_of("{% if x %}").find("line 1"), std::string::npos);
  EXPECT_NE(error_of("{% if x %}").find("endif"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 + }}").find("[jinja] line 1, column 8"), std::string::npos);
  EXPECT_NE(error_of("{% frob %}").find("unknown tag 'frob'"), std::string::npos);
  EXPECT_NE(error_of("{{ 'a' + 1 }}").find("unsupported operand"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 // 0 }}").find("division"), std::string::npos);
  EXPECT_NE(error_of("{{ nope() }}").find("'nope' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{% endfor %}").find("unexpected 'endfor'"), std::string::npos);
}

TEST(Jinja, ParseOnceRenderMany) {
  Template t = Template::parse("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}");
  json a = {{"messages", {{{"role", "user"}, {"content", "x"}}}}};
  json b = {{"messages", {{{"role", "assistant"}, {"content", "y"}}}}};
  EXPECT_EQ(t.render(a), "<user>x");
  EXPECT_EQ(t.render(b), "<assistant>y");
}

}  // namespace
