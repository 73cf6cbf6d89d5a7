// LMTUNE_ASAN: 1 in a build with AddressSanitizer (gcc defines __SANITIZE_ADDRESS__; clang says so
// through __has_feature), else 0.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define LMTUNE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LMTUNE_ASAN 1
#endif
#endif
#ifndef LMTUNE_ASAN
#define LMTUNE_ASAN 0
#endif
