
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_VAR_H_INCLUDED_
#define _NGX_HTTP_LLM_VAR_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* the $llm_* variables */

ngx_int_t ngx_http_llm_add_variables(ngx_conf_t *cf);
ngx_flag_t ngx_http_llm_answer_variables_used(ngx_conf_t *cf);


#endif /* _NGX_HTTP_LLM_VAR_H_INCLUDED_ */
