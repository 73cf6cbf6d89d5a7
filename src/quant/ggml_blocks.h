// ggml's block formats as llama.cpp writes them (ggml-quants.c, the *_ref quantizers that
// llama-quantize and convert_hf_to_gguf.py use): Q8_0 and Q4_0 (32 elements: an f16 scale d, then
// the codes), and the f16 / bf16 casts. Encoders take f32 rows whose length is a multiple of 32.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lmtune::quant::ggml {

constexpr int64_t kBlock = 32;

// Q8_0: d = amax / 127 (f32, stored as f16), q = roundf(x * (1 / d)) (ties away from zero).
std::string encode_q8_0(const float* x, int64_t n);
// Q4_0: m = the element of largest magnitude (the first such), d = m / -8, q = min(15, (int8)(x / d + 8.5));
// byte j of a block holds element j in its low nibble and element j + 16 in its high nibble.
std::string encode_q4_0(const float* x, int64_t n);
std::vector<float> decode_q8_0(const std::string& bytes);  // x = d * q
std::vector<float> decode_q4_0(const std::string& bytes);  // x = d * (q - 8)

std::string encode_f32(const float* x, int64_t n);
std::string encode_f16(const float* x, int64_t n);   // round to nearest even
std::string encode_bf16(const float* x, int64_t n);  // round to nearest even

}  // namespace lmtune::quant::ggml
