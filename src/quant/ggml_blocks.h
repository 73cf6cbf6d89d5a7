// ggml's block formats as llama.cpp writes them (ggml-quants.c, the *_ref quantizers that
// llama-quantize without an importance matrix and convert_hf_to_gguf.py use): Q8_0, Q4_0, Q5_0,
// Q5_1 (32 elements: f16 scales, then the codes), the K-quants Q4_K, Q5_K, Q6_K (super-blocks of
// 256: ggml_kquants.cpp), and the f16 / bf16 casts. Encoders take f32 values whose count is a
// multiple of the block; decoders give x back as ggml's dequantize_row_* computes it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lmtune::quant::ggml {

constexpr int64_t kBlock = 32;
constexpr int64_t kSuperBlock = 256;  // QK_K

// Q8_0: d = amax / 127 (f32, stored as f16), q = roundf(x * (1 / d)) (ties away from zero).
std::string encode_q8_0(const float* x, int64_t n);
// Q4_0: m = the element of largest magnitude (the first such), d = m / -8, q = min(15, (int8)(x / d + 8.5));
// byte j of a block holds element j in its low nibble and element j + 16 in its high nibble.
std::string encode_q4_0(const float* x, int64_t n);
// Q5_0: as Q4_0 with 5-bit codes (d = m / -16, q = min(31, (int8)(x / d + 16.5))); 22 bytes: d,
// the codes' fifth bits (u32, bit j = element j), then the low nibbles as Q4_0 packs them.
std::string encode_q5_0(const float* x, int64_t n);
// Q5_1: d = (max - min) / 31 and m = min (both f16), q = (uint8)((x - min) / d + 0.5); 24 bytes.
std::string encode_q5_1(const float* x, int64_t n);
std::vector<float> decode_q8_0(const std::string& bytes);  // x = d * q
std::vector<float> decode_q4_0(const std::string& bytes);  // x = d * (q - 8)
std::vector<float> decode_q5_0(const std::string& bytes);  // x = d * (q - 16)
std::vector<float> decode_q5_1(const std::string& bytes);  // x = d * q + m

// K-quants (ggml-quants.c quantize_row_q{4,5,6}_K_ref). Q4_K / Q5_K: 8 sub-blocks of 32 with a
// scale and a min each, fitted by a weighted least-squares search (make_qkx2_quants), quantized to
// 6 bits against the super-block's f16 d / dmin; x = d * sc * q - dmin * m. 144 / 176 bytes. Q6_K:
// 16 sub-blocks of 16 with symmetric 6-bit codes (make_qx_quants) and int8 scales against an f16
// d; x = d * sc * (q - 32). 210 bytes.
std::string encode_q4_k(const float* x, int64_t n);
std::string encode_q5_k(const float* x, int64_t n);
std::string encode_q6_k(const float* x, int64_t n);
std::vector<float> decode_q4_k(const std::string& bytes);
std::vector<float> decode_q5_k(const std::string& bytes);
std::vector<float> decode_q6_k(const std::string& bytes);

std::string encode_f32(const float* x, int64_t n);
std::string encode_f16(const float* x, int64_t n);   // round to nearest even
std::string encode_bf16(const float* x, int64_t n);  // round to nearest even

}  // namespace lmtune::quant::ggml
