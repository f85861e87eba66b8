/* swapper A B SECONDS: exchange the paths A and B atomically, over and over.
 *
 * Each exchange is one renameat2(RENAME_EXCHANGE): at every instant both names exist,
 * one naming what the other named a moment before.  Used by the tests to swap a
 * directory and a symbolic link under a process that works in the directory.  Runs
 * until SECONDS have passed (or SIGTERM or SIGINT arrives), making an even number of
 * exchanges so that both paths end as they began; then prints how many exchanges it
 * made and exits 0.  A failed exchange is reported, and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static volatile sig_atomic_t stop;

static void on_signal(int signo) {
    (void)signo;
    stop = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int exchange(const char *a, const char *b) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s A B SECONDS\n", argv[0]);
        return 2;
    }
    char *end;
    double seconds = strtod(argv[3], &end);
    if (*end != '\0' || !(seconds >= 0)) {
        fprintf(stderr, "%s: SECONDS must be a number >= 0, not %s\n", argv[0], argv[3]);
        return 2;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    unsigned long long exchanges = 0;
    double deadline = now() + seconds;
    while (!stop || exchanges % 2 != 0) {
        if (exchange(argv[1], argv[2]) != 0) {
            fprintf(stderr, "%s: exchanging %s and %s: %s\n", argv[0], argv[1], argv[2],
                    strerror(errno));
            return 1;
        }
        exchanges++;
        if (exchanges % 64 == 0 && now() >= deadline) {
            break;
        }
    }
    printf("%llu\n", exchanges);
    return 0;
}
