/* The reference hashes of tests/unit/test_gguf_kquants.cpp: ggml's own quantizers
 * (ggml_quantize_chunk without an importance matrix, the call llama-quantize makes) on the test's
 * deterministic input, one FNV-1a 64 hash of the bytes per type. Built and run against llama.cpp's
 * libggml-base by tests/ref/ggml_quant_golden.sh (ctest -R gguf_llamacpp_golden_hashes). The input
 * below must stay identical to golden_input() in the C++ test. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml.h"

enum { kBlocks = 64, kN = 256 * kBlocks };

static uint32_t next(uint32_t* s) {
  *s = *s * 1664525u + 1013904223u;
  return *s;
}

/* A sum of three uniform integers (|g| < 3 * 2^20): exact in float, scaled by powers of two only. */
static float g(uint32_t* s) {
  int32_t v = 0;
  for (int k = 0; k < 3; ++k) v += (int32_t)(next(s) >> 11) - (1 << 20);
  return (float)v;
}

static void golden_input(float* x) {
  uint32_t s = 12345u;
  for (int b = 0; b < kBlocks; ++b) {
    float* v = x + 256 * b;
    for (int i = 0; i < 256; ++i) {
      const float r = g(&s);
      switch (b % 8) {
        case 0: v[i] = r * ldexpf(1.f, -22); break;                           /* N(0, ~0.3) */
        case 1: v[i] = r * ldexpf(1.f, -30); break;                           /* ~1e-3 */
        case 2: v[i] = (i < 32 || (i >= 48 && i < 64)) ? 0.f : r * ldexpf(1.f, -22); break; /* zero groups */
        case 3: v[i] = fabsf(r) * ldexpf(1.f, -22) + 1.f; break;              /* all positive */
        case 4: v[i] = 0.f; break;
        case 5: v[i] = -0.375f; break;                                        /* constant */
        case 6: v[i] = r * ldexpf(1.f, i == (b * 37) % 256 ? -16 : -22); break; /* an outlier */
        default: v[i] = r * ldexpf(1.f, -40); break;                          /* f16 scales underflow */
      }
    }
  }
}

static uint64_t fnv1a(const unsigned char* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

int main(void) {
  static float x[kN];
  golden_input(x);
  const struct { const char* name; enum ggml_type type; } types[] = {
      {"Q4_0", GGML_TYPE_Q4_0}, {"Q5_0", GGML_TYPE_Q5_0}, {"Q5_1", GGML_TYPE_Q5_1}, {"Q8_0", GGML_TYPE_Q8_0},
      {"Q4_K", GGML_TYPE_Q4_K}, {"Q5_K", GGML_TYPE_Q5_K}, {"Q6_K", GGML_TYPE_Q6_K}};
  for (size_t t = 0; t < sizeof types / sizeof types[0]; ++t) {
    const size_t bytes = ggml_row_size(types[t].type, 256) * kBlocks;
    unsigned char* out = calloc(bytes, 1);
    ggml_quantize_chunk(types[t].type, x, out, 0, kBlocks, 256, NULL);
    printf("%s %zu 0x%016llxull\n", types[t].name, bytes, (unsigned long long)fnv1a(out, bytes));
    free(out);
  }
  return 0;
}
