// cuBLAS and cuBLASLt, opened on first use. Linking them made every lmtune process load both at
// start (~0.12 s and ~210 MB resident on the 2-core CI machine, CPU-only runs included, for
// libraries only a CUDA product needs). The functions the backend calls are defined here under
// their own C names and forward to the library, opened with dlopen the first time one is called:
// the path CMake found (LMTUNE_CUBLASLT_PATH, LMTUNE_CUBLAS_PATH) first, then the soname, which
// LD_LIBRARY_PATH can direct. lmtune is not linked with -rdynamic, so these definitions are not
// exported and cannot interpose on the libraries' own calls.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "core/error.h"

#define LMT_STR2(x) #x
#define LMT_STR(x) LMT_STR2(x)

namespace lmtune {
namespace {

struct Library {
  Library(const char* p, const char* s) : path(p), soname(s) {}
  const char* path;    // what CMake found at build time ("" if nothing)
  const char* soname;  // what the loader's search path may find instead
  void* handle = nullptr;
  std::once_flag once;
};

Library& cublas_lt() {
  static Library l{LMTUNE_CUBLASLT_PATH, "libcublasLt.so." LMT_STR(CUBLAS_VER_MAJOR)};
  return l;
}
Library& cublas_full() {
  static Library l{LMTUNE_CUBLAS_PATH, "libcublas.so." LMT_STR(CUBLAS_VER_MAJOR)};
  return l;
}

void* open(Library& lib) {
  std::call_once(lib.once, [&] {
    std::string why;
    for (const char* name : {lib.path, lib.soname}) {
      if (!name || !*name) continue;
      // RTLD_GLOBAL: libcublas resolves libcublasLt's symbols through the same loaded copy.
      lib.handle = ::dlopen(name, RTLD_NOW | RTLD_GLOBAL);
      if (lib.handle) return;
      const char* e = ::dlerror();
      why += std::string("\n  ") + name + ": " + (e ? e : "?");
    }
    fail("[cuda] cannot open ", lib.soname, why,
         "\n(scripts/fetch-cublas fetches cuBLAS from PyPI; LD_LIBRARY_PATH may name its folder)");
  });
  return lib.handle;
}

void* symbol(Library& lib, const char* name) {
  void* s = ::dlsym(open(lib), name);
  LMT_CHECK(s, "[cuda] ", lib.soname, " has no ", name, " (a cuBLAS older than the headers lmtune was built with?)");
  return s;
}

}  // namespace
}  // namespace lmtune

// One forwarding definition per entry point: the library's function, looked up once.
#define LMT_FORWARD(lib, name, params, args)                                                           \
  extern "C" cublasStatus_t name params {                                                              \
    static const auto f = reinterpret_cast<decltype(&name)>(::lmtune::symbol(::lmtune::lib(), #name)); \
    return f args;                                                                                     \
  }

LMT_FORWARD(cublas_lt, cublasLtCreate, (cublasLtHandle_t * h), (h))
LMT_FORWARD(cublas_lt, cublasLtDestroy, (cublasLtHandle_t h), (h))
LMT_FORWARD(cublas_lt, cublasLtMatmul,
            (cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void* alpha, const void* A, cublasLtMatrixLayout_t a,
             const void* B, cublasLtMatrixLayout_t b, const void* beta, const void* C, cublasLtMatrixLayout_t c,
             void* D, cublasLtMatrixLayout_t dl, const cublasLtMatmulAlgo_t* algo, void* ws, size_t ws_bytes,
             cudaStream_t s),
            (h, d, alpha, A, a, B, b, beta, C, c, D, dl, algo, ws, ws_bytes, s))
LMT_FORWARD(cublas_lt, cublasLtMatmulAlgoGetHeuristic,
            (cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
             cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl, cublasLtMatmulPreference_t p, int n,
             cublasLtMatmulHeuristicResult_t* out, int* found),
            (h, d, a, b, c, dl, p, n, out, found))
LMT_FORWARD(cublas_lt, cublasLtMatmulDescCreate,
            (cublasLtMatmulDesc_t * d, cublasComputeType_t compute, cudaDataType_t scale), (d, compute, scale))
LMT_FORWARD(cublas_lt, cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t d), (d))
LMT_FORWARD(cublas_lt, cublasLtMatmulDescSetAttribute,
            (cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void* buf, size_t n), (d, a, buf, n))
LMT_FORWARD(cublas_lt, cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * p), (p))
LMT_FORWARD(cublas_lt, cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t p), (p))
LMT_FORWARD(cublas_lt, cublasLtMatmulPreferenceSetAttribute,
            (cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a, const void* buf, size_t n),
            (p, a, buf, n))
LMT_FORWARD(cublas_lt, cublasLtMatrixLayoutCreate,
            (cublasLtMatrixLayout_t * l, cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld),
            (l, t, rows, cols, ld))
LMT_FORWARD(cublas_lt, cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t l), (l))
LMT_FORWARD(cublas_lt, cublasLtMatrixLayoutSetAttribute,
            (cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a, const void* buf, size_t n), (l, a, buf, n))
LMT_FORWARD(cublas_full, cublasCreate_v2, (cublasHandle_t * h), (h))
LMT_FORWARD(cublas_full, cublasDestroy_v2, (cublasHandle_t h), (h))
LMT_FORWARD(cublas_full, cublasSetStream_v2, (cublasHandle_t h, cudaStream_t s), (h, s))

// cublasGemmGroupedBatchedEx's parameter list, as cublas_api.h declares it (CUBLAS 12.5 on).
LMT_FORWARD(cublas_full, cublasGemmGroupedBatchedEx,
            (cublasHandle_t h, const cublasOperation_t ta[], const cublasOperation_t tb[], const int m[], const int n[],
             const int k[], const void* alpha, const void* const A[], cudaDataType_t at, const int lda[],
             const void* const B[], cudaDataType_t bt, const int ldb[], const void* beta, void* const C[],
             cudaDataType_t ct, const int ldc[], int groups, const int group_size[], cublasComputeType_t compute),
            (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, groups, group_size, compute))

// The one entry point that returns a string: if the library cannot be opened, the error is the
// open's own (thrown above), so a status string is never needed before a successful call.
extern "C" const char* cublasLtGetStatusString(cublasStatus_t status) {
  static const auto f = reinterpret_cast<decltype(&cublasLtGetStatusString)>(
      ::lmtune::symbol(::lmtune::cublas_lt(), "cublasLtGetStatusString"));
  return f(status);
}
