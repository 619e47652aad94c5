/*
 * The minimal child of the benchmarks.
 *
 * Usage: notify_child [--hello SOCKET] [EXIT_MS]
 *
 * With --hello, first sends its pid as a datagram to the AF_UNIX socket SOCKET
 * (benchmarks/compare.py times every supervisor by it; dropped if nobody has
 * read that socket's queue for 1 s).  Then sends READY=1 to $NOTIFY_SOCKET (the
 * sd_notify protocol, abstract "@..." addresses included), then waits for a
 * signal forever -- or, given a number of milliseconds, sleeps that long and
 * exits with code 1 (a crash, for the crash-storm scenario).  No libc buffering,
 * no dynamic allocation: the cost of this program is the cost of fork/exec plus
 * a datagram or two.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int send_to(const char *path, const char *msg, size_t msglen,
                   const struct timeval *timeout) {
    struct sockaddr_un addr;
    size_t len = strlen(path);
    int fd;

    if (len == 0 || len >= sizeof addr.sun_path) {
        return -1;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, len);
    if (path[0] == '@') {
        addr.sun_path[0] = '\0';
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (timeout != NULL) {
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, timeout, sizeof *timeout);
    }
    if (sendto(fd, msg, msglen, 0, (const struct sockaddr *)&addr,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0) {
        close(fd);
        return -1;
    }
    return close(fd);
}

int main(int argc, char **argv) {
    const struct timeval hello_timeout = {1, 0};
    const char *path = getenv("NOTIFY_SOCKET");
    int arg = 1;

    if (argc > 2 && strcmp(argv[1], "--hello") == 0) {
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%ld", (long)getpid());

        if (send_to(argv[2], pid, (size_t)n, &hello_timeout) < 0 && errno != EAGAIN) {
            return 2;
        }
        arg = 3;
    }
    if (path != NULL && send_to(path, "READY=1", 7, NULL) < 0) {
        return 2;
    }
    if (argc > arg) {
        long ms = atol(argv[arg]);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0) {
        }
        return 1;
    }
    for (;;) {
        pause();
    }
}
