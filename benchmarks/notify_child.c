/*
 * The minimal child of the restart-latency benchmark.
 *
 * Sends READY=1 to $NOTIFY_SOCKET (the sd_notify protocol, abstract "@..."
 * addresses included), then waits for a signal forever -- or, given a number of
 * milliseconds, sleeps that long and exits with code 1 (a crash, for the
 * crash-storm scenario).  No libc buffering, no dynamic allocation: the cost of
 * this program is the cost of fork/exec plus one datagram.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int notify_ready(const char *path) {
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
    if (sendto(fd, "READY=1", 7, 0, (const struct sockaddr *)&addr,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0) {
        close(fd);
        return -1;
    }
    return close(fd);
}

int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");

    if (path != NULL && notify_ready(path) < 0) {
        return 2;
    }
    if (argc > 1) {
        long ms = atol(argv[1]);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0) {
        }
        return 1;
    }
    for (;;) {
        pause();
    }
}
