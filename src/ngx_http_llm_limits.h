
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_LIMITS_H_INCLUDED_
#define _NGX_HTTP_LLM_LIMITS_H_INCLUDED_


/*
 * Limits that several concerns must agree on, in one place: a model name
 * is at most this many bytes wherever it is kept, given or compared (the
 * client's "model", model=, a catalog's ids, the answer's model).
 */

#define NGX_HTTP_LLM_MODEL_MAX       256


#endif /* _NGX_HTTP_LLM_LIMITS_H_INCLUDED_ */
