/*
 * loadgen: a closed-loop HTTP/1.1 keep-alive load generator whose own cost per response is
 * small, for benchmarks where it shares the machine's two cores with the server under test.
 *
 * wrk reads a response 8 KiB at a time, with an ioctl(FIONREAD) after every read: a 100 KiB
 * body costs it 26 system calls and a copy into its buffer. loadgen reads the head, then
 * drops the rest of the body in the kernel with recv(MSG_TRUNC), which copies nothing. Like
 * wrk it does not look at the body; it checks the status and the Content-Length.
 *
 * Usage: loadgen -c CONNS -d SECONDS [-t TIMEOUT_S] http://127.0.0.1:PORT/PATH
 * It prints wrk's summary lines (Requests/sec, the 50/99 % latency, "N requests in",
 * socket errors, non-2xx/3xx responses), so bench/benchlib.parse_wrk reads either.
 * Only loopback addresses are accepted. It runs for SECONDS and no longer.
 *
 * Built by bench/benchlib.py (loadgen_binary) with: cc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 8192
#define FINE_US 10000      /* latencies below 10 ms kept to the µs */
#define COARSE_US 10000000 /* up to 10 s to 100 µs; longer ones in the last bucket */
#define COARSE_STEP 100
#define EVENTS 256
#define READS_PER_EVENT 64 /* recv calls for one readiness event, at most */

enum state { CONNECTING, WAITING, BODY };

typedef struct {
    int fd;
    enum state state;
    int timed_out;  /* this request was already counted as a timeout */
    int last;       /* the response says Connection: close */
    long body_left; /* bytes of the body still to drop */
    size_t have;    /* bytes of the head read so far */
    double sent_at;
    char head[HEAD_MAX + 1];
} conn_t;

static struct sockaddr_in target;
static char request[2048];
static size_t request_len;
static long responses, non2xx, err_connect, err_read, err_write, err_timeout;
static long fine[FINE_US], coarse[COARSE_US / COARSE_STEP + 1];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void record_latency(double seconds) {
    long us = (long)(seconds * 1e6);
    if (us < FINE_US)
        fine[us < 0 ? 0 : us]++;
    else
        coarse[us >= COARSE_US ? COARSE_US / COARSE_STEP : us / COARSE_STEP]++;
}

/* the latency in ms below which a share `q` of the responses fell */
static double percentile_ms(double q) {
    long total = 0, seen = 0;
    for (long i = 0; i < FINE_US; i++) total += fine[i];
    for (long i = 0; i <= COARSE_US / COARSE_STEP; i++) total += coarse[i];
    if (total == 0) return 0.0;
    long want = (long)(q * (double)total);
    for (long i = 0; i < FINE_US; i++)
        if ((seen += fine[i]) > want) return (double)i / 1000.0;
    for (long i = 0; i <= COARSE_US / COARSE_STEP; i++)
        if ((seen += coarse[i]) > want) return (double)(i * COARSE_STEP) / 1000.0;
    return (double)COARSE_US / 1000.0;
}

static int watch(int ep, conn_t *c, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(ep, op, c->fd, &ev);
}

static void open_conn(int ep, conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    c->have = 0;
    c->body_left = 0;
    c->last = 0;
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS)
        err_connect++; /* epoll reports the socket as failed; it is opened again then */
    watch(ep, c, EPOLL_CTL_ADD, EPOLLOUT | EPOLLIN);
}

static void reopen(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    open_conn(ep, c);
}

/* 0: the request went out */
static int send_request(conn_t *c) {
    ssize_t n = send(c->fd, request, request_len, MSG_NOSIGNAL);
    if (n != (ssize_t)request_len) return -1;
    c->state = WAITING;
    c->timed_out = 0;
    c->sent_at = now();
    return 0;
}

static int response_done(conn_t *c) {
    responses++;
    record_latency(now() - c->sent_at);
    if (c->last) return 1;
    return send_request(c) < 0 ? -2 : 0;
}

/* reads what is there: 0 to wait for more, -1 read error, -2 write error, 1 to open the
 * connection again (the server's keep-alive ended; not an error) */
static int on_readable(conn_t *c) {
    for (int reads = 0; reads < READS_PER_EVENT; reads++) {
        if (c->state == BODY) {
            ssize_t n = recv(c->fd, NULL, (size_t)c->body_left, MSG_TRUNC | MSG_DONTWAIT);
            if (n < 0) return errno == EAGAIN ? 0 : -1;
            if (n == 0) return -1;
            if ((c->body_left -= n) == 0) {
                int rc = response_done(c);
                if (rc) return rc;
            }
            continue;
        }
        ssize_t n = recv(c->fd, c->head + c->have, HEAD_MAX - c->have, MSG_DONTWAIT);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        if (n == 0) return c->have == 0 ? 1 : -1;
        c->have += (size_t)n;
        c->head[c->have] = '\0';
        char *end = strstr(c->head, "\r\n\r\n");
        if (end == NULL) {
            if (c->have == HEAD_MAX) return -1;
            continue;
        }
        if (strncmp(c->head, "HTTP/1.", 7) != 0) return -1;
        int status = atoi(c->head + 9);
        if (status < 200 || status > 399) non2xx++;
        *end = '\0'; /* headers only, from here */
        char *length = strcasestr(c->head, "\r\ncontent-length:");
        if (length == NULL) return -1; /* chunked or to-close bodies are not read */
        c->last = strcasestr(c->head, "\r\nconnection: close") != NULL;
        long body = atol(length + 17);
        long extra = (long)c->have - (long)(end + 4 - c->head);
        if (body < 0 || extra > body) return -1; /* more than one response: not sent by us */
        c->have = 0;
        c->body_left = body - extra;
        if (c->body_left > 0) {
            c->state = BODY;
        } else {
            int rc = response_done(c);
            if (rc) return rc;
        }
    }
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen -c CONNS -d SECONDS [-t TIMEOUT_S] http://127.0.0.1:PORT/PATH\n");
    exit(2);
}

int main(int argc, char **argv) {
    int conns = 50;
    double seconds = 10, timeout = 2;
    int opt;
    while ((opt = getopt(argc, argv, "c:d:t:")) != -1) {
        if (opt == 'c') conns = atoi(optarg);
        else if (opt == 'd') seconds = atof(optarg);
        else if (opt == 't') timeout = atof(optarg);
        else usage();
    }
    if (optind != argc - 1 || conns < 1 || seconds <= 0) usage();
    char host[64], path[1024] = "/";
    int port = 0;
    if (sscanf(argv[optind], "http://%63[^:/]:%d%1023s", host, &port, path) < 2) usage();
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1 ||
        (ntohl(target.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: %s is not a loopback address\n", host);
        return 2;
    }
    target.sin_family = AF_INET;
    target.sin_port = htons((unsigned short)port);
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path, host, port);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    conn_t *cs = calloc((size_t)conns, sizeof *cs);
    if (ep < 0 || cs == NULL) {
        perror("loadgen");
        return 1;
    }
    for (int i = 0; i < conns; i++) open_conn(ep, &cs[i]);

    double started = now(), deadline = started + seconds, last_scan = started;
    struct epoll_event events[EVENTS];
    for (double t = started; t < deadline; t = now()) {
        int n = epoll_wait(ep, events, EVENTS, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c->state == CONNECTING) {
                int soerr = 0;
                socklen_t len = sizeof soerr;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
                if (soerr != 0 || (events[i].events & (EPOLLERR | EPOLLHUP))) {
                    err_connect++;
                    reopen(ep, c);
                    continue;
                }
                watch(ep, c, EPOLL_CTL_MOD, EPOLLIN);
                if (send_request(c) < 0) {
                    err_write++;
                    reopen(ep, c);
                }
                continue;
            }
            int rc = on_readable(c);
            if (rc == -1) err_read++;
            if (rc == -2) err_write++;
            if (rc != 0) reopen(ep, c);
        }
        if (t - last_scan >= 0.1) { /* requests outstanding longer than the timeout */
            last_scan = t;
            for (int i = 0; i < conns; i++)
                if (cs[i].state != CONNECTING && !cs[i].timed_out && t - cs[i].sent_at > timeout) {
                    cs[i].timed_out = 1;
                    err_timeout++;
                }
        }
    }
    double took = now() - started;
    printf("loadgen %d connections, %.0f s, http://%s:%d%s\n", conns, seconds, host, port, path);
    printf("  Latency Distribution\n");
    printf("     50%%   %.2fms\n", percentile_ms(0.50));
    printf("     90%%   %.2fms\n", percentile_ms(0.90));
    printf("     99%%   %.2fms\n", percentile_ms(0.99));
    printf("  %ld requests in %.2fs\n", responses, took);
    if (err_connect || err_read || err_write || err_timeout)
        printf("  Socket errors: connect %ld, read %ld, write %ld, timeout %ld\n", err_connect,
               err_read, err_write, err_timeout);
    if (non2xx) printf("  Non-2xx or 3xx responses: %ld\n", non2xx);
    printf("Requests/sec: %.2f\n", (double)responses / took);
    return 0;
}
