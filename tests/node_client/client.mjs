// A tiny client on the official `openai` Node SDK, driven by tests/test_other_clients.py.
//
//   node client.mjs BASE_URL SCENARIO [OPTIONS_JSON]
//
// SCENARIO: `chat` (one chat completion) or `stream` (the same with `stream: true`,
// chunks iterated with `for await`). OPTIONS_JSON (optional): {"content": "...",
// "model": "...", "maxRetries": 0, "params": {...extra request fields}}.
//
// Prints one JSON object on stdout: {ok, status, headers, fetches, elapsed_ms, ...}.
// `fetches` counts the HTTP requests the SDK made (so retries are visible), through
// the SDK's own `fetch` option. The exit status is 0 whenever the JSON was printed,
// also for an API error (then ok is false and `error` says what the SDK raised).
import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const [baseURL, scenario, optionsJson] = process.argv.slice(2);
if (!baseURL || !['chat', 'stream'].includes(scenario)) {
  console.error('usage: node client.mjs BASE_URL chat|stream [OPTIONS_JSON]');
  process.exit(2);
}
const options = optionsJson ? JSON.parse(optionsJson) : {};

let fetches = 0;
const client = new OpenAI({
  baseURL,
  apiKey: 'sk-node-client-test',
  maxRetries: options.maxRetries ?? 0,
  timeout: 20_000,
  fetch: (url, init) => {
    fetches += 1;
    return fetch(url, init);
  },
});

const KEPT_HEADERS = ['content-type', 'x-request-id', 'openai-version', 'x-should-retry'];

function headersOf(response) {
  const out = {};
  for (const [k, v] of response.headers.entries()) {
    if (k.startsWith('seedtape-') || KEPT_HEADERS.includes(k)) out[k] = v;
  }
  return out;
}

const request = {
  model: options.model ?? 'gpt-4o-mini',
  messages: [{ role: 'user', content: options.content ?? 'Hello from Node' }],
  ...(options.params ?? {}),
};

const started = performance.now();
const result = { scenario, sdk_version: VERSION };
try {
  if (scenario === 'chat') {
    const { data, response } = await client.chat.completions.create(request).withResponse();
    Object.assign(result, { ok: true, status: response.status, headers: headersOf(response), completion: data,
                            request_id: data._request_id ?? null });
  } else {
    const { data: stream, response } = await client.chat.completions
      .create({ ...request, stream: true })
      .withResponse();
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const content = chunks.map((c) => c.choices?.[0]?.delta?.content ?? '').join('');
    const finish = chunks.map((c) => c.choices?.[0]?.finish_reason).filter(Boolean);
    Object.assign(result, { ok: true, status: response.status, headers: headersOf(response), chunks, content,
                            finish_reasons: finish });
  }
} catch (err) {
  result.ok = false;
  result.error = {
    class: err?.constructor?.name ?? null,
    is_api_error: err instanceof OpenAI.APIError,
    status: err?.status ?? null,
    message: String(err?.message ?? err),
    code: err?.code ?? null,
    type: err?.type ?? null,
    headers: err?.headers ? headersOf({ headers: err.headers }) : {},
  };
}
result.fetches = fetches;
result.elapsed_ms = performance.now() - started;
process.stdout.write(JSON.stringify(result) + '\n');
