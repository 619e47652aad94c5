/*
 * The floor in C: the least a supervisor can do.
 *
 * Usage: floor_sup N PROGRAM [ARG...]
 *
 * Starts N copies of PROGRAM (each in a new session, as supervisors do), then
 * blocks in wait() and starts a new copy as soon as one exits: no readiness, no
 * backoff, no bookkeeping beyond a pid table.  On SIGTERM or SIGINT it kills its
 * children and exits.
 */
#define _GNU_SOURCE /* POSIX_SPAWN_SETSID */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static volatile sig_atomic_t stopping = 0;

static void on_term(int sig) {
    (void)sig;
    stopping = 1;
}

static pid_t spawn(char **argv) {
    posix_spawnattr_t attr;
    pid_t pid = -1;

    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
    if (posix_spawn(&pid, argv[0], NULL, &attr, argv, environ) != 0) {
        pid = -1;
    }
    posix_spawnattr_destroy(&attr);
    return pid;
}

int main(int argc, char **argv) {
    struct sigaction sa = {0};
    long n, i;
    pid_t *pids;

    if (argc < 3) {
        return 2;
    }
    n = atol(argv[1]);
    pids = calloc((size_t)(n > 0 ? n : 1), sizeof *pids);
    sa.sa_handler = on_term; /* no SA_RESTART: wait() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    for (i = 0; i < n; i++) {
        pids[i] = spawn(argv + 2);
    }
    while (!stopping) {
        int status;
        pid_t pid = n > 0 ? wait(&status) : (pause(), -1);
        if (pid < 0) {
            if (errno == EINTR || n == 0) {
                continue;
            }
            return 1;
        }
        for (i = 0; i < n; i++) {
            if (pids[i] == pid) {
                pids[i] = spawn(argv + 2);
                break;
            }
        }
    }
    for (i = 0; i < n; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    }
    return 0;
}
