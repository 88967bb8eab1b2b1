#!/usr/bin/perl

# What the module reads of an answer as it passes (docs/design.md section 2, docs/logging.md): a unit
# test of src/ngx_http_llm_answer*.c without nginx.  A small C driver
# written here is compiled against the build tree's nginx headers and fed
# cases on stdin; it feeds each answer whole, then cut into pieces every
# way it can afford (fixed sizes from 1 byte, every split point of small
# answers, random cuts), and reports the results and whether any cut
# changed them.  Covers: real-shaped OpenAI chat completions, Responses
# and Anthropic messages, plain and streamed; usage in the last chat
# chunk with include_usage and none without; response.completed usage;
# message_start + message_delta (cumulative) usage; in-band errors
# (Anthropic event: error overloaded, OpenAI data: {"error":...},
# response.failed, the Responses error event, vLLM's object error);
# [DONE], message_stop, response.completed vs streams cut before them
# ([DONE] ends chat and completions streams, not Responses or messages);
# usage counts JSON does not take (12abc, 0x10) not found;
# SSE framing per WHATWG (CR, LF, CRLF, CR then LF in the next piece, a
# BOM, comments, multi-line data, fields without a colon or space, events
# without data, unknown fields); a 1 MB data line and a 5 MB content
# string with usage after it; shapes that match and those that do not
# (an error object with 200, a chat body on the messages route, ...);
# "usage" and "model" keys nested in content, tool arguments and deltas
# that must not be taken; escaped quotes, escaped keys, unicode models cut
# at a character; models with invalid UTF-8 or unpaired surrogate escapes
# not found.  The state must be a few allocations of a few KB in all
# whatever the answer's size, under 1.5 KB for a stream of short events.
# The driver runs built with nginx's warning flags and -Werror, with
# ASan + UBSan, and under valgrind when present.
# Run `make` first: it creates build/nginx.

use strict;
use warnings;

use Test::More;
use File::Temp qw(tempdir);
use File::Basename qw(dirname);
use Cwd qw(abs_path);

my $root = abs_path(dirname(__FILE__) . '/..');
my $ngx = "$root/build/nginx";

plan(skip_all => "$ngx/objs missing: run `make` first")
    unless -d "$ngx/objs";

my $dir = tempdir('llm-answer-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# NGX_HTTP_LLM_FAMILY_*
my %family = (chat => 1, responses => 2, messages => 3, embeddings => 4,
    completions => 5, other => 6);

# what a result is when a case does not say
my %unknown = (in => -1, out => -1, model => '', shape => 'unchecked',
    error => '-', events => 0, done => 0);

# the state's allocations must stay below this, whatever the answer
my $state_max = 16384;
my $calls_max = 10;

# and below this for a stream of short events without usage: what an
# idle stream holds (bench/sse.pl's memory per open stream)
my $idle_max = 1536;

###############################################################################

# Building blocks of real-shaped answers.

sub sse {
    my (@events) = @_;
    my $s = '';

    for my $e (@events) {
        my ($name, $data) = @$e;
        $s .= "event: $name\n" if defined $name;
        $s .= "data: $_\n" for split /\n/, $data, -1;
        $s .= "\n";
    }

    return $s;
}

sub data_only { sse(map { [ undef, $_ ] } @_) }

my $chat_id = '"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","created":'
    . '1741570283';
my $chat_model = 'gpt-4o-mini-2024-07-18';

sub chat_chunk {
    my ($choices, $usage) = @_;
    return '{' . $chat_id . ',"object":"chat.completion.chunk","model":"'
        . $chat_model . '","system_fingerprint":"fp_06737a9306",'
        . '"choices":' . $choices
        . (defined $usage ? ',"usage":' . $usage : '') . '}';
}

sub delta {
    my ($delta, $finish) = @_;
    return '[{"index":0,"delta":' . $delta . ',"logprobs":null,'
        . '"finish_reason":' . ($finish // 'null') . '}]';
}

my $chat_usage = '{"prompt_tokens":8,"completion_tokens":9,'
    . '"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0,'
    . '"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,'
    . '"audio_tokens":0,"accepted_prediction_tokens":0,'
    . '"rejected_prediction_tokens":0}}';

# a chat stream; with $usage, stream_options.include_usage was sent
sub chat_stream {
    my ($usage) = @_;
    my $u = $usage ? 'null' : undef;
    my @chunks = (
        chat_chunk(delta('{"role":"assistant","content":"","refusal":null}'),
            $u),
        chat_chunk(delta('{"content":"Hello"}'), $u),
        chat_chunk(delta('{"content":"! How can I help?"}'), $u),
        chat_chunk(delta('{}', '"stop"'), $u),
    );
    push @chunks, chat_chunk('[]', $chat_usage) if $usage;
    return data_only(@chunks, '[DONE]');
}

my $chat_body = <<'EOF';
{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {
      "cached_tokens": 0,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default"
}
EOF

# tool call arguments are a JSON string holding "usage" and "model" keys;
# the message object has nested ones too
my $chat_tools_body = '{"id":"chatcmpl-abc","object":"chat.completion",'
    . '"created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{'
    . '"index":0,"message":{"role":"assistant","content":null,"model":'
    . '"not-this","usage":{"prompt_tokens":999,"completion_tokens":999},'
    . '"tool_calls":[{"id":"call_1","type":"function","function":{"name":'
    . '"record","arguments":"{\"model\":\"fake\",\"usage\":{'
    . '\"prompt_tokens\":555},\"note\":\"a \\\\\"quoted\\\\\" word\"}"}}]},'
    . '"logprobs":null,"finish_reason":"tool_calls"}],"usage":{'
    . '"prompt_tokens":82,"completion_tokens":17,"total_tokens":99}}';

my $responses_object = sub {
    my ($status, $output, $usage, $error) = @_;
    return '{"id":"resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",'
        . '"object":"response","created_at":1741476542,"status":"' . $status
        . '","error":' . ($error // 'null') . ',"incomplete_details":null,'
        . '"instructions":null,"max_output_tokens":null,"model":'
        . '"gpt-4.1-2025-04-14","output":' . $output . ','
        . '"parallel_tool_calls":true,"previous_response_id":null,'
        . '"reasoning":{"effort":null,"summary":null},"store":true,'
        . '"temperature":1.0,"text":{"format":{"type":"text"}},'
        . '"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":'
        . '"disabled","usage":' . ($usage // 'null') . ',"user":null,'
        . '"metadata":{}}';
};

my $responses_output = '[{"type":"message","id":"msg_67ccd2bf17f0819081ff'
    . '3bb2cf6508e60bb6a6b452d3795b","status":"completed","role":'
    . '"assistant","content":[{"type":"output_text","text":"In a peaceful '
    . 'grove beneath a silver moon, a unicorn named Lumina discovered a '
    . 'hidden pool.","annotations":[]}]}]';

my $responses_usage = '{"input_tokens":36,"input_tokens_details":{'
    . '"cached_tokens":0},"output_tokens":87,"output_tokens_details":{'
    . '"reasoning_tokens":0},"total_tokens":123}';

sub responses_stream {
    my (@end) = @_;
    my $created = $responses_object->('in_progress', '[]');
    my @events = (
        [ 'response.created', '{"type":"response.created",'
            . '"sequence_number":0,"response":' . $created . '}' ],
        [ 'response.in_progress', '{"type":"response.in_progress",'
            . '"sequence_number":1,"response":' . $created . '}' ],
        [ 'response.output_item.added', '{"type":'
            . '"response.output_item.added","sequence_number":2,'
            . '"output_index":0,"item":{"id":"msg_1","status":"in_progress",'
            . '"type":"message","role":"assistant","content":[]}}' ],
        [ 'response.content_part.added', '{"type":'
            . '"response.content_part.added","sequence_number":3,"item_id":'
            . '"msg_1","output_index":0,"content_index":0,"part":{"type":'
            . '"output_text","annotations":[],"text":""}}' ],
        [ 'response.output_text.delta', '{"type":'
            . '"response.output_text.delta","sequence_number":4,"item_id":'
            . '"msg_1","output_index":0,"content_index":0,"delta":'
            . '"In a peaceful grove"}' ],
        [ 'response.output_text.done', '{"type":'
            . '"response.output_text.done","sequence_number":5,"item_id":'
            . '"msg_1","output_index":0,"content_index":0,"text":'
            . '"In a peaceful grove"}' ],
    );
    return sse(@events, @end);
}

my $responses_completed = [ 'response.completed', '{"type":'
    . '"response.completed","sequence_number":6,"response":'
    . $responses_object->('completed', $responses_output, $responses_usage)
    . '}' ];

my $anthropic_body = '{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":'
    . '"message","role":"assistant","model":"claude-sonnet-4-20250514",'
    . '"content":[{"type":"text","text":"Hello! How can I help you '
    . 'today?"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{'
    . '"input_tokens":12,"cache_creation_input_tokens":0,'
    . '"cache_read_input_tokens":0,"output_tokens":6,"service_tier":'
    . '"standard"}}';

my $message_start = [ 'message_start', '{"type":"message_start","message":'
    . '{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message",'
    . '"role":"assistant","content":[],"model":"claude-sonnet-4-20250514",'
    . '"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,'
    . '"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
    . '"output_tokens":1}}}' ];

my @anthropic_text = (
    [ 'content_block_start', '{"type":"content_block_start","index":0,'
        . '"content_block":{"type":"text","text":""}}' ],
    [ 'ping', '{"type": "ping"}' ],
    [ 'content_block_delta', '{"type":"content_block_delta","index":0,'
        . '"delta":{"type":"text_delta","text":"Hello"}}' ],
    [ 'content_block_delta', '{"type":"content_block_delta","index":0,'
        . '"delta":{"type":"text_delta","text":"! \"usage\": {\"output_'
        . 'tokens\": 99}"}}' ],
    [ 'content_block_stop', '{"type":"content_block_stop","index":0}' ],
);

sub message_delta {
    my ($out) = @_;
    return [ 'message_delta', '{"type":"message_delta","delta":{'
        . '"stop_reason":"end_turn","stop_sequence":null},"usage":{'
        . '"output_tokens":' . $out . '}}' ];
}

my $message_stop = [ 'message_stop', '{"type":"message_stop"}' ];

my $anthropic_stream = sse($message_start, @anthropic_text,
    message_delta(15), $message_stop);

my $overloaded = [ 'error', '{"type":"error","error":{"type":'
    . '"overloaded_error","message":"Overloaded"}}' ];

# tool input streamed as partial JSON: "model" and "usage" in strings
my $anthropic_tool_stream = sse($message_start,
    [ 'content_block_start', '{"type":"content_block_start","index":1,'
        . '"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNT'
        . 'rN7Up6","name":"get_weather","input":{}}}' ],
    [ 'content_block_delta', '{"type":"content_block_delta","index":1,'
        . '"delta":{"type":"input_json_delta","partial_json":"{\"model\": '
        . '\"x\", \"usage\": {\"output_tokens\": 7"}}' ],
    [ 'content_block_delta', '{"type":"content_block_delta","index":1,'
        . '"delta":{"type":"input_json_delta","partial_json":"}}"}}' ],
    [ 'content_block_stop', '{"type":"content_block_stop","index":1}' ],
    message_delta(89), $message_stop);

my $anthropic_result = { in => 25, out => 15, model =>
    'claude-sonnet-4-20250514', shape => 'ok', events => 8, done => 1 };

sub crlf { my ($s, $eol) = @_; $s =~ s/\n/$eol/g; return $s }

my $mb = 1 << 20;

###############################################################################

# Cases: [ name, family, sse, body, { expected } ]; every case is also
# checked for the same result in pieces.

my @cases = (

    # plain JSON answers

    [ 'chat completion, pretty-printed, usage', 'chat', 0, $chat_body,
        { in => 19, out => 10, model => 'gpt-4.1-2025-04-14',
          shape => 'ok' } ],
    [ 'chat completion, usage and model first', 'chat', 0,
        '{"usage":{"completion_tokens":3,"prompt_tokens":4},"model":"m",'
        . '"choices":[],"object":"chat.completion"}',
        { in => 4, out => 3, model => 'm', shape => 'ok' } ],
    [ 'nested model and usage in a message and tool arguments', 'chat', 0,
        $chat_tools_body,
        { in => 82, out => 17, model => 'gpt-4o-2024-08-06',
          shape => 'ok' } ],
    [ 'only nested usage and model: unknown', 'chat', 0,
        '{"object":"chat.completion","choices":[{"message":{"model":"x",'
        . '"usage":{"prompt_tokens":5}}}],"data":{"usage":{'
        . '"prompt_tokens":6}}}',
        { shape => 'ok' } ],
    [ 'escaped quotes and brackets in content', 'chat', 0,
        '{"object":"chat.completion","choices":[{"message":{"content":'
        . '"he said \"}]}, \"usage\": {\"prompt_tokens\": 1}\\\\\" [[{{"}}],'
        . '"model":"gpt-4o","usage":{"prompt_tokens":2,'
        . '"completion_tokens":3}}',
        { in => 2, out => 3, model => 'gpt-4o', shape => 'ok' } ],
    [ 'escaped member names', 'chat', 0,
        '{"obj\u0065ct":"chat.completion","choice\u0073":[],"mod\u0065l":'
        . '"gpt-4o","\u0075sage":{"prompt_t\u006fkens":7,'
        . '"completion_tokens":8}}',
        { in => 7, out => 8, model => 'gpt-4o', shape => 'ok' } ],
    [ 'escaped object value', 'chat', 0,
        '{"object":"chat\u002ecompletion","choices":[]}',
        { shape => 'ok' } ],
    [ 'responses, usage', 'responses', 0,
        $responses_object->('completed', $responses_output,
            $responses_usage),
        { in => 36, out => 87, model => 'gpt-4.1-2025-04-14',
          shape => 'ok' } ],
    [ 'responses failed in a 200', 'responses', 0,
        $responses_object->('failed', '[]', undef,
            '{"code":"rate_limit_exceeded","message":"Rate limit reached"}'),
        { model => 'gpt-4.1-2025-04-14', shape => 'mismatch',
          error => 'rate_limited' } ],
    [ 'anthropic message, usage', 'messages', 0, $anthropic_body,
        { in => 12, out => 6, model => 'claude-sonnet-4-20250514',
          shape => 'ok' } ],
    [ 'embeddings list', 'embeddings', 0,
        '{"object":"list","data":[{"object":"embedding","index":0,'
        . '"embedding":[' . join(',', map { "0.0$_" } 1 .. 300) . ']}],'
        . '"model":"text-embedding-3-small","usage":{"prompt_tokens":8,'
        . '"total_tokens":8}}',
        { in => 8, model => 'text-embedding-3-small', shape => 'ok' } ],
    [ 'legacy completion', 'completions', 0,
        '{"id":"cmpl-1","object":"text_completion","created":1,"model":'
        . '"gpt-3.5-turbo-instruct","choices":[{"text":"\n\nHi","index":0,'
        . '"logprobs":null,"finish_reason":"length"}],"usage":{'
        . '"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}',
        { in => 5, out => 7, model => 'gpt-3.5-turbo-instruct',
          shape => 'ok' } ],
    [ 'other family: never judged', 'other', 0,
        '{"object":"whatever","usage":{"input_tokens":1,'
        . '"output_tokens":2}}',
        { in => 1, out => 2 } ],
    [ 'error object with 200', 'chat', 0,
        '{"error":{"message":"The server had an error while processing '
        . 'your request.","type":"server_error","param":null,"code":null}}',
        { shape => 'mismatch', error => 'server_error' } ],
    [ 'anthropic error object with 200', 'messages', 0,
        '{"type":"error","error":{"type":"overloaded_error","message":'
        . '"Overloaded"}}',
        { shape => 'mismatch', error => 'overloaded' } ],
    [ 'chat body on the messages route', 'messages', 0, $chat_body,
        { in => 19, out => 10, model => 'gpt-4.1-2025-04-14',
          shape => 'mismatch' } ],
    [ 'anthropic body on the chat route', 'chat', 0, $anthropic_body,
        { in => 12, out => 6, model => 'claude-sonnet-4-20250514',
          shape => 'mismatch' } ],
    [ 'responses body on the chat route', 'chat', 0,
        $responses_object->('completed', '[]', $responses_usage),
        { in => 36, out => 87, model => 'gpt-4.1-2025-04-14',
          shape => 'mismatch' } ],
    [ 'chat completion without choices', 'chat', 0,
        '{"object":"chat.completion","model":"m"}',
        { model => 'm', shape => 'mismatch' } ],
    [ 'truncated answer', 'chat', 0, substr($chat_body, 0, 300),
        { model => 'gpt-4.1-2025-04-14', shape => 'mismatch' } ],
    [ 'usage complete, answer truncated after it', 'chat', 0,
        '{"object":"chat.completion","choices":[],"usage":{'
        . '"prompt_tokens":1,"completion_tokens":2},"x":"cut',
        { in => 1, out => 2, shape => 'mismatch' } ],
    [ 'html answer', 'chat', 0, "<html><body>OK</body></html>\n",
        { shape => 'mismatch' } ],
    [ 'something after the object', 'chat', 0,
        '{"object":"chat.completion","choices":[]} x',
        { shape => 'mismatch' } ],
    [ 'whitespace after the object', 'chat', 0,
        "{\"object\":\"chat.completion\",\"choices\":[]}\r\n\r\n",
        { shape => 'ok' } ],
    [ 'empty answer', 'chat', 0, '', { shape => 'mismatch' } ],
    [ 'broken JSON: a member name not a string', 'chat', 0,
        '{1:2,"object":"chat.completion","choices":[]}',
        { shape => 'mismatch' } ],
    [ 'broken JSON: no colon', 'chat', 0,
        '{"object" "chat.completion","choices":[]}',
        { shape => 'mismatch' } ],
    [ 'broken JSON: no value', 'chat', 0,
        '{"model":,"object":"chat.completion","choices":[]}',
        { shape => 'mismatch' } ],
    [ 'broken JSON: no comma', 'chat', 0,
        '{"object":"chat.completion" "choices":[]}',
        { shape => 'mismatch' } ],
    [ 'a top-level array', 'chat', 0,
        '[{"object":"chat.completion","choices":[]}]',
        { shape => 'mismatch' } ],
    [ 'a member name too long to keep', 'chat', 0,
        '{"' . ('k' x 60) . '":{"usage":1},"object":"chat.completion",'
        . '"choices":[]}',
        { shape => 'ok' } ],
    [ 'a bad escape in a member name', 'chat', 0,
        '{"mod\x":"m","object":"chat.completion","choices":[]}',
        { shape => 'ok' } ],
    [ 'object not a string', 'chat', 0,
        '{"object":["chat.completion"],"choices":[]}',
        { shape => 'mismatch' } ],
    [ 'object too long to keep', 'chat', 0,
        '{"object":"chat.completion' . ('x' x 100) . '","choices":[]}',
        { shape => 'mismatch' } ],
    [ 'usage values not counts', 'other', 0,
        '{"usage":{"prompt_tokens":-1,"completion_tokens":1.5,'
        . '"input_tokens":"3","output_tokens":1e2}}', {} ],
    [ 'usage counts that JSON does not take', 'other', 0,
        '{"usage":{"completion_tokens":5,"prompt_tokens":12abc}}',
        { out => 5 } ],
    [ 'usage count 0x10', 'other', 0,
        '{"usage":{"completion_tokens":5,"prompt_tokens":0x10}}',
        { out => 5 } ],
    [ 'usage count 01', 'other', 0,
        '{"usage":{"prompt_tokens":01,"completion_tokens":5}}', {} ],
    [ 'usage count 0', 'other', 0,
        '{"usage":{"prompt_tokens":0,"completion_tokens":5}}',
        { in => 0, out => 5 } ],
    [ 'usage count null keeps the earlier one', 'messages', 1,
        sse([ 'message_start', '{"type":"message_start","message":{'
            . '"type":"message","content":[],"usage":{"input_tokens":25,'
            . '"output_tokens":1}}}' ],
            [ 'message_delta', '{"type":"message_delta","delta":{},'
            . '"usage":{"input_tokens":null,"output_tokens":15}}' ],
            [ 'message_stop', '{"type":"message_stop"}' ]),
        { in => 25, out => 15, shape => 'ok', events => 3, done => 1 } ],
    [ 'usage null, usage not an object', 'other', 0,
        '{"usage":null,"x":{"usage":{"prompt_tokens":1}}}', {} ],
    [ 'duplicate usage: the last object, whole', 'other', 0,
        '{"usage":{"prompt_tokens":1,"completion_tokens":2},"usage":{'
        . '"prompt_tokens":3}}',
        { in => 3 } ],
    [ 'huge token count ignored', 'other', 0,
        '{"usage":{"prompt_tokens":99999999999999999999,'
        . '"completion_tokens":123456789012}}',
        { out => 123456789012 } ],
    [ 'usage nested deeply', 'other', 0,
        '{"usage":{"x":' . ('[' x 40) . (']' x 40)
        . ',"prompt_tokens":4,"completion_tokens":5}}',
        { } ],
    [ 'usage with deep details before the counts', 'other', 0,
        '{"usage":{"x":' . ('[' x 10) . (']' x 10)
        . ',"prompt_tokens":4,"completion_tokens":5}}',
        { in => 4, out => 5 } ],

    # models

    [ 'model with unicode escapes', 'other', 0,
        '{"model":"m\u00e9-\ud83d\ude00 \"q\""}',
        { model => "m\xc3\xa9-\xf0\x9f\x98\x80 \"q\"" } ],
    [ 'model cut at 256 bytes', 'other', 0,
        '{"model":"' . ('a' x 300) . '"}', { model => 'a' x 256 } ],
    [ 'model cut before a character that does not fit', 'other', 0,
        '{"model":"' . ('a' x 255) . "\xc3\xa9" . '"}',
        { model => 'a' x 255 } ],
    [ 'model of escapes, longer than kept', 'other', 0,
        '{"model":"' . ('\u00e9' x 200) . '"}',
        { model => "\xc3\xa9" x 128 } ],
    [ 'model of surrogate pairs, longer than kept', 'other', 0,
        '{"model":"' . ('\ud83d\ude00' x 100) . '"}',
        { model => "\xf0\x9f\x98\x80" x 64 } ],
    [ 'model with invalid UTF-8', 'other', 0,
        "{\"model\":\"gpt\xff-4\"}", {} ],
    [ 'model of mixed escapes, longer than kept', 'other', 0,
        '{"model":"' . ('ab\"\u00e9\u4e2d' x 100) . '"}',
        { model => "ab\"\xc3\xa9\xe4\xb8\xad" x 32 } ],
    [ 'model longer than kept, a surrogate pair at the bound', 'other',
        0, '{"model":"ab' . ('\ud83d\ude00' x 100) . '"}',
        { model => 'ab' . ("\xf0\x9f\x98\x80" x 63) } ],
    [ 'model longer than kept, a high surrogate at the bound', 'other',
        0, '{"model":"abcdef' . ('\ud83d\ude00' x 100) . '"}',
        { model => 'abcdef' . ("\xf0\x9f\x98\x80" x 62) } ],
    [ 'model longer than kept, an escape at the bound', 'other', 0,
        '{"model":"ab' . ('\u00e9' x 200) . '"}',
        { model => 'ab' . ("\xc3\xa9" x 127) } ],
    [ 'model longer than kept, a bad escape in it', 'other', 0,
        '{"model":"\uZZZZ' . ('a' x 800) . '"}', {} ],
    [ 'model cut by the end of the answer', 'chat', 0,
        '{"object":"chat.completion","choices":[],"model":"gpt-4',
        { shape => 'mismatch' } ],
    [ 'model with CJK and emoji', 'other', 0,
        "{\"model\":\"\xe4\xb8\xad\xf0\x9f\x98\x80\"}",
        { model => "\xe4\xb8\xad\xf0\x9f\x98\x80" } ],
    [ 'model with a raw surrogate', 'other', 0,
        "{\"model\":\"gpt\xed\xa0\x80x\"}", {} ],
    [ 'model with an overlong sequence', 'other', 0,
        "{\"model\":\"a\xe0\x80\x80\"}", {} ],
    [ 'model above U+10FFFF', 'other', 0,
        "{\"model\":\"a\xf4\x90\x80\x80\"}", {} ],
    [ 'model with a sequence cut short', 'other', 0,
        "{\"model\":\"a\xf0\x9f\x98\"}", {} ],
    [ 'model with a bad continuation byte', 'other', 0,
        "{\"model\":\"a\xe4\xb8x\"}", {} ],
    [ 'model with a lone low surrogate escape', 'other', 0,
        '{"model":"a\ude00b"}', {} ],
    [ 'model with a lone high surrogate escape', 'other', 0,
        '{"model":"a\ud83db"}', {} ],
    [ 'model ending in a high surrogate escape', 'other', 0,
        '{"model":"a\ud83d"}', {} ],
    [ 'model with a reversed surrogate pair', 'other', 0,
        '{"model":"a\ude00\ud83d"}', {} ],
    [ 'model with two high surrogate escapes', 'other', 0,
        '{"model":"a\ud83d\ud83d"}', {} ],
    [ 'model with a high surrogate before another escape', 'other', 0,
        '{"model":"a\ud83d\u0041"}', {} ],
    [ 'model with a high surrogate before \\n', 'other', 0,
        '{"model":"a\ud83d\nb"}', {} ],
    [ 'model with NUL', 'other', 0,
        '{"model":"a\u0000b"}', { model => "a\0b" } ],
    [ 'model longer than kept, a lone surrogate within the bound',
        'other', 0, '{"model":"\ud83d' . ('\u00e9' x 200) . '"}', {} ],
    [ 'model longer than kept, a lone surrogate past the bound',
        'other', 0, '{"model":"' . ('\u00e9' x 300) . '\ud83d"}',
        { model => "\xc3\xa9" x 128 } ],
    [ 'model longer than kept, raw UTF-8 at the bound', 'other', 0,
        '{"model":"ab' . ("\xe4\xb8\xad" x 300) . '"}',
        { model => 'ab' . ("\xe4\xb8\xad" x 84) } ],
    [ 'model with a control character', 'other', 0,
        "{\"model\":\"a\x01b\"}", {} ],
    [ 'model not a string', 'other', 0, '{"model":42}', {} ],
    [ 'model empty', 'other', 0, '{"model":""}', {} ],

    [ '5 MB content string, usage after it', 'chat', 0,
        '{"id":"chatcmpl-1","object":"chat.completion","created":1,'
        . '"model":"gpt-4o","choices":[{"index":0,"message":{"role":'
        . '"assistant","content":"' . ('lorem \"ipsum\" usage ' x
        (5 * $mb / 22)) . '"},"finish_reason":"length"}],"usage":{'
        . '"prompt_tokens":11,"completion_tokens":1250000}}',
        { in => 11, out => 1250000, model => 'gpt-4o', shape => 'ok' },
        'big' ],

    # OpenAI chat streams

    [ 'chat stream with include_usage', 'chat', 1, chat_stream(1),
        { in => 8, out => 9, model => $chat_model, shape => 'ok',
          events => 6, done => 1 } ],
    [ 'chat stream without include_usage', 'chat', 1, chat_stream(0),
        { model => $chat_model, shape => 'ok', events => 5, done => 1,
          bytes => $idle_max } ],
    [ 'chat stream cut before [DONE]', 'chat', 1,
        substr(chat_stream(1), 0, -length("data: [DONE]\n\n")),
        { in => 8, out => 9, model => $chat_model, shape => 'ok',
          events => 5 } ],
    [ 'chat stream cut in the [DONE] event', 'chat', 1,
        substr(chat_stream(1), 0, -1),
        { in => 8, out => 9, model => $chat_model, shape => 'ok',
          events => 5 } ],
    [ 'chat stream cut in the usage chunk', 'chat', 1,
        substr(chat_stream(1), 0, index(chat_stream(1), '"total_tokens"')),
        { model => $chat_model, shape => 'ok', events => 4 } ],
    # events that begin as the last one did start the scan at its first
    # nested value (the snapshot): what follows it is still read, and a
    # name kept after it (here an escaped "object" again, the same name
    # decoded) drops the snapshot, whose buffer it took
    [ 'chat chunks alike up to choices, an error member after them', 'chat',
        1, data_only(chat_chunk(delta('{"content":"a"}')),
            chat_chunk(delta('{"content":"b"}')),
            substr(chat_chunk(delta('{"content":"c"}')), 0, -1)
            . ',"error":{"message":"overloaded","type":"server_error"}}'),
        { model => $chat_model, shape => 'mismatch', events => 3,
          error => 'server_error' } ],
    [ 'chat chunks alike up to choices, object again after them', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"a"}')),
            substr(chat_chunk(delta('{"content":"b"}')), 0, -1)
            . ',"object":"chat.completion.\\u0063hunk"}',
            chat_chunk(delta('{"content":"c"}')),
            chat_chunk(delta('{"content":"d"}'))),
        { model => $chat_model, shape => 'ok', events => 4 } ],
    [ 'chat chunks alike up to choices, the last not JSON after them',
        'chat', 1, data_only(chat_chunk(delta('{"content":"a"}')),
            chat_chunk(delta('{"content":"b"}')) . '}'),
        { model => $chat_model, shape => 'mismatch', events => 2 } ],
    # an event that is the last one but inside one string not kept is
    # not read again (the replay): only when no quote, backslash or line
    # end is where they differ, and never for a kept name or an event
    # with a name of its own
    [ 'chat chunks alike but in their text, a quote in one', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"a"}')),
            chat_chunk(delta('{"content":"bb"}')),
            chat_chunk(delta('{"content":"say \\"hi\\" x"}')),
            chat_chunk(delta('{"content":"c"}')),
            chat_chunk(delta('{"content":"dddd"}')), '[DONE]'),
        { model => $chat_model, shape => 'ok', events => 6, done => 1 } ],
    [ 'chat chunks alike but in their object', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"a"}')),
            chat_chunk(delta('{"content":"b"}')),
            chat_chunk(delta('{"content":"c"}')) =~ s/chunk"/chunx"/r),
        { model => $chat_model, shape => 'mismatch', events => 3 } ],
    [ 'chat chunks alike, the last one an error event', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"a"}')),
            chat_chunk(delta('{"content":"b"}')))
        . sse([ 'error', chat_chunk(delta('{"content":"c"}')) ]),
        { model => $chat_model, shape => 'mismatch', events => 3,
          error => 'server_error' } ],
    [ 'chat chunks alike, a CR where they differ', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"a"}')),
            chat_chunk(delta('{"content":"b"}')),
            chat_chunk(delta("{\"content\":\"c\rd\"}"))),
        { model => $chat_model, shape => 'mismatch', events => 3 } ],
    [ 'chat chunks alike, the last with a second data line', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"a"}')),
            chat_chunk(delta('{"content":"b"}')),
            chat_chunk(delta('{"content":"b"}')) . "\n{}"),
        { model => $chat_model, shape => 'mismatch', events => 3 } ],
    [ 'events alike in a kept name after one that was no JSON', 'messages',
        1, data_only('{"typE":"message_stoq"}}', '{"type":"message_stoq"}',
            '{"type":"message_stop"}'),
        { shape => 'mismatch', events => 3, done => 1 } ],
    [ 'chunks alike in their first of many strings', 'chat', 1,
        data_only(map { chat_chunk('[{"index":0,"delta":{"content":"' . $_
            . '"},"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7",'
            . '"h":"8","i":"9"}]') } qw(x yy z)),
        { model => $chat_model, shape => 'ok', events => 3 } ],
    [ 'openai error mid-stream', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"Hel"}')),
            '{"error":{"message":"The server had an error while processing '
            . 'your request. Sorry about that!","type":"server_error",'
            . '"param":null,"code":null}}'),
        { model => $chat_model, shape => 'mismatch', events => 2,
          error => 'server_error' } ],
    [ 'openai rate limit error mid-stream', 'chat', 1,
        data_only('{"error":{"message":"Rate limit reached","type":'
            . '"tokens","param":null,"code":"rate_limit_exceeded"}}'),
        { shape => 'mismatch', events => 1, error => 'rate_limited' } ],
    [ 'vllm error event', 'chat', 1,
        data_only('{"object":"error","message":"This model\'s maximum '
            . 'context length is 4096 tokens.","type":"BadRequestError",'
            . '"param":null,"code":400}'),
        { shape => 'mismatch', events => 1, error => 'context_length' } ],
    [ 'usage chunk with choices null', 'chat', 1,
        data_only(chat_chunk('null', '{"prompt_tokens":1,'
            . '"completion_tokens":2}'), '[DONE]'),
        { in => 1, out => 2, model => $chat_model, shape => 'ok',
          events => 2, done => 1 } ],
    [ 'usage and model in deltas not taken', 'chat', 1,
        data_only('{"object":"chat.completion.chunk","choices":[{"delta":{'
            . '"content":"\"usage\":{\"prompt_tokens\":1}","usage":{'
            . '"prompt_tokens":77},"model":"no"}}]}'),
        { shape => 'ok', events => 1 } ],
    [ 'chat stream on the messages route', 'messages', 1, chat_stream(1),
        { in => 8, out => 9, model => $chat_model, shape => 'mismatch',
          events => 6 } ],
    [ 'legacy completion stream', 'completions', 1,
        data_only('{"id":"cmpl-1","object":"text_completion","created":1,'
            . '"choices":[{"text":"Hi","index":0,"logprobs":null,'
            . '"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}',
            '[DONE]'),
        { model => 'gpt-3.5-turbo-instruct', shape => 'ok', events => 2,
          done => 1 } ],
    [ 'a 1 MB data line', 'chat', 1,
        data_only(chat_chunk(delta('{"content":"'
            . ('x\"usage\":{}, ' x ($mb / 16)) . '"}')), chat_chunk('[]',
            '{"prompt_tokens":3,"completion_tokens":65536}'), '[DONE]'),
        { in => 3, out => 65536, model => $chat_model, shape => 'ok',
          events => 3, done => 1 },
        'big' ],

    # SSE framing

    [ 'CR line endings', 'messages', 1, crlf($anthropic_stream, "\r"),
        $anthropic_result ],
    [ 'CRLF line endings', 'messages', 1, crlf($anthropic_stream, "\r\n"),
        $anthropic_result ],
    [ 'mixed line endings', 'chat', 1,
        "data: " . chat_chunk(delta('{}'), 'null') . "\r\n\r"
        . "data: " . chat_chunk('[]', $chat_usage) . "\n\r\n"
        . "data: [DONE]\r\r",
        { in => 8, out => 9, model => $chat_model, shape => 'ok',
          events => 3, done => 1 } ],
    [ 'CR, CR is two line ends, CR LF one', 'other', 1,
        "data: a\r\rdata: b\r\n\r\ndata: c\r\ndata: d\r\n\r\n",
        { events => 3 } ],
    [ 'a BOM', 'messages', 1, "\xef\xbb\xbf" . $anthropic_stream,
        $anthropic_result ],
    [ 'a BOM only at the start', 'other', 1,
        "\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n",
        { events => 1 } ],
    [ 'a broken BOM', 'other', 1, "\xef\xbbdata: x\n\ndata: y\n\n",
        { events => 1 } ],
    [ 'a broken BOM ended by LF', 'other', 1, "\xef\ndata: x\n\n",
        { events => 1 } ],
    [ 'comments and keepalives', 'chat', 1,
        ": OPENROUTER PROCESSING\n\n:\n" . ": ping\r\n"
        . crlf(chat_stream(1), "\n: keepalive\n"),
        { in => 8, out => 9, model => $chat_model, shape => 'ok',
          events => 6, done => 1 } ],
    [ 'multi-line data joined with LF', 'chat', 1,
        "data: {\"object\":\"chat.completion.chunk\",\ndata:\"choices\":"
        . "[],\"usage\":{\"prompt_tokens\":3,\ndata:  \"completion_tokens"
        . "\":4}}\n\n",
        { in => 3, out => 4, shape => 'ok', events => 1 } ],
    [ 'data split into lines inside a string', 'chat', 1,
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],"
        . "\"x\":\"a\ndata: b\",\"usage\":{\"prompt_tokens\":3}}\n\n",
        { in => 3, shape => 'ok', events => 1 } ],
    [ 'no space after the colon, two spaces', 'messages', 1,
        "event:message_start\ndata:" . $message_start->[1] . "\n\n"
        . "event:  message_stop\ndata:  {\"type\":\"message_stop\"}\n\n",
        { in => 25, out => 1, model => 'claude-sonnet-4-20250514',
          shape => 'ok', events => 2, done => 1 } ],
    [ '[DONE] with a space after it is not the end', 'other', 1,
        "data: [DONE] \n\ndata:[DONE]\n\n", { events => 2, done => 1 } ],
    [ '[DONE] as two data lines is not the end', 'other', 1,
        "data: [DO\ndata: NE]\n\n", { events => 1 } ],
    [ 'a field without a colon', 'other', 1, "data\n\ndata\ndata\n\n",
        { events => 2 } ],
    [ 'events without data are not dispatched', 'messages', 1,
        "event: ping\n\nevent: message_stop\n\n\n\nid: 5\nretry: 10\n\n",
        { } ],
    [ 'unknown fields and case', 'other', 1,
        "Data: x\n\nDATA: y\n\nid: 1\ndatum: z\n\nevent\n\n"
        . "averyveryverylongfieldname: data\n\n",
        { } ],
    [ 'event name from the event field', 'messages', 1,
        "event: message_stop\ndata: {}\n\n",
        { shape => 'mismatch', events => 1, done => 1 } ],
    [ 'event name too long to keep', 'other', 1,
        "event: " . ('e' x 100) . "error\ndata: {}\n\n",
        { events => 1 } ],
    [ 'the last event field wins', 'other', 1,
        "event: error\nevent: ping\ndata: {}\n\n", { events => 1 } ],

    # Responses streams

    [ 'responses stream, usage in response.completed', 'responses', 1,
        responses_stream($responses_completed),
        { in => 36, out => 87, model => 'gpt-4.1-2025-04-14',
          shape => 'ok', events => 7, done => 1 } ],
    [ 'responses stream cut before response.completed', 'responses', 1,
        responses_stream(),
        { model => 'gpt-4.1-2025-04-14', shape => 'ok', events => 6 } ],
    [ 'responses stream with [DONE] but no response.completed',
        'responses', 1, responses_stream([ undef, '[DONE]' ]),
        { model => 'gpt-4.1-2025-04-14', shape => 'ok', events => 7 } ],
    [ 'responses stream, response.completed then [DONE]', 'responses', 1,
        responses_stream($responses_completed, [ undef, '[DONE]' ]),
        { in => 36, out => 87, model => 'gpt-4.1-2025-04-14',
          shape => 'ok', events => 8, done => 1 } ],
    [ 'responses stream incomplete', 'responses', 1,
        responses_stream([ 'response.incomplete', '{"type":'
            . '"response.incomplete","sequence_number":6,"response":'
            . $responses_object->('incomplete', $responses_output,
                '{"input_tokens":36,"output_tokens":16}') . '}' ]),
        { in => 36, out => 16, model => 'gpt-4.1-2025-04-14',
          shape => 'ok', events => 7, done => 1 } ],
    [ 'responses stream failed', 'responses', 1,
        responses_stream([ 'response.failed', '{"type":"response.failed",'
            . '"sequence_number":6,"response":' . $responses_object->(
            'failed', '[]', undef, '{"code":"server_error","message":'
            . '"The model failed to generate a response."}') . '}' ]),
        { model => 'gpt-4.1-2025-04-14', shape => 'mismatch',
          events => 7, done => 1, error => 'server_error' } ],
    [ 'responses stream failed, rate limited', 'responses', 1,
        sse([ 'response.failed', '{"type":"response.failed",'
            . '"response":' . $responses_object->('failed', '[]', undef,
            '{"code":"rate_limit_exceeded","message":"slow down"}')
            . '}' ]),
        { model => 'gpt-4.1-2025-04-14', shape => 'mismatch',
          events => 1, done => 1, error => 'rate_limited' } ],
    [ 'responses error event', 'responses', 1,
        responses_stream([ 'error', '{"type":"error","code":'
            . '"ERR_SOMETHING","message":"Something went wrong","param":'
            . 'null,"sequence_number":6}' ]),
        { model => 'gpt-4.1-2025-04-14', shape => 'mismatch',
          events => 7, error => 'server_error' } ],
    [ 'responses event type too long to keep', 'responses', 1,
        sse([ 'response.x', '{"type":"response.' . ('x' x 100) . '"}' ]),
        { shape => 'ok', events => 1 } ],
    [ 'responses object not a response', 'responses', 1,
        sse([ 'response.created', '{"type":"response.created",'
            . '"response":{"object":"chat.completion","output":[]}}' ]),
        { shape => 'mismatch', events => 1 } ],
    [ 'responses stream on the chat route', 'chat', 1,
        responses_stream($responses_completed),
        { in => 36, out => 87, model => 'gpt-4.1-2025-04-14',
          shape => 'mismatch', events => 7, done => 1 } ],

    # Anthropic streams

    [ 'anthropic stream', 'messages', 1, $anthropic_stream,
        $anthropic_result ],
    [ 'anthropic stream, output tokens of the last message_delta',
        'messages', 1, sse($message_start, @anthropic_text,
            message_delta(7), message_delta(15), $message_stop),
        { %$anthropic_result, events => 9 } ],
    [ 'anthropic overloaded mid-stream', 'messages', 1,
        sse($message_start, @anthropic_text[0 .. 2], $overloaded),
        { in => 25, out => 1, model => 'claude-sonnet-4-20250514',
          shape => 'mismatch', events => 5, error => 'overloaded' } ],
    [ 'anthropic error event, data only', 'messages', 1,
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
        . "\"rate_limit_error\",\"message\":\"slow\"}}\n\n",
        { shape => 'mismatch', events => 1, error => 'rate_limited' } ],
    [ 'error type in the data alone', 'messages', 1,
        data_only('{"type":"error","error":{"type":"api_error","message":'
            . '"Internal server error"}}'),
        { shape => 'mismatch', events => 1, error => 'server_error' } ],
    [ 'an error type cut by the end of its event', 'messages', 1,
        "data: {\"type\":\"error\n\n", { shape => 'mismatch', events => 1 } ],
    [ 'error event with junk data', 'messages', 1,
        "event: error\ndata: oops\n\n",
        { shape => 'mismatch', events => 1, error => 'server_error' } ],
    [ 'the first in-band error is kept', 'messages', 1,
        sse($overloaded, [ 'error', '{"type":"error","error":{"type":'
            . '"api_error"}}' ]),
        { shape => 'mismatch', events => 2, error => 'overloaded' } ],
    [ 'anthropic tool use, keys in partial JSON', 'messages', 1,
        $anthropic_tool_stream,
        { in => 25, out => 89, model => 'claude-sonnet-4-20250514',
          shape => 'ok', events => 7, done => 1 } ],
    [ 'anthropic stream cut before message_stop', 'messages', 1,
        sse($message_start, @anthropic_text, message_delta(15)),
        { %$anthropic_result, events => 7, done => 0 } ],
    [ 'anthropic stream with [DONE] but no message_stop', 'messages', 1,
        sse($message_start, @anthropic_text, message_delta(15),
            [ undef, '[DONE]' ]),
        { %$anthropic_result, events => 8, done => 0 } ],
    [ 'anthropic stream, message_stop then [DONE]', 'messages', 1,
        sse($message_start, @anthropic_text, message_delta(15),
            $message_stop, [ undef, '[DONE]' ]),
        { %$anthropic_result, events => 9 } ],
    [ 'anthropic stream cut without the last empty line', 'messages', 1,
        substr($anthropic_stream, 0, -1),
        { %$anthropic_result, events => 7, done => 0 } ],
    [ 'anthropic unknown event type', 'messages', 1,
        sse($message_start, [ 'surprise', '{"type":"surprise"}' ]),
        { in => 25, out => 1, model => 'claude-sonnet-4-20250514',
          shape => 'mismatch', events => 2 } ],
    [ 'message_start without a message object', 'messages', 1,
        sse([ 'message_start', '{"type":"message_start","message":'
            . '{"type":"completion"}}' ]),
        { shape => 'mismatch', events => 1 } ],
    [ 'anthropic stream on the chat route', 'chat', 1, $anthropic_stream,
        { %$anthropic_result, shape => 'mismatch' } ],
    [ 'nested message keys not taken outside message', 'messages', 1,
        sse([ 'message_start', '{"type":"message_start","message":{'
            . '"type":"message","content":[{"model":"x","usage":{'
            . '"input_tokens":4}}],"model":"real","usage":{'
            . '"input_tokens":5,"output_tokens":1}},"x":{"usage":{'
            . '"output_tokens":3}}}' ]),
        { in => 5, out => 1, model => 'real', shape => 'ok',
          events => 1 } ],
    [ 'not SSE at all', 'chat', 1, $chat_body, { } ],
);

###############################################################################

# The driver.  ngx_palloc() is a stand-in that mallocs and counts; the
# driver frees after each run.  ngx_log_error_core() only counts (the
# debug lines are built in, the log level lets them through).  Pieces
# are copied into buffers of their exact size so ASan sees a read past
# one.

my $driver_c = <<'EOF';
#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_answer.h"
#include "ngx_http_llm_classify.h"

static ngx_time_t  now;
volatile ngx_time_t  *ngx_cached_time = &now;

static void        *allocs[16];
static ngx_uint_t   nallocs;
static size_t       allocated;
static ngx_uint_t   logged;

time_t
ngx_parse_http_time(u_char *value, size_t len)
{
    return NGX_ERROR;
}

void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
    logged++;
}

void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    if (nallocs == 16) {
        return NULL;
    }

    p = malloc(size);

    if (p) {
        allocs[nallocs++] = p;
        allocated += size;
    }

    return p;
}

/* the answer reader's state is a large allocation: the same stand-in */

void *
ngx_pmemalign(ngx_pool_t *pool, size_t size, size_t alignment)
{
    return ngx_palloc(pool, size);
}

typedef struct {
    off_t       in;
    off_t       out;
    u_char      model[NGX_HTTP_LLM_ANSWER_MODEL_MAX];
    size_t      model_len;
    ngx_uint_t  shape;
    ngx_uint_t  error;
    ngx_uint_t  events;
    ngx_uint_t  done;
} result_t;

static unsigned long  seed;

static size_t
rnd(size_t max)
{
    seed = seed * 6364136223846793005UL + 1442695040888963407UL;
    return 1 + (size_t) ((seed >> 33) % max);
}

/* mode 0: whole; 1: pieces of k; 2: cut at k; 3: random pieces up to k */

static int
run(u_char *body, size_t len, ngx_uint_t family, ngx_uint_t sse, int mode,
    size_t k, result_t *r)
{
    u_char                 *piece;
    size_t                  o, n;
    ngx_log_t               log;
    ngx_pool_t              pool;
    ngx_uint_t              i;
    ngx_http_llm_answer_t   a;

    memset(&log, 0, sizeof(log));
    memset(&pool, 0, sizeof(pool));
    log.log_level = NGX_LOG_DEBUG_ALL;
    pool.log = &log;

    nallocs = 0;
    allocated = 0;

    if (ngx_http_llm_answer_init(&a, &pool, family, sse) != NGX_OK) {
        return -1;
    }

    for (o = 0; o < len; o += n) {
        switch (mode) {
        case 0: n = len; break;
        case 1: n = k; break;
        case 2: n = (o < k) ? k : len - o; break;
        default: n = rnd(k);
        }

        n = (n > len - o) ? len - o : n;

        piece = malloc(n);
        memcpy(piece, body + o, n);
        ngx_http_llm_answer_feed(&a, piece, piece + n);
        free(piece);
    }

    ngx_http_llm_answer_end(&a);

    /* after the end, nothing changes */
    ngx_http_llm_answer_feed(&a, (u_char *) "data: [DONE]\n\n",
                             (u_char *) "data: [DONE]\n\n" + 14);
    ngx_http_llm_answer_end(&a);

    memset(r, 0, sizeof(result_t));
    r->in = a.input_tokens;
    r->out = a.output_tokens;
    memcpy(r->model, a.model, a.model_len);
    r->model_len = a.model_len;
    r->shape = a.shape;
    r->error = a.error;
    r->events = a.events;
    r->done = a.done;

    for (i = 0; i < nallocs; i++) {
        free(allocs[i]);
    }

    return 0;
}

int
main(int argc, char **argv)
{
    char        line[128];
    int         big, quick, sse;
    size_t      len, k, step, runs;
    u_char     *body;
    unsigned    fam;
    ngx_uint_t  i, calls;
    result_t    whole, cut;
    static const char  *shapes[] = { "unchecked", "ok", "mismatch" };

    quick = (argc > 1 && strcmp(argv[1], "quick") == 0);

    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "%u %d %d %zu", &fam, &sse, &big, &len) != 4) {
            fprintf(stderr, "bad line: %s", line);
            return 2;
        }

        body = malloc(len ? len : 1);
        if (body == NULL || (len && fread(body, 1, len, stdin) != len)) {
            fprintf(stderr, "short read\n");
            return 2;
        }

        (void) getchar();

        if (run(body, len, fam, sse, 0, 0, &whole) != 0) {
            fprintf(stderr, "init failed\n");
            return 2;
        }

        calls = nallocs;

        printf("R %lld %lld %s %s %lu %lu ", (long long) whole.in,
               (long long) whole.out, shapes[whole.shape],
               (char *) ngx_http_llm_err_names[whole.error].data,
               (unsigned long) whole.events, (unsigned long) whole.done);

        for (i = 0; i < whole.model_len; i++) {
            printf("%02x", whole.model[i]);
        }

        printf("-\nA %lu %lu\n", (unsigned long) calls,
               (unsigned long) allocated);

        /* the same result in pieces */

        runs = 0;
        seed = len;

#define CHECK(mode, k)                                                       \
        do {                                                                  \
            runs++;                                                           \
            if (run(body, len, fam, sse, mode, k, &cut) != 0                  \
                || memcmp(&cut, &whole, sizeof(result_t)) != 0)               \
            {                                                                 \
                printf("S differs: mode %d piece %zu\n", mode, (size_t) k);   \
                goto next;                                                    \
            }                                                                 \
        } while (0)

        if (!big) {
            for (k = 1; k <= 17; k++) {
                CHECK(1, k);
            }

            CHECK(1, 64);
            CHECK(1, 1000);

            step = (quick && len > 300) ? len / 150 : 1;

            for (k = 1; k < len; k += step) {
                CHECK(2, k);
            }

            for (i = 0; i < (quick ? 5 : 50); i++) {
                CHECK(3, len / 8 + 1);
            }

        } else {
            if (!quick) {
                CHECK(1, 1);
            }

            CHECK(1, 7);
            CHECK(1, 4096);
            CHECK(1, 65536);
            CHECK(2, len / 2);

            for (i = 0; i < 3; i++) {
                CHECK(3, 100000);
            }
        }

        printf("S ok %zu\n", runs);

    next:

        free(body);
    }

    if (logged == 0) {
        printf("no debug line\n");
    }

    return 0;
}
EOF

open(my $fh, '>', "$dir/driver.c") or die "driver.c: $!";
print $fh $driver_c;
close $fh;

my @incs = map { ('-I', $_) } "$ngx/src/core", "$ngx/src/event",
    "$ngx/src/event/modules", "$ngx/src/os/unix", "$ngx/src/http",
    "$ngx/src/http/modules", "$ngx/src/http/v2", "$ngx/objs", "$root/src";

my @srcs = ("$dir/driver.c", map { "$root/src/ngx_http_llm_$_.c" }
    qw(answer answer_json answer_value answer_reuse scan scan_simd json_string
       classify));

# nginx's own warning flags, as the module is built
my @plain = qw(-O2 -W -Wall -Wpointer-arith -Wno-unused-parameter -Werror);
my @asan = ('-O1', '-g', '-fno-omit-frame-pointer',
    '-fsanitize=address,undefined', '-fno-sanitize-recover=all');

my %builds = (
    plain => [ @plain ],
    asan => [ @asan ],
);

for my $build (sort keys %builds) {
    my $out = "$dir/driver-$build";
    my $rc = system("gcc @{ $builds{$build} } @incs @srcs -o $out -lyajl "
        . "> $dir/cc-$build.log 2>&1");

    ok($rc == 0, "driver builds ($build)")
        or diag(slurp("$dir/cc-$build.log"));
}

my $input = '';

for my $c (@cases) {
    my ($name, $fam, $sse, $body, $want, $big) = @$c;
    $input .= "$family{$fam} $sse " . ($big ? 1 : 0) . ' ' . length($body)
        . "\n" . $body . "\n";
}

open($fh, '>:raw', "$dir/input") or die "input: $!";
print $fh $input;
close $fh;

local $ENV{ASAN_OPTIONS} = 'detect_leaks=1:abort_on_error=0';
local $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1:halt_on_error=1';

# ASan sees our code's accesses and every leak, not yajl's own reads of
# the kept values (yajl is not instrumented): valgrind sees those, when
# present; it gets fewer cuts per case, its runs are slow

my @runs = ([ 'asan', '' ], [ 'plain', '' ]);

if (system('valgrind --version > /dev/null 2>&1') == 0) {
    push @runs, [ 'plain', 'valgrind -q --error-exitcode=99 '
        . '--leak-check=full --errors-for-leak-kinds=definite,indirect' ];

} else {
    diag('valgrind not found: yajl\'s reads go unchecked');
}

for my $run (@runs) {
    my ($build, $wrapper) = @$run;
    my $bin = "$dir/driver-$build";
    my $name = $wrapper ? "$build, valgrind" : $build;
    my $tag = $wrapper ? "$build-valgrind" : $build;
    my $arg = $wrapper ? 'quick' : '';

    SKIP: {
        skip("driver ($build) did not build", 3 + 3 * @cases)
            unless -x $bin;

        my $rc = system("$wrapper $bin $arg < $dir/input > $dir/out-$tag "
            . "2> $dir/err-$tag");
        my $err = slurp("$dir/err-$tag");

        is($rc, 0, "driver exits cleanly ($name)");
        is($err, '', "no sanitizer, valgrind or driver report ($name)")
            or diag($err);

        my @out = split /\n/, slurp("$dir/out-$tag");

        for my $c (@cases) {
            my ($cname, $fam, $sse, $body, $want) = @$c;
            my %w = (%unknown, %$want);
            my $expect = join(' ', 'R', @w{qw(in out shape error events
                done)}, unpack('H*', $w{model}) . '-');

            is(shift(@out) // '(none)', $expect, "$cname ($name)");

            my ($calls, $bytes) = (shift(@out) // '') =~ /^A (\d+) (\d+)$/;
            my $max = $w{bytes} // $state_max;
            ok(defined $calls && $calls >= 1 && $calls <= $calls_max
                && $bytes < $max,
                "$cname: a few allocations, under $max bytes ($name)")
                or diag("allocations: " . ($calls // '?') . ', bytes: '
                    . ($bytes // '?'));

            like(shift(@out) // '(none)', qr/^S ok \d+$/,
                "$cname: the same in pieces ($name)");
        }

        is(scalar(@out), 0, "nothing more from the driver ($name)")
            or diag(join("\n", @out));
    }
}

done_testing;

###############################################################################

sub slurp {
    my ($name) = @_;
    open(my $fh, '<:raw', $name) or return '';
    local $/;
    return scalar <$fh>;
}

###############################################################################
