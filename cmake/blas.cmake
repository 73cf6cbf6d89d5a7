# OpenBLAS from Debian (libopenblas-dev) or from an unpacked prefix (the GPU machine).
# The suffixes are tried under each <prefix>/include[/<arch>] and <prefix>/lib[/<arch>]: an
# unpacked libopenblas-pthread-dev has no alternatives symlinks (dpkg -x runs no postinst), so
# its files are found only in their openblas-pthread folders.
find_path(OPENBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas-pthread openblas include/x86_64-linux-gnu/openblas-pthread
          include/x86_64-linux-gnu include)
find_library(OPENBLAS_LIBRARY NAMES openblas PATH_SUFFIXES openblas-pthread lib/x86_64-linux-gnu/openblas-pthread
             lib/x86_64-linux-gnu lib)
if(NOT OPENBLAS_INCLUDE_DIR OR NOT OPENBLAS_LIBRARY)
  message(FATAL_ERROR "OpenBLAS not found: apt-get install libopenblas-dev (scripts/setup does this)")
endif()
add_library(lmtune_blas INTERFACE)
target_include_directories(lmtune_blas INTERFACE ${OPENBLAS_INCLUDE_DIR})
target_link_libraries(lmtune_blas INTERFACE ${OPENBLAS_LIBRARY})
message(STATUS "OpenBLAS: ${OPENBLAS_LIBRARY} (${OPENBLAS_INCLUDE_DIR})")
