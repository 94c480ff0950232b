/*
 * Demo application for deployer: a tiny HTTP/1.1 + UDP server whose
 * behaviour is driven by environment variables, so tests can model slow
 * boots, failing health checks, crashes and graceful drains.
 *
 *   APP_VERSION    version string reported by every reply     (default "dev")
 *   HTTP_PORT      TCP port for HTTP                          (default 8080)
 *   UDP_PORT       UDP port for the echo service              (default 9090)
 *   BOOT_DELAY     seconds to wait before listening           (default 0)
 *   DRAIN_TIMEOUT  seconds to drain after SIGTERM/SIGINT      (default 10)
 *   HEALTH_STATUS  status code returned by /healthz           (default 200)
 *   CRASH          if non-empty, exit 3 at once
 *
 * HTTP routes: GET / -> "<version> <client-ip>:<client-port>\n",
 * GET /healthz -> HEALTH_STATUS, GET /version -> "<version>\n".
 * UDP: every datagram is answered with "<version> <payload>".
 *
 * It runs as PID 1 in a FROM scratch image, where the kernel ignores any
 * signal without a handler, so SIGTERM and SIGINT get real handlers.
 *
 * Build: gcc -static -O2 -Wall -Wextra -pthread -o server server.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_BUF_SIZE   16384   /* request line + headers must fit */
#define IDLE_TIMEOUT_MS    120000  /* drop silent keep-alive clients */
#define LINGER_TIMEOUT_MS  1000    /* max wait for the peer's FIN after our close */
#define THREAD_STACK_SIZE  (256 * 1024)
#define UDP_MAX_PAYLOAD    65507

static const char *app_version = "dev";
static int health_status = 200;
static double drain_timeout = 10.0;

static atomic_int draining;
static int signal_pipe[2] = {-1, -1};

/* Open HTTP connections; the drain waits for this to reach zero. */
static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t conn_gone;
static int open_connections;

static void log_event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void log_event(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n = snprintf(line, sizeof line, "demo-app %s: ", app_version);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

static void die(const char *what)
{
    log_event("fatal: %s: %s", what, strerror(errno));
    _exit(1);
}

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    /* Non-blocking pipe: if it is full, a wake-up is already pending. */
    ssize_t ignored = write(signal_pipe[1], &b, 1);
    (void)ignored;
    errno = saved;
}

/* ---- configuration ------------------------------------------------------ */

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return (v && *v) ? v : fallback;
}

static double env_seconds(const char *name, double fallback)
{
    const char *v = getenv(name);
    char *end;
    double d;

    if (!v || !*v)
        return fallback;
    errno = 0;
    d = strtod(v, &end);
    if (errno || *end || d < 0 || d > 86400) {
        fprintf(stderr, "fatal: %s must be a number of seconds, got \"%s\"\n", name, v);
        exit(2);
    }
    return d;
}

static long env_int(const char *name, long fallback, long min, long max)
{
    const char *v = getenv(name);
    char *end;
    long n;

    if (!v || !*v)
        return fallback;
    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || *end || n < min || n > max) {
        fprintf(stderr, "fatal: %s must be an integer in %ld..%ld, got \"%s\"\n",
                name, min, max, v);
        exit(2);
    }
    return n;
}

/* ---- sockets ------------------------------------------------------------ */

/*
 * Bind a dual-stack socket when IPv6 is available so both families work;
 * fall back to plain IPv4 inside containers without IPv6.
 */
static int bind_any(int type, int port)
{
    int one = 1, zero = 0;
    int fd = socket(AF_INET6, type | SOCK_CLOEXEC, 0);

    if (fd >= 0) {
        struct sockaddr_in6 a6;
        memset(&a6, 0, sizeof a6);
        a6.sin6_family = AF_INET6;
        a6.sin6_addr = in6addr_any;
        a6.sin6_port = htons((uint16_t)port);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0)
            return fd;
        close(fd);
    }

    struct sockaddr_in a4;
    fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    memset(&a4, 0, sizeof a4);
    a4.sin_family = AF_INET;
    a4.sin_addr.s_addr = htonl(INADDR_ANY);
    a4.sin_port = htons((uint16_t)port);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a4, sizeof a4) != 0)
        die(type == SOCK_STREAM ? "bind tcp" : "bind udp");
    return fd;
}

/* Render a peer as "ip:port" ("[ip6]:port" for real IPv6 peers). */
static void format_peer(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN + 2] = "?";
    unsigned port = 0;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        port = ntohs(s4->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        port = ntohs(s6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], ip, sizeof ip);
        } else {
            char raw[INET6_ADDRSTRLEN];
            inet_ntop(AF_INET6, &s6->sin6_addr, raw, sizeof raw);
            snprintf(ip, sizeof ip, "[%s]", raw);
        }
    }
    snprintf(out, outlen, "%s:%u", ip, port);
}

/* Wait for readability; returns recv()'s result, or -1 on timeout. */
static ssize_t recv_timeout(int fd, char *buf, size_t len, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    for (;;) {
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        ssize_t n = recv(fd, buf, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        return n;
    }
}

static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Close after a final response without resetting it: half-close, then read
 * until the peer's FIN so unread input does not make the kernel send RST.
 */
static void lingering_close(int fd)
{
    char sink[4096];
    struct timespec start, now;

    shutdown(fd, SHUT_WR);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long spent = (now.tv_sec - start.tv_sec) * 1000 +
                     (now.tv_nsec - start.tv_nsec) / 1000000;
        if (spent >= LINGER_TIMEOUT_MS)
            break;
        if (recv_timeout(fd, sink, sizeof sink, (int)(LINGER_TIMEOUT_MS - spent)) <= 0)
            break;
    }
    close(fd);
}

/* ---- HTTP --------------------------------------------------------------- */

struct request {
    char method[16];
    char path[1024];
    int http10;
    int want_close;
    int want_keepalive;
    long long content_length;
    int chunked;
};

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return status < 400 ? "OK" : "Error";
    }
}

/* Offset just past the blank line ending the header block, or 0. */
static size_t header_end(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 < len && buf[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* Tolerate stray CRLFs before a request line (RFC 9112, section 2.2). */
static void skip_blank_lines(char *buf, size_t *len)
{
    size_t skip = 0;
    while (skip < *len && (buf[skip] == '\r' || buf[skip] == '\n'))
        skip++;
    if (skip) {
        memmove(buf, buf + skip, *len - skip);
        *len -= skip;
    }
}

static char *trim(char *s)
{
    char *e;
    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

static void parse_connection_tokens(char *value, struct request *req)
{
    char *save = NULL;
    for (char *tok = strtok_r(value, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        tok = trim(tok);
        if (strcasecmp(tok, "close") == 0)
            req->want_close = 1;
        else if (strcasecmp(tok, "keep-alive") == 0)
            req->want_keepalive = 1;
    }
}

/*
 * Parse the header block in place (it is NUL-terminated by the caller).
 * Returns 0 when valid, else the HTTP status to reject it with.
 */
static int parse_request(char *head, struct request *req)
{
    char *save = NULL, *line, *version, *target, *q;

    memset(req, 0, sizeof *req);
    req->content_length = -1;

    line = strtok_r(head, "\n", &save);
    if (!line)
        return 400;
    line = trim(line);

    /* request-line: METHOD SP target SP HTTP/1.x */
    char *sp1 = strchr(line, ' ');
    if (!sp1)
        return 400;
    *sp1 = '\0';
    target = sp1 + 1;
    char *sp2 = strchr(target, ' ');
    if (!sp2)
        return 400;
    *sp2 = '\0';
    version = sp2 + 1;
    if (strlen(line) == 0 || strlen(line) >= sizeof req->method || *target == '\0')
        return 400;
    if (strncmp(version, "HTTP/1.", 7) != 0)
        return strncmp(version, "HTTP/", 5) == 0 ? 505 : 400;
    req->http10 = strcmp(version, "HTTP/1.0") == 0;
    strcpy(req->method, line);
    if ((q = strpbrk(target, "?#")) != NULL)
        *q = '\0';
    if (strlen(target) >= sizeof req->path)
        return 400;
    strcpy(req->path, target);

    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        char *colon = strchr(line, ':');
        if (!colon) {
            if (*trim(line) == '\0')
                continue;
            return 400;
        }
        *colon = '\0';
        char *name = line, *value = trim(colon + 1);
        if (strcasecmp(name, "Content-Length") == 0) {
            char *end;
            long long n;
            errno = 0;
            n = strtoll(value, &end, 10);
            if (errno || end == value || *end || n < 0)
                return 400;
            if (req->content_length >= 0 && req->content_length != n)
                return 400;
            req->content_length = n;
        } else if (strcasecmp(name, "Transfer-Encoding") == 0) {
            req->chunked = 1;
        } else if (strcasecmp(name, "Connection") == 0) {
            parse_connection_tokens(value, req);
        }
    }
    return 0;
}

static int send_response(int fd, const char *method, int status, const char *body,
                         int close_after, const char *extra_headers)
{
    char out[2048];
    size_t body_len = strlen(body);
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: %s\r\n"
                     "%s"
                     "\r\n",
                     status, reason_phrase(status), body_len,
                     close_after ? "close" : "keep-alive",
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof out)
        return -1;
    /* One send per response keeps latency low with keep-alive. */
    if (strcmp(method, "HEAD") != 0) {
        if ((size_t)n + body_len >= sizeof out)
            return -1;
        memcpy(out + n, body, body_len);
        n += (int)body_len;
    }
    return send_all(fd, out, (size_t)n);
}

struct conn {
    int fd;
    struct sockaddr_storage peer;
};

static void connection_closed(void)
{
    pthread_mutex_lock(&conn_lock);
    if (--open_connections == 0)
        pthread_cond_broadcast(&conn_gone);
    pthread_mutex_unlock(&conn_lock);
}

/* Serve one client: requests in order until close, error or idle timeout. */
static void *serve_connection(void *arg)
{
    struct conn *c = arg;
    int fd = c->fd;
    char peer[INET6_ADDRSTRLEN + 16];
    char buf[REQUEST_BUF_SIZE + 1];
    size_t len = 0;
    int graceful = 0;

    format_peer(&c->peer, peer, sizeof peer);
    free(c);

    for (;;) {
        size_t head_len;
        struct request req;
        char body[256];
        int status, close_after;
        const char *allow = NULL;

        skip_blank_lines(buf, &len);
        while ((head_len = header_end(buf, len)) == 0) {
            if (len == REQUEST_BUF_SIZE) {
                send_response(fd, "GET", 431, "request header too large\n", 1, NULL);
                graceful = 1;
                goto done;
            }
            ssize_t n = recv_timeout(fd, buf + len, REQUEST_BUF_SIZE - len, IDLE_TIMEOUT_MS);
            if (n <= 0)
                goto done;
            len += (size_t)n;
            skip_blank_lines(buf, &len);
        }

        char saved = buf[head_len];
        buf[head_len] = '\0';
        status = parse_request(buf, &req);
        buf[head_len] = saved;

        if (status == 0 && req.chunked)
            status = 501;  /* bodies are never needed here; refuse rather than mis-frame */
        if (status != 0) {
            snprintf(body, sizeof body, "%s\n", reason_phrase(status));
            send_response(fd, "GET", status, body, 1, NULL);
            graceful = 1;
            goto done;
        }

        /* Drop the header block, then consume and discard any body. */
        memmove(buf, buf + head_len, len - head_len);
        len -= head_len;
        long long body_left = req.content_length > 0 ? req.content_length : 0;
        if ((long long)len >= body_left) {
            memmove(buf, buf + body_left, len - (size_t)body_left);
            len -= (size_t)body_left;
        } else {
            body_left -= (long long)len;
            len = 0;
            while (body_left > 0) {
                size_t want = body_left < REQUEST_BUF_SIZE ? (size_t)body_left : REQUEST_BUF_SIZE;
                ssize_t n = recv_timeout(fd, buf, want, IDLE_TIMEOUT_MS);
                if (n <= 0)
                    goto done;
                body_left -= n;
            }
        }

        int is_get = strcmp(req.method, "GET") == 0 || strcmp(req.method, "HEAD") == 0;
        if (strcmp(req.path, "/") == 0) {
            status = 200;
            snprintf(body, sizeof body, "%s %s\n", app_version, peer);
        } else if (strcmp(req.path, "/healthz") == 0) {
            status = health_status;
            snprintf(body, sizeof body, "%s\n", status >= 200 && status < 300 ? "ok" : "unhealthy");
        } else if (strcmp(req.path, "/version") == 0) {
            status = 200;
            snprintf(body, sizeof body, "%s\n", app_version);
        } else {
            status = 404;
            snprintf(body, sizeof body, "not found\n");
            is_get = 1;
        }
        if (!is_get) {
            status = 405;
            snprintf(body, sizeof body, "method not allowed\n");
            allow = "Allow: GET, HEAD\r\n";
        }

        /* While draining, answer normally but tell the client to go away. */
        close_after = req.want_close || (req.http10 && !req.want_keepalive) ||
                      atomic_load(&draining);
        if (send_response(fd, req.method, status, body, close_after, allow) != 0)
            goto done;
        if (close_after) {
            graceful = 1;
            goto done;
        }
    }

done:
    if (graceful)
        lingering_close(fd);
    else
        close(fd);
    connection_closed();
    return NULL;
}

/* ---- UDP ---------------------------------------------------------------- */

static void *serve_udp(void *arg)
{
    int fd = *(int *)arg;
    static char in[UDP_MAX_PAYLOAD + 1];
    static char out[UDP_MAX_PAYLOAD + 1];
    size_t prefix = strlen(app_version) + 1;

    if (prefix > UDP_MAX_PAYLOAD)
        prefix = UDP_MAX_PAYLOAD;
    memcpy(out, app_version, prefix - 1);
    out[prefix - 1] = ' ';

    for (;;) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* Transient errors (e.g. ICMP-induced) must not stop the service. */
            continue;
        }
        size_t copy = (size_t)n;
        if (copy > UDP_MAX_PAYLOAD - prefix)
            copy = UDP_MAX_PAYLOAD - prefix;
        memcpy(out + prefix, in, copy);
        sendto(fd, out, prefix + copy, MSG_NOSIGNAL, (struct sockaddr *)&from, fromlen);
    }
    return NULL;
}

/* ---- lifecycle ---------------------------------------------------------- */

static void install_signal_handlers(void)
{
    struct sigaction sa;

    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        die("pipe");
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int ms_from_seconds(double s)
{
    return s * 1000.0 > 2147483647.0 ? 2147483647 : (int)(s * 1000.0);
}

/* Sleep for BOOT_DELAY, but exit at once if asked to stop meanwhile. */
static void boot_delay(double seconds)
{
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    struct timespec start, now;
    int total = ms_from_seconds(seconds);

    if (total <= 0)
        return;
    log_event("booting, listening in %.3gs", seconds);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (spent >= total)
            return;
        int r = poll(&p, 1, (int)(total - spent));
        if (r > 0) {
            log_event("exit: stopped during boot");
            _exit(0);
        }
        if (r < 0 && errno != EINTR)
            die("poll");
    }
}

static void spawn_connection(int cfd, const struct sockaddr_storage *peer)
{
    static pthread_attr_t attr;
    static int attr_ready;
    struct conn *c;
    pthread_t tid;
    int one = 1;

    if (!attr_ready) {
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, THREAD_STACK_SIZE);
        attr_ready = 1;
    }
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    c = malloc(sizeof *c);
    if (!c) {
        close(cfd);
        return;
    }
    c->fd = cfd;
    c->peer = *peer;

    pthread_mutex_lock(&conn_lock);
    open_connections++;
    pthread_mutex_unlock(&conn_lock);
    if (pthread_create(&tid, &attr, serve_connection, c) != 0) {
        /* Out of threads: shed this client rather than the whole server. */
        free(c);
        close(cfd);
        connection_closed();
    }
}

/* Stop accepting, let open connections finish, then exit. */
static void drain_and_exit(int listen_fd, int sig)
{
    struct timespec deadline;
    int left;

    atomic_store(&draining, 1);
    close(listen_fd);

    pthread_mutex_lock(&conn_lock);
    log_event("draining after %s: %d open connection(s), timeout %.3gs",
              sig == SIGINT ? "SIGINT" : "SIGTERM", open_connections, drain_timeout);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    long long ns = deadline.tv_nsec + (long long)((drain_timeout - (long long)drain_timeout) * 1e9);
    deadline.tv_sec += (time_t)drain_timeout + (time_t)(ns / 1000000000LL);
    deadline.tv_nsec = (long)(ns % 1000000000LL);
    while (open_connections > 0) {
        if (pthread_cond_timedwait(&conn_gone, &conn_lock, &deadline) == ETIMEDOUT)
            break;
    }
    left = open_connections;
    pthread_mutex_unlock(&conn_lock);

    if (left > 0)
        log_event("exit: drain timeout, closing %d connection(s)", left);
    else
        log_event("exit: all connections closed");
    _exit(0);
}

int main(void)
{
    if (getenv("CRASH") && *getenv("CRASH")) {
        fprintf(stderr, "fatal: CRASH requested\n");
        return 3;
    }

    app_version = env_or("APP_VERSION", "dev");
    int http_port = (int)env_int("HTTP_PORT", 8080, 1, 65535);
    int udp_port = (int)env_int("UDP_PORT", 9090, 1, 65535);
    double delay = env_seconds("BOOT_DELAY", 0);
    drain_timeout = env_seconds("DRAIN_TIMEOUT", 10);
    health_status = (int)env_int("HEALTH_STATUS", 200, 100, 599);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&conn_gone, &ca);

    install_signal_handlers();
    boot_delay(delay);

    int listen_fd = bind_any(SOCK_STREAM, http_port);
    if (listen(listen_fd, SOMAXCONN) != 0)
        die("listen");
    static int udp_fd;
    udp_fd = bind_any(SOCK_DGRAM, udp_port);

    pthread_t udp_thread;
    if (pthread_create(&udp_thread, NULL, serve_udp, &udp_fd) != 0)
        die("udp thread");
    pthread_detach(udp_thread);

    log_event("listening on tcp/%d (http) and udp/%d", http_port, udp_port);

    struct pollfd fds[2] = {
        {.fd = listen_fd, .events = POLLIN},
        {.fd = signal_pipe[0], .events = POLLIN},
    };
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (fds[1].revents & POLLIN) {
            unsigned char sig = SIGTERM;
            if (read(signal_pipe[0], &sig, 1) < 0)
                sig = SIGTERM;
            drain_and_exit(listen_fd, sig);
        }
        if (fds[0].revents & POLLIN) {
            struct sockaddr_storage peer;
            socklen_t plen = sizeof peer;
            int cfd = accept4(listen_fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
            if (cfd < 0) {
                /* Out of descriptors: back off instead of spinning. */
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                    usleep(10000);
                continue;
            }
            spawn_connection(cfd, &peer);
        }
    }
}
