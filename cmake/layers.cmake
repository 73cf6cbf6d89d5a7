# Layers enforced by the build (DESIGN.md): a library target sees its own layer's headers and,
# through its links' PUBLIC include roots, those of the layers below it; nothing else of src/.
# Each target's root is ${CMAKE_BINARY_DIR}/layers/<target>/ holding one symlink <dir> -> src/<dir>,
# so `#include "models/config.h"` written in nn/ is "No such file" (usage requirements flow to
# dependents only, never down). ctest's layers_upward_include_refused proves it.

# lmtune_layer(target dir): gives target the include root that shows src/<dir> as "<dir>/...".
function(lmtune_layer target dir)
  set(root ${CMAKE_BINARY_DIR}/layers/${target})
  get_filename_component(parent ${root}/${dir} DIRECTORY)
  file(MAKE_DIRECTORY ${parent})
  file(CREATE_LINK ${PROJECT_SOURCE_DIR}/src/${dir} ${root}/${dir} SYMBOLIC)
  target_include_directories(${target} PUBLIC ${root})
  set_property(TARGET ${target} PROPERTY LMTUNE_LAYER_DIR ${dir})
endfunction()

# lmtune_layer_probes("target hidden_dir" ...): one object library per pair, compiling
# cmake/layer_probe.cpp with target's include roots: it includes a header of target's own layer
# (must be found) and then one of hidden_dir (must not be). Built only by the test, which runs
# cmake/layer_check.cmake.
function(lmtune_layer_probes)
  set(probes)
  foreach(pair IN LISTS ARGN)
    separate_arguments(pair)
    list(GET pair 0 target)
    list(GET pair 1 hidden_dir)
    get_target_property(own_dir ${target} LMTUNE_LAYER_DIR)
    # The first header of each folder: file names change, folders stay.
    file(GLOB own_headers RELATIVE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/src/${own_dir}/*.h)
    file(GLOB hidden_headers RELATIVE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/src/${hidden_dir}/*.h)
    if(NOT own_headers OR NOT hidden_headers)
      continue()
    endif()
    list(SORT own_headers)
    list(SORT hidden_headers)
    list(GET own_headers 0 own)
    list(GET hidden_headers 0 hidden)
    string(MAKE_C_IDENTIFIER "lmtune_layer_probe_${target}_${hidden_dir}" probe)
    add_library(${probe} OBJECT EXCLUDE_FROM_ALL ${PROJECT_SOURCE_DIR}/cmake/layer_probe.cpp)
    target_link_libraries(${probe} PRIVATE ${target})
    target_compile_definitions(${probe} PRIVATE LMTUNE_PROBE_OWN="${own}" LMTUNE_PROBE_HIDDEN="${hidden}")
    list(APPEND probes "${probe}:${hidden}")
  endforeach()
  list(JOIN probes "," probes)  # a ';' would split the test's argument
  add_test(NAME layers_upward_include_refused
           COMMAND ${CMAKE_COMMAND} -DLMTUNE_BUILD_DIR=${CMAKE_BINARY_DIR} -DLMTUNE_PROBES=${probes}
                   -P ${PROJECT_SOURCE_DIR}/cmake/layer_check.cmake)
  set_tests_properties(layers_upward_include_refused PROPERTIES LABELS "unit")
endfunction()
