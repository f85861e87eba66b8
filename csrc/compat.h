/* Small portability helpers for the compiled core. */
#ifndef TOIL_THREADING_COMPAT_H
#define TOIL_THREADING_COMPAT_H
/* statfs(2) is declared in different headers on Linux and on the BSDs (macOS). */
#if defined(__linux__)
#include <sys/vfs.h>
#else
#include <sys/param.h>
#include <sys/mount.h>
#endif
#include <errno.h>

static inline void clear_errno(void) { errno = 0; }
#endif
