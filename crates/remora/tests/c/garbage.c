/* Not an MPI program: connects to its PMI server and sends junk. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    /* The server may close on the first bad byte: keep going, report, exit 0. */
    signal(SIGPIPE, SIG_IGN);
    const char *port = getenv("PMI_PORT");
    const char *colon = port ? strrchr(port, ':') : NULL;
    if (!colon) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1)) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) return 3;
    const char junk[] = "\xff\xfe cmd=\x01\x02 garbage\n\n\x00\x00cmd=get kvsname=x\n" "GET / HTTP/1.1\r\n\r\n";
    for (int i = 0; i < 100; i++) if (write(s, junk, sizeof junk) < 0) break;
    char buf[256];
    ssize_t n = read(s, buf, sizeof buf);  /* an error reply or a close */
    printf("garbage sent, server answered %zd bytes\n", n);
    return 0;
}
