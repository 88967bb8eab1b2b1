// The official OpenAI and Anthropic Node SDKs as clients of the gateway,
// driven by t/sdk.t.
//
//     node t/sdk/run.mjs PLAN.json RESULTS.jsonl
//
// PLAN: { "gateway": "http://127.0.0.1:PORT", "key": "...",
//         "calls": [ { "id", "api", "mode", "prefix", "case",
//                      "timeout_ms" }, ... ] }
//
// api:  chat (client.chat.completions), responses (client.responses),
//       messages (Anthropic client.messages)
// mode: plain   create() without streaming
//       stream  create({ stream: true }), the events read to the end
//       helper  the SDK's streaming helper (.stream()) and its final answer
//
// Each call sends X-Case (the mock's script) and X-Test-Id (the id, for
// the gateway's access log and the mock's record), and gets an
// AbortSignal that fires after timeout_ms: a call that hangs is reported
// as timed out, never waited for.  The calls run one after another; each
// writes one JSON line to RESULTS:
//
//     { id, api, mode, ok, text, events, error, timed_out, ms,
//       max_retries }
//
// error: { name, api_error (an instance of the SDK's APIError), status,
//          syntax (a JSON parse error, itself or as the cause), message }

import fs from 'node:fs';

import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const [planFile, outFile] = process.argv.slice(2);
const plan = JSON.parse(fs.readFileSync(planFile, 'utf8'));

const PARAMS = {
    chat: { model: 'gpt-4o-mini',
            messages: [ { role: 'user', content: 'Say hello' } ] },
    responses: { model: 'gpt-4o-mini', input: 'Say hello' },
    messages: { model: 'claude-sonnet-4-5', max_tokens: 64,
                messages: [ { role: 'user', content: 'Say hello' } ] },
};

function makeClient(api, prefix) {
    const base = plan.gateway + (prefix || '');

    // maxRetries: the SDKs' default, set so that a change of default
    // cannot make "one HTTP call" trivially true
    if (api === 'messages') {
        return new Anthropic({ apiKey: plan.key, baseURL: base,
                               maxRetries: 2 });
    }

    return new OpenAI({ apiKey: plan.key, baseURL: base + '/v1',
                        maxRetries: 2 });
}

function apiErrorClass(api) {
    return api === 'messages' ? Anthropic.APIError : OpenAI.APIError;
}

function answerText(api, r) {
    if (api === 'chat') {
        return r.choices[0].message.content;
    }
    if (api === 'responses') {
        return r.output_text;
    }
    return r.content.map((b) => b.text || '').join('');
}

// a streamed event: its name and the text it adds
function eventInfo(api, ev) {
    if (api === 'chat') {
        const c = ev.choices && ev.choices[0];
        return { name: c && c.finish_reason ? 'finish:' + c.finish_reason
                                            : 'chunk',
                 text: (c && c.delta && c.delta.content) || '' };
    }
    if (api === 'responses') {
        return { name: ev.type === 'error' ? 'error:' + ev.code : ev.type,
                 text: ev.type === 'response.output_text.delta'
                       ? ev.delta : '' };
    }
    return { name: ev.type,
             text: ev.type === 'content_block_delta' && ev.delta.text
                   ? ev.delta.text : '' };
}

function isSyntax(e) {
    for (let i = 0; e && i < 5; i++, e = e.cause) {
        if (e instanceof SyntaxError) {
            return true;
        }
    }
    return false;
}

async function call(spec) {
    const client = makeClient(spec.api, spec.prefix);
    const api = spec.api;
    const res = { id: spec.id, api, mode: spec.mode, ok: false, text: '',
                  events: [], error: null, timed_out: false,
                  max_retries: client.maxRetries };
    const ac = new AbortController();
    const opts = { headers: { 'X-Case': spec.case, 'X-Test-Id': spec.id },
                   signal: ac.signal };
    const params = PARAMS[api];
    const resource = api === 'chat' ? client.chat.completions
                   : api === 'responses' ? client.responses
                   : client.messages;

    const work = async () => {
        if (spec.mode === 'plain') {
            const r = await resource.create(params, opts);
            res.text = answerText(api, r);

        } else if (spec.mode === 'stream') {
            const s = await resource.create({ ...params, stream: true },
                                            opts);
            for await (const ev of s) {
                const info = eventInfo(api, ev);
                res.events.push(info.name);
                res.text += info.text;
            }

        } else {
            const s = resource.stream(params, opts);
            if (api === 'chat') {
                res.text = await s.finalContent();
            } else if (api === 'responses') {
                res.text = (await s.finalResponse()).output_text;
            } else {
                res.text = answerText(api, await s.finalMessage());
            }
        }

        res.ok = !ac.signal.aborted;
    };

    const start = Date.now();
    let timer;
    let hard;

    // the signal ends a call the SDK lets it end; the race ends any other
    const deadline = new Promise((resolve) => {
        timer = setTimeout(() => {
            res.timed_out = true;
            ac.abort();
            hard = setTimeout(resolve, 2000);
        }, spec.timeout_ms || 10000);
    });

    try {
        await Promise.race([ work(), deadline ]);
    } catch (e) {
        res.error = { name: e.constructor.name,
                      api_error: e instanceof apiErrorClass(api),
                      status: e.status ?? null,
                      syntax: isSyntax(e),
                      message: String(e.message).slice(0, 300) };
    } finally {
        clearTimeout(timer);
        clearTimeout(hard);
    }

    if (res.timed_out) {
        res.ok = false;
    }

    res.ms = Date.now() - start;
    return res;
}

fs.writeFileSync(outFile, '');

for (const spec of plan.calls) {
    const res = await call(spec);
    fs.appendFileSync(outFile, JSON.stringify(res) + '\n');
}

// sockets the SDKs keep alive, or a call that hung, must not keep the
// process
process.exit(0);
