// Compiled only by ctest's layers_upward_include_refused (cmake/layers.cmake), once per probe with
// one layer target's include roots: its own header must be found, the upper layer's must not.
#include LMTUNE_PROBE_OWN
#include LMTUNE_PROBE_HIDDEN
