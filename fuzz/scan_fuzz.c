
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


/*
 * libFuzzer target for the request body scan and the provider error
 * classifier (make fuzz).  Besides memory errors (built with ASan and
 * UBSan), it checks the scan's one promise about pieces: a body fed in
 * pieces of any size gives the same result as the body fed whole.  The
 * first input byte picks the piece size (low 4 bits) and the classifier
 * of nested values the whole body is scanned with (bit 4: scalar or
 * AVX2; pieces of up to 16 bytes are always read by the scalar scan), so
 * the AVX2 one is checked against the scalar one.  SCAN_SIMD=N in the
 * environment fixes the variant instead.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_scan.h"
#include "ngx_http_llm_classify.h"

#include <stdlib.h>


static void
scan(const uint8_t *data, size_t size, size_t piece, ngx_http_llm_scan_t *s)
{
    size_t  o, n;

    ngx_http_llm_scan_init(s);

    for (o = 0; o < size; o += n) {
        n = ngx_min(piece, size - o);
        ngx_http_llm_scan(s, (u_char *) data + o, (u_char *) data + o + n);
    }

    ngx_http_llm_scan_end(s);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char               buf[NGX_HTTP_LLM_MODEL_RAW_MAX], pick;
    size_t               piece, len;
    char                *env;
    ngx_uint_t           simd, best;
    ngx_http_llm_scan_t  whole, pieces;

    if (size == 0) {
        return 0;
    }

    pick = data[0];
    piece = (pick % 16) + 1;
    data++;
    size--;

    best = ngx_http_llm_json_simd_best();
    env = getenv("SCAN_SIMD");
    simd = env ? (ngx_uint_t) atoi(env) : (ngx_uint_t) (pick >> 4) & 1;
    ngx_http_llm_json_simd = ngx_min(simd, best);

    scan(data, size, size ? size : 1, &whole);
    scan(data, size, piece, &pieces);

    if (whole.error != pieces.error
        || whole.model_start != pieces.model_start
        || whole.model_end != pieces.model_end
        || whole.stream != pieces.stream
        || whole.object_start != pieces.object_start
        || whole.members != pieces.members
        || whole.model_len != pieces.model_len
        || (whole.model_end != -1 && !whole.model_too_long
            && ngx_memcmp(whole.model, pieces.model, whole.model_len) != 0))
    {
        __builtin_trap();
    }

    if (whole.error == NULL && whole.model_end != -1) {

        /* the span is a JSON string in the body, quotes included */

        if (whole.model_end <= whole.model_start
            || (size_t) whole.model_end > size
            || data[whole.model_start] != '"'
            || data[whole.model_end - 1] != '"')
        {
            __builtin_trap();
        }

        if (!whole.model_too_long) {
            (void) ngx_http_llm_json_string(whole.model, whole.model_len,
                                            buf, sizeof(buf), &len);
        }
    }

    (void) ngx_http_llm_classify_response(400 + pick % 200,
                                          (u_char *) data, size);

    return 0;
}
