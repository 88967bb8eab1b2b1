
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_answer_int.h"

#if (defined __SSE2__)
#include <emmintrin.h>
#endif


/*
 * The events of a stream are alike: a chat chunk repeats the id, object,
 * created, model and system_fingerprint members of the last one and
 * differs in the few words of its delta.  Reading each one whole is most
 * of what a stream costs the module, so what the last event's reading
 * found is reused when an event begins (design.md 2):
 *
 *   - the replay: an event whose bytes are the last one's but inside one
 *     string that is not kept, and that holds no quote or backslash in
 *     either, reads as the last one did: its scan ended the same, with
 *     the same members seen and the same values kept (their bytes are
 *     outside that string).  It is not read at all;
 *
 *   - the snapshot: an event whose first bytes are the last one's up to
 *     its first nested value is read from there (ngx_http_llm_answer_snap()).
 *
 * The last event's bytes are its kept prefix; both need it whole up to
 * where it is compared.  Neither is taken when a value kept before the
 * place (usage, a model, what "message" or "response" holds) would then
 * not be kept again.
 */


static ngx_uint_t ngx_http_llm_answer_replay(ngx_http_llm_answer_state_t *st,
    u_char *p, u_char *last);
static void ngx_http_llm_answer_restore(ngx_http_llm_answer_state_t *st);
static size_t ngx_http_llm_answer_same(u_char *a, u_char *b, size_t n);
static size_t ngx_http_llm_answer_same_end(u_char *a, u_char *b, size_t n);


/*
 * An event's data line begins at p: when it is the last event's but in
 * one string, it is replayed and kept as the prefix, and the line's LF
 * is returned; else NULL.  It is known by its LF alone (*lf, the first
 * one from p, searched once per piece): the last event's bytes hold no
 * CR, and a CR where they differ is refused.
 */

u_char *
ngx_http_llm_answer_replay_data(ngx_http_llm_answer_state_t *st, u_char *p,
    u_char *last, u_char **lf)
{
    u_char  *q;

    if (*lf == NULL || *lf < p) {
        *lf = memchr(p, LF, last - p);

        if (*lf == NULL) {
            *lf = last;
        }
    }

    q = *lf;

    if (q == last || !ngx_http_llm_answer_replay(st, p, q)) {
        return NULL;
    }

    ngx_http_llm_answer_keep(st, &st->prefix, p, q);

    return q;
}


/*
 * A document that was not replayed begins with [p, last): where its scan
 * starts.  What the last document left is dropped here, whatever it was
 * (its strings are not this one's).
 */

u_char *
ngx_http_llm_answer_reuse(ngx_http_llm_answer_state_t *st, u_char *p,
    u_char *last)
{
    size_t  n;

    /* the spans were the last document's; this one's are found anew */

    st->nspans = 0;
    st->last.len = 0;

    n = st->snap_len;

    if (n == 0) {
        return p;
    }

    /*
     * Otherwise the prefix is about to hold other bytes: the snapshot
     * goes when they differ before its place.
     */

    if ((size_t) (last - p) < n || ngx_memcmp(p, st->prefix.data, n) != 0) {
        st->snap_len = 0;
        return p;
    }

    ngx_http_llm_answer_restore(st);

    return p + n;
}


/*
 * The state at the first nested value of an event, len bytes into it,
 * for the next events that begin with the same bytes: not when a value
 * kept before it would not be there (usage, a model, what "message" or
 * "response" holds) or an "error" member came before it.  The state
 * after len bytes depends on nothing else but whether the model is
 * known, which stays so once it is.
 */

void
ngx_http_llm_answer_snap(ngx_http_llm_answer_state_t *st, size_t len)
{
    st->past_snap = 1;

    if (len > st->prefix.size
        || st->level != 1
        || st->error
        || st->usage.len
        || st->model.len
        || ngx_http_llm_answer_seen(st, ngx_http_llm_m_message)
        || ngx_http_llm_answer_seen(st, ngx_http_llm_m_response))
    {
        st->snap_len = 0;
        return;
    }

    st->snap_len = len;
    st->snap_member = st->member;
    st->snap_seen = st->seen;
    st->snap_object = st->object.complete ? st->object.len : 0;
    st->snap_type = st->type.complete ? st->type.len : 0;
}


/* the state of the snapshot: the prefix holds its bytes already */

static void
ngx_http_llm_answer_restore(ngx_http_llm_answer_state_t *st)
{
    st->state = sw_value;
    st->depth = 1;
    st->level = 1;
    st->member = st->snap_member;
    st->seen = st->snap_seen;
    st->past_snap = 1;

    st->prefix.len = st->snap_len;

    st->object.len = st->snap_object;
    st->object.complete = (st->snap_object != 0);
    st->type.len = st->snap_type;
    st->type.complete = (st->snap_type != 0);
}


/*
 * A document was dispatched: what its scan ended with is kept for the
 * replay of the next, when it ended whole, its bytes are all in the
 * prefix, and it kept nothing the replay would not keep again.  The
 * names kept are in their buffers, which only a scan writes.
 */

void
ngx_http_llm_answer_save(ngx_http_llm_answer_state_t *st)
{
    ngx_http_llm_answer_last_t  *l;

    l = &st->last;

    if (st->replayed) {
        /* the same reading, of this document's bytes */
        l->len = (st->prefix.len <= st->prefix.size) ? st->prefix.len : 0;
        return;
    }

    l->len = 0;
    l->named = (st->event.len != 0);

    if (st->state != sw_done
        || st->prefix.len > st->prefix.size
        || st->prefix.len > 0xffff
        || st->usage.len
        || st->model.len
        || st->nested_error.len
        || st->object.len > 0x7fff
        || st->type.len > 0x7fff
        || st->nested_object.len > 0x7fff
        || st->nested_type.len > 0x7fff)
    {
        return;
    }

    l->len = st->prefix.len;
    l->member = st->member;
    l->seen = st->seen;
    l->error = st->error;

    /* the length, and the top bit: the value ended */

#define ngx_http_llm_answer_save_cap(cap)                                     \
    (uint16_t) ((cap).len | ((cap).complete ? 0x8000 : 0))

    l->object = ngx_http_llm_answer_save_cap(st->object);
    l->type = ngx_http_llm_answer_save_cap(st->type);
    l->nested_object = ngx_http_llm_answer_save_cap(st->nested_object);
    l->nested_type = ngx_http_llm_answer_save_cap(st->nested_type);

#undef ngx_http_llm_answer_save_cap
}


/*
 * [p, last) is the last document but inside one of its strings not kept
 * (a chunk's text): where they begin to differ (d) and where they are
 * the same again to their ends (the last one's tail bytes) lie in the
 * same string of the last one, and what differs holds no quote or
 * backslash there nor here.
 */

static ngx_uint_t
ngx_http_llm_answer_replay(ngx_http_llm_answer_state_t *st, u_char *p,
    u_char *last)
{
    u_char                      *old;
    size_t                       lo, ln, n, d, tail, start, end, k;
    ssize_t                      delta;
    uint16_t                    *span;
    ngx_uint_t                   j, count;
    ngx_http_llm_answer_last_t  *l;

    l = &st->last;
    old = st->prefix.data;
    lo = l->len;
    ln = last - p;
    n = ngx_min(lo, ln);

    d = ngx_http_llm_answer_same(old, p, n);
    tail = ngx_http_llm_answer_same_end(old + lo - (n - d), p + ln - (n - d),
                                        n - d);

    if (d < lo || d < ln) {

        /*
         * The spans are in the order of the strings, the newest last:
         * the one the difference can be in is the last beginning before
         * it
         */

        count = ngx_min(st->nspans, NGX_HTTP_LLM_ANSWER_SPANS);

        for (j = 1; j <= count; j++) {
            span = st->spans[(st->nspans - j) % NGX_HTTP_LLM_ANSWER_SPANS];

            if ((size_t) (span[0] & NGX_HTTP_LLM_ANSWER_SPAN_MAX) < d) {
                break;
            }
        }

        if (j > count) {
            return 0;
        }

        start = span[0] & NGX_HTTP_LLM_ANSWER_SPAN_MAX;
        end = span[1];

        /*
         * the string's bytes in both: no quote or backslash (nor a line
         * end: the caller may not have looked for a CR)
         */

        if (lo - tail > end) {
            return 0;
        }

        if (!(span[0] & NGX_HTTP_LLM_ANSWER_SPAN_CLEAN)
            && memchr(old + start + 1, '\\', end - start - 1) != NULL)
        {
            return 0;
        }

        for (k = d; k < ln - tail; k++) {
            if (p[k] == '"' || p[k] == '\\' || p[k] == CR || p[k] == LF) {
                return 0;
            }
        }

        /* it and the strings after it moved */

        delta = (ssize_t) ln - (ssize_t) lo;

        if (end + delta > NGX_HTTP_LLM_ANSWER_SPAN_MAX) {
            return 0;
        }

        span[0] = (uint16_t) (start | NGX_HTTP_LLM_ANSWER_SPAN_CLEAN);
        span[1] = (uint16_t) (end + delta);

        for (j--; j > 0; j--) {
            span = st->spans[(st->nspans - j) % NGX_HTTP_LLM_ANSWER_SPANS];
            span[0] = (uint16_t) (span[0] + delta);
            span[1] = (uint16_t) (span[1] + delta);
        }

        /* the snapshot's bytes changed */

        if (d < st->snap_len) {
            st->snap_len = 0;
        }
    }

    st->replayed = 1;
    st->state = sw_done;
    st->depth = 0;
    st->level = 1;
    st->member = l->member;
    st->seen = l->seen;
    st->error = l->error;
    st->past_snap = 1;

#define ngx_http_llm_answer_load_cap(cap, v)                                  \
    (cap).len = (v) & 0x7fff;                                                 \
    (cap).complete = ((v) & 0x8000) ? 1 : 0

    ngx_http_llm_answer_load_cap(st->object, l->object);
    ngx_http_llm_answer_load_cap(st->type, l->type);
    ngx_http_llm_answer_load_cap(st->nested_object, l->nested_object);
    ngx_http_llm_answer_load_cap(st->nested_type, l->nested_type);

#undef ngx_http_llm_answer_load_cap

    return 1;
}


/* how many first bytes of a and b are the same, of n */

static size_t
ngx_http_llm_answer_same(u_char *a, u_char *b, size_t n)
{
    size_t  i;

    i = 0;

#if (defined __SSE2__)
    {
    unsigned  m;

    if (n >= 16) {

        /* the last block overlaps the one before: its first bits done */

        for ( ;; ) {
            if (i + 16 > n) {
                i = n - 16;
            }

            m = ~_mm_movemask_epi8(
                    _mm_cmpeq_epi8(_mm_loadu_si128((__m128i *) (a + i)),
                                   _mm_loadu_si128((__m128i *) (b + i))))
                & 0xffff;

            if (m) {
                return i + __builtin_ctz(m);
            }

            if (i + 16 == n) {
                return n;
            }

            i += 16;
        }
    }
    }
#endif

    while (i < n && a[i] == b[i]) {
        i++;
    }

    return i;
}


/* how many last bytes of a[0, n) and b[0, n) are the same */

static size_t
ngx_http_llm_answer_same_end(u_char *a, u_char *b, size_t n)
{
    size_t  i;

    i = 0;

#if (defined __SSE2__)
    {
    size_t    o;
    unsigned  m;

    if (n >= 16) {

        /* blocks from the end; the last one overlaps, at the start */

        for ( ;; ) {
            o = (i + 16 <= n) ? n - i - 16 : 0;

            m = ~_mm_movemask_epi8(
                    _mm_cmpeq_epi8(_mm_loadu_si128((__m128i *) (a + o)),
                                   _mm_loadu_si128((__m128i *) (b + o))))
                & 0xffff;

            if (m) {
                /* the last differing byte: o + its bit */
                return n - (o + 31 - __builtin_clz(m)) - 1;
            }

            if (o == 0) {
                return n;
            }

            i += 16;
        }
    }
    }
#endif

    while (i < n && a[n - i - 1] == b[n - i - 1]) {
        i++;
    }

    return i;
}
