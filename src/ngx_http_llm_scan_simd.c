
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_scan.h"
#include "ngx_http_llm_scan_int.h"


/*
 * The scan's nested values 64 bytes at a time with AVX2 and PCLMUL, and
 * POPCNT and BMI1, which every AVX2 CPU has (design.md 1): chosen at
 * start when the CPU has all four (ngx_http_llm_json_simd_best()), the
 * scalar scan otherwise.  The
 * libFuzzer target checks that any split of a body gives what the
 * scalar scan gives (fuzz/scan_fuzz.c).
 */


#if (NGX_HTTP_LLM_HAVE_SIMD)

#include <immintrin.h>


static ngx_inline void ngx_http_llm_scan_flush(ngx_http_llm_scan_t *s,
    ngx_uint_t depth, uint64_t kinds, ngx_uint_t opened);


/* the quotes, backslashes and brackets of 64 bytes, a bit per byte */

typedef struct {
    uint64_t  quote;
    uint64_t  backslash;

    /* [ ] { } and, rarely outside strings, Y _ y DEL: looked at again */
    uint64_t  bracket;
} ngx_http_llm_scan_masks_t;


/* where a run of blocks stops and what it carries on with */

typedef struct {
    uint64_t    out;            /* all ones: p is outside strings */
    uint64_t    carry;          /* the byte at p is escaped */
    uint64_t    outside;        /* of the block stopped at: 1 out of strings */
    uint64_t    brackets;       /* of that block, outside strings */
    uint32_t    pair;           /* ngx_http_llm_scan_pair() */
    ngx_uint_t  fallback;
} ngx_http_llm_scan_run_t;


/* the levels the blocks opened, written to s->brackets at their end */

typedef struct {
    uint64_t    kinds;          /* a bit a level, the innermost in bit 0 */
    ngx_uint_t  opened;         /* levels in kinds, up to 64 */
    ngx_uint_t  depth;
} ngx_http_llm_scan_levels_t;


__attribute__((target("avx2"))) static ngx_inline uint64_t
ngx_http_llm_scan_mask_avx2(__m256i v, __m256i w)
{
    return (uint32_t) _mm256_movemask_epi8(v)
           | (uint64_t) (uint32_t) _mm256_movemask_epi8(w) << 32;
}


/*
 * Brackets are the bytes that OR 0x26 makes 0x7f, one compare for the
 * four of them.  Backslashes are rare: their mask is only made when the
 * block has one.
 */

__attribute__((target("avx2"))) static ngx_inline void
ngx_http_llm_scan_masks_avx2(u_char *p, ngx_http_llm_scan_masks_t *m)
{
    __m256i  v, w, x, y, quote, backslash, or, bracket;

    quote = _mm256_set1_epi8('"');
    backslash = _mm256_set1_epi8('\\');
    or = _mm256_set1_epi8(0x26);
    bracket = _mm256_set1_epi8(0x7f);

    v = _mm256_loadu_si256((__m256i *) p);
    w = _mm256_loadu_si256((__m256i *) (p + 32));

    m->quote = ngx_http_llm_scan_mask_avx2(_mm256_cmpeq_epi8(v, quote),
                                           _mm256_cmpeq_epi8(w, quote));

    m->bracket = ngx_http_llm_scan_mask_avx2(
                     _mm256_cmpeq_epi8(_mm256_or_si256(v, or), bracket),
                     _mm256_cmpeq_epi8(_mm256_or_si256(w, or), bracket));

    x = _mm256_cmpeq_epi8(v, backslash);
    y = _mm256_cmpeq_epi8(w, backslash);

    m->backslash = _mm256_testz_si256(_mm256_or_si256(x, y),
                                      _mm256_or_si256(x, y))
                   ? 0 : ngx_http_llm_scan_mask_avx2(x, y);
}


/*
 * Inside a string: the offset of the first quote or backslash of the 128
 * bytes at p, or 128 when there is none (the string goes on).  The long
 * strings of a body go by in these steps, a test per 128 bytes.  A byte
 * is a quote or a backslash when it is the entry of its low 4 bits in
 * a table of those two (no other byte is its own entry there).
 */

__attribute__((target("avx2"))) static ngx_inline ngx_uint_t
ngx_http_llm_scan_string_avx2(u_char *p)
{
    uint64_t  special;
    __m256i   table, a, b, c, d;

    table = _mm256_setr_epi8(1, 0, '"', 0, 0, 0, 0, 0,
                             0, 0, 0, 0, '\\', 0, 0, 0,
                             1, 0, '"', 0, 0, 0, 0, 0,
                             0, 0, 0, 0, '\\', 0, 0, 0);

#define ngx_http_llm_scan_special(o)                                          \
    _mm256_cmpeq_epi8(                                                        \
        _mm256_shuffle_epi8(table, _mm256_loadu_si256((__m256i *) (p + o))),  \
        _mm256_loadu_si256((__m256i *) (p + o)))

    a = ngx_http_llm_scan_special(0);
    b = ngx_http_llm_scan_special(32);
    c = ngx_http_llm_scan_special(64);
    d = ngx_http_llm_scan_special(96);

#undef ngx_http_llm_scan_special

    if (_mm256_testz_si256(_mm256_or_si256(_mm256_or_si256(a, b),
                                           _mm256_or_si256(c, d)),
                           _mm256_set1_epi8(-1)))
    {
        return 128;
    }

    special = ngx_http_llm_scan_mask_avx2(a, b);

    if (special) {
        return __builtin_ctzll(special);
    }

    return 64 + __builtin_ctzll(ngx_http_llm_scan_mask_avx2(c, d));
}


/* the bits of x XORed from bit 0 up to each: 1 inside quotes */

__attribute__((target("pclmul"))) static ngx_inline uint64_t
ngx_http_llm_scan_prefix_xor(uint64_t x)
{
    return (uint64_t) _mm_cvtsi128_si64(
               _mm_clmulepi64_si128(_mm_set_epi64x(0, (long long) x),
                                    _mm_set1_epi8((char) 0xff), 0));
}


/*
 * The escaped bytes of a block: those after an odd run of backslashes
 * (simdjson's find_escaped_branchless); *carry: the next block's first
 * byte is escaped.
 */

static ngx_inline uint64_t
ngx_http_llm_scan_escaped(uint64_t backslash, uint64_t *carry)
{
    uint64_t  even, follows, odd_starts, even_runs, escaped;

    even = 0x5555555555555555ULL;

    backslash &= ~*carry;
    follows = (backslash << 1) | *carry;
    odd_starts = backslash & ~even & ~follows;

    even_runs = odd_starts + backslash;
    *carry = (even_runs < odd_starts);

    escaped = (even ^ (even_runs << 1)) & follows;

    return escaped;
}


/*
 * The brackets of a block outside strings are most often (a list of
 * objects) a "}" and then a "{" of the same kind: the closed level is
 * the innermost of those the blocks opened, not the one that ends the
 * value, and the opened one takes its place, so nothing changes.  The
 * two bytes of such a pair, "}" then "{" or "]" then "[" as the
 * innermost level is, are worked out when the levels change, so that a
 * block's pair costs a count of its brackets, two byte loads and a
 * compare; 0 when no pair is allowed (no level opened by the blocks, or
 * the next close ends the value).  Anything else is read one by one.
 */

static ngx_inline uint32_t
ngx_http_llm_scan_pair(uint64_t kinds, ngx_uint_t opened, ngx_uint_t depth)
{
    if (opened == 0 || depth == 2) {
        return 0;
    }

    return (kinds & 1) ? (']' | '[' << 8) : ('}' | '{' << 8);
}


__attribute__((target("popcnt,bmi"))) static ngx_inline ngx_uint_t
ngx_http_llm_scan_is_pair(u_char *p, uint64_t brackets, uint32_t pair)
{
    return _mm_popcnt_u64(brackets) == 2
           && ((uint32_t) p[_tzcnt_u64(brackets)]
               | (uint32_t) p[_tzcnt_u64(_blsr_u64(brackets))] << 8)
              == pair;
}


/*
 * The brackets one by one: NGX_OK, NGX_DONE when the value ends (at the
 * byte *at), NGX_ERROR (s->error set, at the byte *at).
 */

static ngx_int_t
ngx_http_llm_scan_brackets(ngx_http_llm_scan_t *s,
    ngx_http_llm_scan_levels_t *l, u_char *p, uint64_t brackets,
    ngx_uint_t *at)
{
    u_char      c;
    ngx_uint_t  i, square;

    while (brackets) {
        i = __builtin_ctzll(brackets);
        brackets &= brackets - 1;

        c = p[i];
        square = ((c & 0x20) == 0);
        *at = i + 1;

        if ((c | 0x20) == '{') {

            if (l->depth >= NGX_HTTP_LLM_SCAN_MAX_DEPTH) {
                s->error = ngx_http_llm_scan_too_deep;
                return NGX_ERROR;
            }

            if (l->opened == 64) {
                ngx_http_llm_scan_flush(s, l->depth, l->kinds, l->opened);
                l->opened = 0;
            }

            l->kinds = (l->kinds << 1) | square;
            l->opened++;
            l->depth++;
            continue;
        }

        if ((c | 0x20) != '}') {
            continue;
        }

        if (l->opened) {
            if ((l->kinds & 1) != square) {
                s->error = ngx_http_llm_scan_unbalanced;
                return NGX_ERROR;
            }

            l->kinds >>= 1;
            l->opened--;

        } else {
            s->depth = l->depth;

            if (ngx_http_llm_scan_pop(s, c) != NGX_OK) {
                s->error = ngx_http_llm_scan_unbalanced;
                return NGX_ERROR;
            }
        }

        if (--l->depth == 1) {
            return NGX_DONE;
        }
    }

    return NGX_OK;
}


/*
 * A run of blocks from p while 64 bytes are left, as long as a block's
 * brackets outside strings are none or a pair (r->pair): returns the
 * block whose brackets are to be read one by one (r->brackets and
 * r->outside set), or where the run stops (r->brackets 0: fewer than 64
 * bytes left, or r->fallback: a backslash outside strings in the block
 * at p).  Blocks need not be aligned: inside a string the next block
 * starts at the string's next quote or backslash, so that the long
 * strings of a body (the messages' contents) go by 128 bytes a test and
 * the few bytes between two of them are read in one block.  A function
 * of its own, without calls: its constants and state stay in registers
 * (a call in the loop made gcc load the constants again every block).
 */

__attribute__((target("avx2,pclmul,popcnt,bmi"), noinline)) static u_char *
ngx_http_llm_scan_run(u_char *p, u_char *last, ngx_http_llm_scan_run_t *r)
{
    u_char                     *last64;
    uint64_t                    out, carry, carry_in, escaped, outside;
    uint64_t                    brackets;
    uint32_t                    pair;
    uintptr_t                   last128;
    ngx_uint_t                  n;
    ngx_http_llm_scan_masks_t   m;

    /* the blocks' state is "outside strings", so that a mask is one AND */

    out = r->out;
    carry = r->carry;
    pair = r->pair;

    /* in the buffer: the blocks begin with 64 bytes left */
    last64 = last - 64;

    /* an integer: the bound of the steps may lie before the buffer */
    last128 = (uintptr_t) last - 128;

    if (carry) {
        /* p is in a string, just after an odd run of backslashes */

        if (p > last64) {
            brackets = 0;
            goto stop;
        }

        ngx_http_llm_scan_masks_avx2(p, &m);
        goto escapes;
    }

    for ( ;; ) {

        /* blocks while no backslash is in flight (carry is 0) */

        for ( ;; ) {

            if (out == 0) {

                /* the rest of a string up to its next quote or backslash */

                while ((uintptr_t) p <= last128) {
                    n = ngx_http_llm_scan_string_avx2(p);
                    p += n;

                    if (n != 128) {
                        break;
                    }
                }
            }

            if (p > last64) {
                brackets = 0;
                goto stop;
            }

            ngx_http_llm_scan_masks_avx2(p, &m);

            if (m.backslash) {
                break;
            }

            outside = ngx_http_llm_scan_prefix_xor(m.quote) ^ out;
            brackets = m.bracket & outside;

            if (brackets && !ngx_http_llm_scan_is_pair(p, brackets, pair)) {
                r->outside = outside;
                goto stop;
            }

            /* all ones when the block ends outside strings */

            out = (uint64_t) ((int64_t) outside >> 63);

            p += 64;
        }

        /* blocks with backslashes, until none is in flight */

        for ( ;; ) {

        escapes:

            carry_in = carry;
            escaped = ngx_http_llm_scan_escaped(m.backslash, &carry);
            outside = ngx_http_llm_scan_prefix_xor(m.quote & ~escaped) ^ out;

            if (m.backslash & outside) {
                /* a backslash outside strings: the block is the scalar's */
                r->fallback = 1;
                carry = carry_in;
                brackets = 0;
                goto stop;
            }

            brackets = m.bracket & outside;

            if (brackets && !ngx_http_llm_scan_is_pair(p, brackets, pair)) {
                r->outside = outside;
                goto stop;
            }

            out = (uint64_t) ((int64_t) outside >> 63);

            p += 64;

            if (carry == 0) {
                break;
            }

            if (p > last64) {
                brackets = 0;
                goto stop;
            }

            ngx_http_llm_scan_masks_avx2(p, &m);
        }
    }

stop:

    r->out = out;
    r->carry = carry;
    r->brackets = brackets;

    return p;
}


/*
 * Blocks of a nested value from p while 64 bytes are left: returns where
 * the scalar scan goes on, with s->state and s->backslashes as it would
 * have them there; *fallback: the block at the result is its to read.
 * The levels opened are kept here and written to s->brackets at the end.
 */

u_char *
ngx_http_llm_scan_blocks(ngx_http_llm_scan_t *s, u_char *p, u_char *last,
    ngx_uint_t *fallback)
{
    ngx_int_t                   rc;
    ngx_uint_t                  at;
    ngx_http_llm_scan_run_t     r;
    ngx_http_llm_scan_levels_t  l;

    if (s->state == sw_nested_string) {
        r.out = 0;
        r.carry = s->backslashes;

    } else {
        r.out = ~(uint64_t) 0;
        r.carry = 0;
    }

    r.pair = 0;
    r.fallback = 0;

    l.kinds = 0;
    l.opened = 0;
    l.depth = s->depth;

    for ( ;; ) {
        p = ngx_http_llm_scan_run(p, last, &r);

        if (r.brackets == 0) {
            break;
        }

        rc = ngx_http_llm_scan_brackets(s, &l, p, r.brackets, &at);

        if (rc != NGX_OK) {
            if (rc == NGX_DONE) {
                s->state = sw_after_value;
            }

            p += at;
            goto done;
        }

        r.pair = ngx_http_llm_scan_pair(l.kinds, l.opened, l.depth);
        r.out = (uint64_t) ((int64_t) r.outside >> 63);
        p += 64;
    }

    /* carry is 1 only inside a string: outside, the block fell back */

    *fallback = r.fallback;
    s->state = r.out ? sw_nested : sw_nested_string;
    s->backslashes = (ngx_uint_t) r.carry;

done:

    ngx_http_llm_scan_flush(s, l.depth, l.kinds, l.opened);
    s->depth = l.depth;

    return p;
}


/* the kinds of the levels opened below depth, the innermost in bit 0 */

static ngx_inline void
ngx_http_llm_scan_flush(ngx_http_llm_scan_t *s, ngx_uint_t depth,
    uint64_t kinds, ngx_uint_t opened)
{
    ngx_uint_t  i;

    while (opened--) {
        i = --depth;

        if (kinds & 1) {
            s->brackets[i / 8] |= (u_char) (1 << (i % 8));

        } else {
            s->brackets[i / 8] &= (u_char) ~(1 << (i % 8));
        }

        kinds >>= 1;
    }
}


#endif
