/* statfs(2) is declared in different headers on Linux and on the BSDs (macOS). */
#ifndef TOIL_THREADING_COMPAT_H
#define TOIL_THREADING_COMPAT_H
#if defined(__linux__)
#include <sys/vfs.h>
#else
#include <sys/param.h>
#include <sys/mount.h>
#endif
#endif
