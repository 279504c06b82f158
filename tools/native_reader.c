/* native_reader: a worker that counts tb's records at native speed, for tools/compare.py.

   Usage, as a balancer starts it:  native_reader [--out FILE] [--progress FILE] FD...
   (the pipe fds appended to argv, or named by TB_PIPE_FDS=FD0,FD1,...).

   It polls every pipe and reads each ready one dry at once (one read into a 1 MiB buffer, again
   while FIONREAD says more is there), so a balancer's writes meet pipes with room in them: the
   cheapest a reader can make them. Records are [u32 little-endian length][body]; each pipe's
   state carries a header or a body split across reads, and a record is counted when its last
   byte is read. --progress FILE keeps the same running figures as tb.pipes.count_worker's (u64
   total, the CLOCK_MONOTONIC seconds of the first and latest record as two doubles, then a u64
   count per pipe; little-endian, mmap'd) for tb profile's harness to sample. At EOF on every
   pipe it prints one JSON line {"records", "per_pipe", "bytes", "first", "last"} on stdout
   (and into --out FILE) and exits 0; 1 if a pipe ended inside a record or a read failed; 2 on
   a bad command line. SIGTERM stops it early (the summary says "stopped": true); SIGHUP (the
   balancer died) is ignored, so what is in the pipes is still counted to EOF. */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define BUFSIZE (1 << 20)
#define MAXPIPES 4096

struct pipe_state {
    uint64_t records, bytes;
    uint64_t skip;      /* body bytes of the current record still to come */
    uint8_t header[4];  /* a header split across reads */
    int have;           /* header bytes held; with skip == 0 and have == 0: between records */
    int in_body;        /* a header was read and its body is incomplete */
};

static volatile sig_atomic_t stopped;

static void on_term(int sig) {
    (void)sig;
    stopped = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Walk n bytes of one pipe's stream; return the records completed in them. */
static uint64_t walk(struct pipe_state *s, const uint8_t *buf, size_t n) {
    uint64_t done = 0;
    size_t pos = 0;
    while (pos < n) {
        if (s->in_body) {
            size_t take = n - pos < s->skip ? n - pos : (size_t)s->skip;
            s->skip -= take;
            pos += take;
            if (s->skip == 0) {
                s->in_body = 0;
                done++;
            }
            continue;
        }
        uint32_t len;
        if (s->have == 0 && n - pos >= 4) { /* the usual case: a whole header in this read */
            len = le32(buf + pos);
            pos += 4;
        } else {
            s->header[s->have++] = buf[pos++];
            if (s->have < 4)
                continue;
            s->have = 0;
            len = le32(s->header);
        }
        if (len == 0)
            done++;
        else {
            s->skip = len;
            s->in_body = 1;
        }
    }
    return done;
}

static int usage(const char *why) {
    fprintf(stderr, "native_reader: %s\nusage: native_reader [--out FILE] [--progress FILE] FD...\n",
            why);
    return 2;
}

static int parse_fds(const char *list, int *fds, int *n) {
    const char *p = list;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 1 << 30 || (*end && *end != ',') || *n >= MAXPIPES)
            return -1;
        fds[(*n)++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return *n ? 0 : -1;
}

static void summary(FILE *f, struct pipe_state *st, int n, uint64_t total, double first,
                    double last, int was_stopped) {
    fprintf(f, "{\"records\": %llu, \"per_pipe\": [", (unsigned long long)total);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)st[i].records);
    fprintf(f, "], \"bytes\": [");
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)st[i].bytes);
    fprintf(f, "], \"first\": %.9f, \"last\": %.9f%s}\n", first, last,
            was_stopped ? ", \"stopped\": true" : "");
}

int main(int argc, char **argv) {
    static int fds[MAXPIPES];
    int n = 0;
    const char *out = NULL, *progress_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") || !strcmp(argv[i], "--progress")) {
            if (i + 1 >= argc)
                return usage("--out and --progress take a FILE");
            const char **dest = argv[i][2] == 'o' ? &out : &progress_path;
            *dest = argv[i + 1];
            i++;
        } else if (!strncmp(argv[i], "--", 2)) {
            fprintf(stderr, "native_reader: %s is not supported (latency stamps: use "
                            "python3 -m tb.pipes.count_worker)\n", argv[i]);
            return 2;
        } else if (parse_fds(argv[i], fds, &n) < 0) {
            return usage("each FD must be a whole number");
        }
    }
    if (!n) {
        const char *env = getenv("TB_PIPE_FDS");
        if (!env || !*env)
            return usage("no pipes: pass the pipe fds as arguments or set TB_PIPE_FDS");
        if (parse_fds(env, fds, &n) < 0)
            return usage("TB_PIPE_FDS is not a comma-separated list of fds");
    }
    for (int i = 0; i < n; i++)
        if (fcntl(fds[i], F_GETFD) < 0) {
            fprintf(stderr, "native_reader: fd %d is not open\n", fds[i]);
            return 2;
        }

    struct sigaction sa = {0};
    sa.sa_handler = on_term; /* no SA_RESTART: poll returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    size_t psize = 24 + 8 * (size_t)n;
    uint8_t *progress = NULL;
    if (progress_path) {
        int pf = open(progress_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (pf < 0 || ftruncate(pf, (off_t)psize) < 0) {
            perror(progress_path);
            return 1;
        }
        progress = mmap(NULL, psize, PROT_READ | PROT_WRITE, MAP_SHARED, pf, 0);
        close(pf);
        if (progress == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
    }

    struct pollfd *pfd = calloc((size_t)n, sizeof *pfd);
    struct pipe_state *st = calloc((size_t)n, sizeof *st);
    uint8_t *buf = malloc(BUFSIZE);
    if (!pfd || !st || !buf) {
        perror("native_reader");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        pfd[i].fd = fds[i];
        pfd[i].events = POLLIN;
    }
    uint64_t total = 0;
    double first = 0, last = 0;
    int live = n, rc = 0;
    while (live && !stopped) {
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (!pfd[i].revents)
                continue;
            for (;;) { /* read the pipe dry */
                ssize_t got = read(pfd[i].fd, buf, BUFSIZE);
                if (got < 0) {
                    if (errno == EINTR && !stopped)
                        continue;
                    if (errno == EAGAIN || errno == EINTR)
                        break;
                    fprintf(stderr, "native_reader: pipe %d (fd %d): %s\n", i, pfd[i].fd,
                            strerror(errno));
                    return 1;
                }
                if (got == 0) {
                    if (st[i].in_body || st[i].have) {
                        fprintf(stderr, "native_reader: pipe %d (fd %d) ended inside a record\n",
                                i, pfd[i].fd);
                        rc = 1;
                    }
                    pfd[i].fd = -1; /* poll skips it from now on */
                    live--;
                    break;
                }
                st[i].bytes += (uint64_t)got;
                uint64_t done = walk(&st[i], buf, (size_t)got);
                if (done) {
                    total += done;
                    st[i].records += done;
                    last = now();
                    if (first == 0)
                        first = last;
                    if (progress) {
                        memcpy(progress, &total, 8);
                        memcpy(progress + 8, &first, 8);
                        memcpy(progress + 16, &last, 8);
                        memcpy(progress + 24 + 8 * (size_t)i, &st[i].records, 8);
                    }
                }
                int more = 0;
                if (got < BUFSIZE || ioctl(pfd[i].fd, FIONREAD, &more) < 0 || more <= 0)
                    break;
            }
        }
    }
    summary(stdout, st, n, total, first, last, stopped);
    if (out) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", out);
        FILE *f = fopen(tmp, "w");
        if (!f || (summary(f, st, n, total, first, last, stopped), fclose(f)) || rename(tmp, out)) {
            perror(out);
            return 1;
        }
    }
    return rc;
}
