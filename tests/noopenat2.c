/*
 * LD_PRELOAD shim: syscall(SYS_openat2, ...) fails with ENOSYS, as on a kernel before 5.6,
 * so that the compiled core's component-by-component walk beneath a captured root is
 * what runs.  Every other system call goes through.
 *
 * Build: cc -shared -fPIC -O2 -o libnoopenat2.so noopenat2.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

typedef long (*syscall_fn)(long, ...);

long syscall(long number, ...) {
    va_list arguments;
    long a[6];
    va_start(arguments, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(arguments, long);
    va_end(arguments);
    if (number == SYS_openat2) {
        errno = ENOSYS;
        return -1;
    }
    syscall_fn real = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
