# LMTUNE_SANITIZE and LMTUNE_FUZZ (top-level options): the sanitizer flags for every C++ target.
# UBSan does not recover: a report ends the process, so a test or a fuzz run fails on it.
set(LMTUNE_SANITIZER_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
if(LMTUNE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "LMTUNE_FUZZ=ON needs clang (libFuzzer): configure with -DCMAKE_CXX_COMPILER=clang++ "
                        "(Debian: apt-get install clang; scripts/fuzz does both)")
  endif()
  # Coverage for libFuzzer in every library; the fuzz targets link -fsanitize=fuzzer (tests/fuzz).
  list(APPEND LMTUNE_SANITIZER_FLAGS -fsanitize=fuzzer-no-link)
endif()
if(LMTUNE_SANITIZE OR LMTUNE_FUZZ)
  foreach(flag IN LISTS LMTUNE_SANITIZER_FLAGS)
    add_compile_options($<$<COMPILE_LANGUAGE:CXX>:${flag}>)
  endforeach()
  add_link_options(-fsanitize=address,undefined)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    # clang links UBSan's C++ runtime only with clang++ as the driver; say so explicitly.
    add_link_options(-fsanitize-link-c++-runtime)
  endif()
endif()
