/* Runs until killed, for kill-app: prints "ready" (flushed) and then
 * `spin` (or `spin cpu`) loops in user mode making no system call at all, so
 * a signal must reach a vCPU that never traps; `spin sleep` blocks in
 * nanosleep instead, so it must reach a thread waiting in a forwarded call.
 * Installs no handler: SIGINT, SIGTERM and SIGKILL take their default action
 * (exit 130, 143, 137 as a shell reports them). It sets SIGINT and SIGTERM to
 * that default itself, because a disposition of "ignore" is inherited across
 * exec and a shell's background jobs get SIGINT ignored.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    int sleep_mode = argc > 1 && strcmp(argv[1], "sleep") == 0;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    printf("ready\n");
    fflush(stdout);
    if (sleep_mode) {
        for (;;) {
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
        }
    }
    volatile unsigned long n = 0;
    for (;;)
        n++;
}
