// cuBLAS is opened on first use (src/backend/cuda/cublas_lazy.cpp), not at process start: a CPU-only
// run never loads it. Runs without a GPU: opening the library and asking it for a string needs none.
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace {

bool mapped(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::stringstream s;
  s << maps.rdbuf();
  return s.str().find(name) != std::string::npos;
}

TEST(CublasLazy, OpenedOnFirstCallOnly) {
  EXPECT_FALSE(mapped("libcublasLt")) << "cuBLASLt was loaded at process start";
  EXPECT_FALSE(mapped("libcublas.so")) << "cuBLAS was loaded at process start";
  // The first call opens the library and forwards to it: the text is cuBLASLt's own (13.0 says "the
  // requested functionality is not supported"; older releases gave the enum's name).
  const std::string text = cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_TRUE(text.find("not supported") != std::string::npos || text == "CUBLAS_STATUS_NOT_SUPPORTED") << text;
  EXPECT_TRUE(mapped("libcublasLt"));
  EXPECT_FALSE(mapped("libcublas.so")) << "cuBLAS proper is opened only when its grouped GEMM is first used";
}

}  // namespace
