
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


/*
 * Throughput of the request body scan (src/ngx_http_llm_scan.c) against
 * a full yajl parse of the same body, single core, in memory.
 *
 *     scan_bench FILE [CHUNK [COUNT]]
 *
 * Prints the median MB/s of 7 runs of about 0.3 s each for the scan fed
 * the whole body, fed CHUNK-byte pieces (as nginx hands over a body
 * read from the network), and for yajl.  With COUNT, only scans the body
 * COUNT times in CHUNK-byte pieces, for an instruction count under
 * callgrind (bench/scan.sh).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <yajl/yajl_parse.h>
#include "ngx_http_llm_scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>


#define RUNS  7


static double
now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static int
cmp(const void *a, const void *b)
{
    double  x = *(const double *) a, y = *(const double *) b;

    return (x > y) - (x < y);
}


static int
scan(u_char *body, size_t len, size_t chunk)
{
    size_t               o, n;
    ngx_http_llm_scan_t  s;

    ngx_http_llm_scan_init(&s);

    for (o = 0; o < len; o += n) {
        n = ngx_min(chunk, len - o);
        ngx_http_llm_scan(&s, body + o, body + o + n);
    }

    ngx_http_llm_scan_end(&s);

    return s.error == NULL && s.model_end != -1;
}


static int
parse(u_char *body, size_t len, size_t chunk)
{
    int          ok;
    yajl_handle  h;

    h = yajl_alloc(NULL, NULL, NULL);
    ok = yajl_parse(h, body, len) == yajl_status_ok
         && yajl_complete_parse(h) == yajl_status_ok;
    yajl_free(h);

    return ok;
}


static double
measure(int (*f)(u_char *, size_t, size_t), u_char *body, size_t len,
    size_t chunk)
{
    int     r;
    long    i, n;
    double  t, mbs[RUNS];

    /* calibrate: about 0.3 s per run */

    for (n = 1; ; n *= 2) {
        t = now();

        for (i = 0; i < n; i++) {
            if (!f(body, len, chunk)) {
                fprintf(stderr, "scan_bench: the body does not pass\n");
                exit(1);
            }
        }

        if (now() - t > 0.05) {
            n = (long) (n * 0.3 / (now() - t)) + 1;
            break;
        }
    }

    for (r = 0; r < RUNS; r++) {
        t = now();

        for (i = 0; i < n; i++) {
            (void) f(body, len, chunk);
        }

        mbs[r] = (double) len * n / (now() - t) / 1e6;
    }

    qsort(mbs, RUNS, sizeof(double), cmp);

    return mbs[RUNS / 2];
}


int
main(int argc, char **argv)
{
    u_char  *body;
    long     i, count;
    size_t   len, chunk;
    FILE    *f;
    double   whole, pieces, yajl;

    if (argc < 2) {
        fprintf(stderr, "usage: scan_bench FILE [CHUNK]\n");
        return 2;
    }

    chunk = argc > 2 ? (size_t) atol(argv[2]) : 8192;

    f = fopen(argv[1], "r");
    if (f == NULL) {
        perror(argv[1]);
        return 2;
    }

    body = malloc(16 * 1024 * 1024);
    len = fread(body, 1, 16 * 1024 * 1024, f);
    fclose(f);

    if (getenv("SIMD")) {
        ngx_http_llm_json_simd = ngx_min((ngx_uint_t) atoi(getenv("SIMD")),
                                         ngx_http_llm_json_simd_best());
    }

    if (argc > 3) {
        count = atol(argv[3]);

        for (i = 0; i < count; i++) {
            if (!scan(body, len, chunk)) {
                fprintf(stderr, "scan_bench: the body does not pass\n");
                return 1;
            }
        }

        return 0;
    }

    whole = measure(scan, body, len, len);
    pieces = measure(scan, body, len, chunk);
    yajl = measure(parse, body, len, len);

    printf("%-8zu  %10.0f  %10.0f  %10.0f  %6.1fx\n",
           len, whole, pieces, yajl, whole / yajl);

    return 0;
}
