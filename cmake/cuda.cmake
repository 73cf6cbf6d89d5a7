# CUDA detection: with nvcc and cuBLASLt present, src/backend/cuda is built (sm_90 at
# least); otherwise src/backend/no_cuda's stubs are linked and throw when called.
set(LMTUNE_HAVE_CUDA OFF)
# cuBLAS may come unpacked from PyPI's nvidia-cublas wheel (scripts/fetch-cublas puts it here);
# where it is absent, the toolkit's own cuBLAS is used.
set(LMTUNE_CUBLAS_DEPS ${CMAKE_CURRENT_LIST_DIR}/../.deps/cublas)
if(LMTUNE_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(_lmtune_cublas_hints)
    if(EXISTS ${LMTUNE_CUBLAS_DEPS}/include/cublasLt.h)
      list(PREPEND CMAKE_PREFIX_PATH ${LMTUNE_CUBLAS_DEPS})
      set(_lmtune_cublas_hints ${LMTUNE_CUBLAS_DEPS})
    endif()
    find_package(CUDAToolkit QUIET)
    find_path(LMTUNE_CUBLASLT_INCLUDE cublasLt.h
              HINTS ${_lmtune_cublas_hints} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
    find_library(LMTUNE_CUBLASLT_LIB NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12
                 HINTS ${_lmtune_cublas_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
    find_library(LMTUNE_CUBLAS_LIB NAMES cublas libcublas.so.13 libcublas.so.12
                 HINTS ${_lmtune_cublas_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
    if(CUDAToolkit_FOUND AND LMTUNE_CUBLASLT_INCLUDE AND LMTUNE_CUBLASLT_LIB AND LMTUNE_CUBLAS_LIB)
      set(LMTUNE_HAVE_CUDA ON)
    else()
      message(STATUS "CUDA: nvcc found but cuBLAS/cuBLASLt not found (scripts/fetch-cublas fetches them); "
                     "linking the no_cuda stubs")
    endif()
  endif()
endif()

if(LMTUNE_HAVE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)
  endif()
  enable_language(CUDA)
  # CMake before 3.26 does not know nvcc's C++20 flag (nvcc has had it since 12.0).
  if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  set(CMAKE_CUDA_FLAGS_RELEASE "-O3 -DNDEBUG")
  message(STATUS "CUDA backend: ON (archs ${CMAKE_CUDA_ARCHITECTURES}, cuBLASLt ${LMTUNE_CUBLASLT_LIB})")
else()
  message(STATUS "CUDA backend: OFF (stubs)")
endif()
