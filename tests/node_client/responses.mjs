// Responses API clients in Node, driven by tests/test_responses_node.py.
//
//   node responses.mjs BASE_URL SCENARIO [OPTIONS_JSON]
//
// SCENARIO: `openai-stream` (the official SDK, client.responses.create({stream: true}),
// events iterated with `for await`), `openai-plain` (the same without streaming),
// `ai-generate` and `ai-stream` (the Vercel AI SDK: generateText / streamText with the
// `@ai-sdk/openai` provider, which speaks the Responses API). OPTIONS_JSON: {"input": "..."}.
//
// Prints one JSON object on stdout: {ok, text, ...}; on an error {ok: false, error}.
import OpenAI from 'openai';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText } from 'ai';

const [baseURL, scenario, optionsJson] = process.argv.slice(2);
const options = optionsJson ? JSON.parse(optionsJson) : {};
const input = options.input ?? 'Tell me about Paris';
const model = options.model ?? 'gpt-4o-mini';
const apiKey = options.apiKey ?? 'sk-node-responses-test';

async function run() {
  if (scenario === 'openai-stream' || scenario === 'openai-plain') {
    const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });
    if (scenario === 'openai-plain') {
      const r = await client.responses.create({ model, input });
      return { ok: true, id: r.id, text: r.output_text, status: r.status, model: r.model };
    }
    const stream = await client.responses.create({ model, input, stream: true });
    const types = [];
    let deltas = '';
    let final = null;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'response.output_text.delta') deltas += event.delta;
      if (event.type === 'response.completed') final = event.response;
    }
    return { ok: true, id: final?.id, text: final?.output_text ?? deltas, deltas, types, status: final?.status };
  }
  const provider = createOpenAI({ baseURL, apiKey });
  if (scenario === 'ai-generate') {
    const r = await generateText({ model: provider(model), prompt: input, maxRetries: 0 });
    return { ok: true, text: r.text, finishReason: r.finishReason };
  }
  if (scenario === 'ai-stream') {
    const r = streamText({ model: provider(model), prompt: input, maxRetries: 0 });
    let text = '';
    for await (const piece of r.textStream) text += piece;
    return { ok: true, text, finishReason: await r.finishReason };
  }
  throw new Error(`unknown scenario ${scenario}`);
}

run().then(
  (out) => console.log(JSON.stringify(out)),
  (err) => console.log(JSON.stringify({ ok: false, error: String(err?.message ?? err), status: err?.status })),
);
