# convert_no_output: the refused conversions left no folder behind (DIR: the unit tests' folder).
if(EXISTS ${DIR}/never-written)
  message(FATAL_ERROR "a refused conversion created ${DIR}/never-written")
endif()
file(GLOB left ${DIR}/*.tmp.*)
if(left)
  message(FATAL_ERROR "temporary folders left behind: ${left}")
endif()
