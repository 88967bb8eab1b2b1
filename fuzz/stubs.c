
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


/*
 * What the fuzzed files need of nginx's core at link time; the fuzzed
 * paths never call these (Retry-After parsing is not fuzzed here).
 */


#include <ngx_config.h>
#include <ngx_core.h>


volatile ngx_time_t  *ngx_cached_time;


time_t
ngx_parse_http_time(u_char *value, size_t len)
{
    return NGX_ERROR;
}
