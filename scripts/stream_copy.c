/* Plain against streaming copies in a round trip of two threads on CPUs 0 and 1: the caller
 * copies its message into a request buffer and bumps a word; the server copies the request to a
 * reply buffer and bumps another; the caller copies the reply out. Each side copies either by
 * memcpy (plain stores) or by movntdq + sfence (streaming stores, as src/copy.rs does). The four
 * ways take turns, 15 rounds; medians per round trip. BENCHMARKS.md, "Streaming the largest
 * writes", has the figures and why.
 *
 *   gcc -O2 -pthread scripts/stream_copy.c -o /tmp/stream_copy
 *   for kib in 4096 8192 16384 65536; do /tmp/stream_copy $kib; done
 */
#define _GNU_SOURCE
#include <emmintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUNDS 15

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void stream(char *d, const char *s, size_t n) {
    size_t head = (16 - ((uintptr_t)d & 15)) & 15, i = 0;
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 4; k++)
            _mm_stream_si128((__m128i *)(d + i) + k, _mm_loadu_si128((const __m128i *)(s + i) + k));
    memcpy(d + i, s + i, n - i);
    _mm_sfence();
}

static size_t n;
static char *msg, *req, *rep, *out;
static _Atomic int call_seq, reply_seq;
static int mode; /* bit 0: the caller streams; bit 1: the server streams */

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *server(void *unused) {
    (void)unused;
    pin(1);
    for (int seen = 0;;) {
        int v;
        while ((v = atomic_load(&call_seq)) == seen) _mm_pause();
        if (v < 0) return NULL;
        seen = v;
        if (mode & 2) stream(rep, req, n); else memcpy(rep, req, n);
        atomic_store(&reply_seq, v);
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s KIB\n", argv[0]);
        return 1;
    }
    n = (size_t)atol(argv[1]) << 10;
    int calls = (int)((192u << 20) / n) + 2; /* about 192 MiB of messages per timed batch */
    /* The caller's buffers 16 bytes into a page, as malloc places a large block. */
    msg = (char *)aligned_alloc(4096, n + 4096) + 16;
    out = (char *)aligned_alloc(4096, n + 4096) + 16;
    req = aligned_alloc(4096, n + 4096);
    rep = aligned_alloc(4096, n + 4096);
    memset(msg, 7, n), memset(out, 0, n), memset(req, 0, n), memset(rep, 0, n);
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    pin(0);
    double res[4][ROUNDS];
    int v = 0;
    for (int r = 0; r < ROUNDS; r++)
        for (int m = 0; m < 4; m++) {
            mode = m;
            double t0 = 0;
            for (int c = 0; c < calls + 2; c++) { /* two calls of warm-up */
                if (c == 2) t0 = now();
                if (m & 1) stream(req, msg, n); else memcpy(req, msg, n);
                atomic_store(&call_seq, ++v);
                while (atomic_load(&reply_seq) != v) _mm_pause();
                memcpy(out, rep, n);
            }
            res[m][r] = (now() - t0) / calls;
        }
    const char *names[] = {"plain/plain", "streaming caller", "streaming server", "streaming both"};
    for (int m = 0; m < 4; m++) {
        qsort(res[m], ROUNDS, sizeof(double), by_value);
        printf("%6zu KiB  %-17s %8.3f ms\n", n >> 10, names[m], res[m][ROUNDS / 2] * 1e3);
    }
    atomic_store(&call_seq, -1);
    pthread_join(t, NULL);
    return 0;
}
