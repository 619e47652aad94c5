/*
 * The minimal child of the peer comparison (benchmarks/compare.py).
 *
 * Usage: hello_child SOCKET [EXIT_MS]
 *
 * Sends its pid as a datagram to the AF_UNIX socket SOCKET (the harness's, so
 * every supervisor is timed the same way; dropped if the harness has not read
 * its queue for 1 s), sends READY=1 to $NOTIFY_SOCKET if a
 * supervisor set one (sd_notify), then waits for a signal forever -- or, given
 * EXIT_MS, sleeps that long and exits with code 1 (a crash).
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
    const char *notify = getenv("NOTIFY_SOCKET");
    char pid[32];
    int n;

    if (argc < 2) {
        return 2;
    }
    n = snprintf(pid, sizeof pid, "%ld", (long)getpid());
    /* A harness that has stopped reading holds the child for 1 s at most. */
    if (send_to(argv[1], pid, (size_t)n, &hello_timeout) < 0 && errno != EAGAIN) {
        return 2;
    }
    if (notify != NULL && notify[0] != '\0' && send_to(notify, "READY=1", 7, NULL) < 0) {
        return 2;
    }
    if (argc > 2) {
        long ms = atol(argv[2]);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0) {
        }
        return 1;
    }
    for (;;) {
        pause();
    }
}
