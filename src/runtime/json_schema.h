// A JSON schema compiled into a byte-level pushdown automaton that accepts exactly the compact JSON
// texts (no whitespace between tokens) the schema allows, with object properties in schema order.
// Unsupported keywords are refused by name at compile time, never silently ignored.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lmtune {

// A schema the compiler refuses; path is the JSON-pointer-like place ("properties.age.minimum").
struct SchemaError : std::runtime_error {
  SchemaError(std::string path_, const std::string& message) : std::runtime_error(message), path(std::move(path_)) {}
  std::string path;
};

struct SchemaNode {
  enum class Kind : uint8_t { any, object, array, string, number, integer, literal, one_of, sequence, choice };
  Kind kind = Kind::any;
  // object: properties in schema order; the key as compact JSON text ("\"name\"")
  std::vector<std::string> keys;
  std::vector<const SchemaNode*> values;
  std::vector<bool> required;
  // array
  const SchemaNode* items = nullptr;
  int64_t min_items = 0, max_items = -1;  // -1 = unbounded
  // string: lengths in characters (an escape is one)
  int64_t min_length = 0, max_length = -1;
  // literal: alternatives as compact JSON texts (enum, const, true/false/null); choice: literal
  // prefixes, each followed by values[i]; sequence: literals[i] (when parts[i] is null) or parts[i]
  std::vector<std::string> literals;
  std::vector<const SchemaNode*> parts;
  std::array<bool, 256> first{};  // the bytes a value of this node may start with
  // Python literals instead of JSON (True / False / None, no \/ escape), for pythonic tool calls;
  // kwargs: an object written as `name=value,...` without braces (keys hold "name=").
  bool python = false, kwargs = false;
};

// The compiled automaton's nodes, shared read-only by every state walking them.
class JsonGrammar {
 public:
  static constexpr size_t kMaxAlternatives = 64;  // enum values, properties, tools
  static constexpr int kMaxNumberBytes = 24;      // digits, sign, point and exponent (15 integer and
                                                  // 2 exponent digits at most)
  static constexpr int kMaxDepth = 32;            // nesting of objects and arrays

  // A whole schema ({} or true: any JSON value). Throws SchemaError.
  static std::shared_ptr<const JsonGrammar> from_schema(const nlohmann::ordered_json& schema);
  // {"type": "json_object"}: any JSON object.
  static std::shared_ptr<const JsonGrammar> any_object();
  // prefix, then exactly one of choices[i].first (a literal) followed by a value of schema
  // choices[i].second, then suffix. Throws SchemaError with path "<i>.<keyword>" for a bad schema.
  // python: each choice's schema is an object written as Python keyword arguments with Python
  // literal values (a pythonic call "f(a=1,b=True)").
  static std::shared_ptr<const JsonGrammar> wrapped_choice(
      const std::string& prefix, const std::vector<std::pair<std::string, nlohmann::ordered_json>>& choices,
      const std::string& suffix, bool python = false);

  const SchemaNode* root() const { return root_; }
  SchemaNode* add();  // for the compiler

 private:
  std::vector<std::unique_ptr<SchemaNode>> nodes_;
  const SchemaNode* root_ = nullptr;
};

// One position in the automaton: a stack of frames, copied cheaply (only the used frames).
class JsonMachine {
 public:
  explicit JsonMachine(const JsonGrammar& g);
  JsonMachine(const JsonMachine& o) { *this = o; }
  JsonMachine& operator=(const JsonMachine& o);

  // Consumes one byte; false (state unchanged or unusable: copy before) when the byte is not allowed.
  bool feed(uint8_t c);
  bool feed(const std::string& bytes);
  bool done() const { return n_ == 0; }  // the value is closed: nothing more may follow
  bool can_end() const;                  // the text so far is a whole value (a number may still grow)
  // Inside a string's plain run: any character but '"', '\\' and controls may follow, `room` more
  // of them (-1 = unbounded).
  bool in_plain_string(int64_t* room) const;
  // Inside (or before) a literal part of a forced sequence, where special tokens may spell the text.
  bool in_forced_literal() const;

 private:
  struct Frame {
    const SchemaNode* node;
    uint64_t mask;  // alternatives still alive (literals, keys, choices)
    int32_t a;      // position: bytes matched, property index, item count, characters
    int32_t b;
    uint8_t kind, phase, rem, lo, hi;
  };
  enum Step { reject, consumed, refeed };
  Step step(Frame& f, uint8_t c);
  void push_value(const SchemaNode* node);
  void pop();
  uint64_t key_candidates(const SchemaNode* node, int32_t pos) const;

  std::array<Frame, JsonGrammar::kMaxDepth * 2> f_;
  int n_ = 0;
};

}  // namespace lmtune
