// Drives a running storegate with the official `openai` Node SDK, unchanged (CONTRACT.md: "Clients
// that must work unchanged"). Usage: node sdk_session.mjs <base URL ending in /v1>
//
// Exercises every stored-completion method: create (stored, with metadata), a streamed stored create,
// retrieve, list by metadata and by model, auto-pagination, update, messages.list, delete, and the 404
// of a deleted id. Prints `NODE_SDK_OK <checks>` on success; on any failure prints the error and every
// request the SDK sent (method, URL, status, response body) and exits 1; NODE_SDK_TRACE=1 prints
// those requests on success too.
// Run by tests/e2e/test_node_sdk.py.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import OpenAI, { NotFoundError } from "openai";

const baseURL = process.argv[2];
if (!baseURL || !baseURL.endsWith("/v1")) {
  console.error("usage: node sdk_session.mjs <base URL ending in /v1>");
  process.exit(2);
}

const ID_RE = /^chatcmpl-[0-9A-Za-z]{29}$/;

// What the SDK put on the wire and what came back, to show on failure (reported, never worked around).
const trace = [];
async function tracingFetch(input, init) {
  const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
  const method = init?.method ?? (typeof input === "object" && "method" in input ? input.method : "GET");
  const entry = { method, url, body: typeof init?.body === "string" ? init.body : undefined };
  trace.push(entry);
  const response = await fetch(input, init);
  entry.status = response.status;
  if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    entry.response = await response.clone().text();
  }
  return response;
}

let checks = 0;
function check(label, fn) {
  try {
    fn();
  } catch (err) {
    err.message = `${label}: ${err.message}`;
    throw err;
  }
  checks += 1;
}

async function main() {
  const client = new OpenAI({ baseURL, apiKey: "sk-node", maxRetries: 0, fetch: tracingFetch });
  const run = randomUUID().replaceAll("-", "");
  // A model name of this run's own: the list by model sees only this run's completions, whatever else
  // the shared server has stored. The fake backend reports it back as `<model>-2024`.
  const model = `node-sdk-${run}`;
  const messages = [
    { role: "system", content: "be brief" },
    { role: "user", content: "hello from node" },
  ];

  // 1. Non-streamed create, stored, with metadata.
  const created = await client.chat.completions.create({
    model,
    messages,
    store: true,
    metadata: { run, kind: "plain" },
  });
  check("create: id", () => assert.match(created.id, ID_RE));
  check("create: object", () => assert.equal(created.object, "chat.completion"));
  check("create: model", () => assert.equal(created.model, `${model}-2024`));
  check("create: content", () => assert.equal(created.choices[0].message.content, "echo: hello from node"));
  check("create: finish_reason", () => assert.equal(created.choices[0].finish_reason, "stop"));
  check("create: created", () => assert.equal(typeof created.created, "number"));

  // 2. Streamed create, stored: iterate the stream, collect the id and the text from the chunks.
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "streamed hello" }],
    store: true,
    stream: true,
    metadata: { run, kind: "stream" },
  });
  const chunkIds = new Set();
  let text = "";
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks += 1;
    chunkIds.add(chunk.id);
    assert.equal(chunk.object, "chat.completion.chunk");
    for (const choice of chunk.choices) {
      text += choice.delta?.content ?? "";
      finish = choice.finish_reason ?? finish;
    }
  }
  check("stream: chunks arrived", () => assert.ok(chunks > 1, `only ${chunks} chunk(s)`));
  check("stream: one id in every chunk", () => assert.equal(chunkIds.size, 1, [...chunkIds].join(", ")));
  const streamedId = [...chunkIds][0];
  check("stream: id", () => assert.match(streamedId, ID_RE));
  check("stream: ids differ", () => assert.notEqual(streamedId, created.id));
  check("stream: text", () => assert.equal(text, "echo: streamed hello"));
  check("stream: finish_reason", () => assert.equal(finish, "stop"));

  // 3. Retrieve both.
  const got = await client.chat.completions.retrieve(created.id);
  check("retrieve: id", () => assert.equal(got.id, created.id));
  check("retrieve: same choices", () => assert.deepEqual(got.choices, created.choices));
  check("retrieve: metadata", () => assert.deepEqual(got.metadata, { run, kind: "plain" }));
  check("retrieve: model", () => assert.equal(got.model, created.model));
  const gotStreamed = await client.chat.completions.retrieve(streamedId);
  check("retrieve streamed: id", () => assert.equal(gotStreamed.id, streamedId));
  check("retrieve streamed: object", () => assert.equal(gotStreamed.object, "chat.completion"));
  check("retrieve streamed: content", () => assert.equal(gotStreamed.choices[0].message.content, text));
  check("retrieve streamed: metadata", () => assert.deepEqual(gotStreamed.metadata, { run, kind: "stream" }));

  // 4. List with a metadata filter: both, and only them (creation order, asc by default).
  const byRun = await client.chat.completions.list({ metadata: { run } });
  check("list metadata: ids", () => assert.deepEqual(byRun.data.map((c) => c.id), [created.id, streamedId]));
  check("list metadata: has_more", () => assert.equal(byRun.has_more, false));
  check("list metadata: envelope", () =>
    assert.deepEqual(
      { object: byRun.body.object, first_id: byRun.body.first_id, last_id: byRun.body.last_id },
      { object: "list", first_id: created.id, last_id: streamedId },
    ),
  );
  const byKind = await client.chat.completions.list({ metadata: { run, kind: "stream" } });
  check("list metadata (two keys): ids", () => assert.deepEqual(byKind.data.map((c) => c.id), [streamedId]));
  const byOtherRun = await client.chat.completions.list({ metadata: { run: `${run}-none` } });
  check("list metadata (no match): empty", () => assert.deepEqual(byOtherRun.data, []));

  // 5. List with model (the requested name, and the one the backend reported); order desc.
  const byModel = await client.chat.completions.list({ model });
  check("list model: ids", () => assert.deepEqual(byModel.data.map((c) => c.id), [created.id, streamedId]));
  const byReported = await client.chat.completions.list({ model: `${model}-2024`, order: "desc" });
  check("list reported model desc: ids", () =>
    assert.deepEqual(byReported.data.map((c) => c.id), [streamedId, created.id]),
  );

  // 6. Auto-pagination, one item per page.
  const paged = [];
  for await (const completion of client.chat.completions.list({ metadata: { run }, limit: 1 })) {
    paged.push(completion.id);
    assert.ok(paged.length <= 10, "auto-pagination does not stop");
  }
  check("auto-pagination: ids", () => assert.deepEqual(paged, [created.id, streamedId]));
  const firstPage = await client.chat.completions.list({ model, limit: 1 });
  check("page 1: one item", () => assert.deepEqual(firstPage.data.map((c) => c.id), [created.id]));
  check("page 1: has_more", () => assert.equal(firstPage.has_more, true));
  check("page 1: hasNextPage", () => assert.equal(firstPage.hasNextPage(), true));
  const secondPage = await firstPage.getNextPage();
  check("page 2: one item", () => assert.deepEqual(secondPage.data.map((c) => c.id), [streamedId]));
  check("page 2: last page", () => assert.equal(secondPage.hasNextPage(), false));

  // 7. Update the metadata (replaced as a whole).
  const updated = await client.chat.completions.update(created.id, { metadata: { run, kind: "updated" } });
  check("update: id", () => assert.equal(updated.id, created.id));
  check("update: metadata", () => assert.deepEqual(updated.metadata, { run, kind: "updated" }));
  const afterUpdate = await client.chat.completions.retrieve(created.id);
  check("update: retrieved", () => assert.deepEqual(afterUpdate.metadata, { run, kind: "updated" }));
  const byNewKind = await client.chat.completions.list({ metadata: { run, kind: "updated" } });
  check("update: listed", () => assert.deepEqual(byNewKind.data.map((c) => c.id), [created.id]));
  const byOldKind = await client.chat.completions.list({ metadata: { run, kind: "plain" } });
  check("update: old metadata gone", () => assert.deepEqual(byOldKind.data, []));

  // 8. The input messages, in order; then auto-paginated one by one.
  const msgs = await client.chat.completions.messages.list(created.id);
  check("messages: ids", () =>
    assert.deepEqual(msgs.data.map((m) => m.id), [`${created.id}-0`, `${created.id}-1`]),
  );
  check("messages: roles", () => assert.deepEqual(msgs.data.map((m) => m.role), ["system", "user"]));
  check("messages: content", () =>
    assert.deepEqual(msgs.data.map((m) => m.content), ["be brief", "hello from node"]),
  );
  check("messages: has_more", () => assert.equal(msgs.has_more, false));
  const pagedMsgs = [];
  for await (const m of client.chat.completions.messages.list(created.id, { limit: 1 })) {
    pagedMsgs.push(m.id);
    assert.ok(pagedMsgs.length <= 10, "message auto-pagination does not stop");
  }
  check("messages auto-pagination", () => assert.deepEqual(pagedMsgs, [`${created.id}-0`, `${created.id}-1`]));

  // 9. Delete; the deleted id is a NotFoundError (404) everywhere after.
  const deleted = await client.chat.completions.delete(created.id);
  check("delete: body", () =>
    assert.deepEqual(deleted, { object: "chat.completion.deleted", id: created.id, deleted: true }),
  );
  await assert.rejects(client.chat.completions.retrieve(created.id), (err) => {
    assert.ok(err instanceof NotFoundError, `expected NotFoundError, got ${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, 404);
    assert.equal(err.error?.message ?? err.message, `No chat completion found with id '${created.id}'.`);
    return true;
  });
  checks += 1;
  await assert.rejects(client.chat.completions.messages.list(created.id), NotFoundError);
  checks += 1;
  await assert.rejects(client.chat.completions.delete(created.id), NotFoundError);
  checks += 1;
  const afterDelete = await client.chat.completions.list({ metadata: { run } });
  check("delete: gone from list", () => assert.deepEqual(afterDelete.data.map((c) => c.id), [streamedId]));

  await client.chat.completions.delete(streamedId);
  const empty = await client.chat.completions.list({ model });
  check("delete both: empty list", () => assert.deepEqual(empty.data, []));
  check("delete both: empty page", () =>
    assert.deepEqual(
      { object: empty.body.object, first_id: empty.body.first_id, last_id: empty.body.last_id, has_more: empty.has_more },
      { object: "list", first_id: null, last_id: null, has_more: false },
    ),
  );

  console.log(`NODE_SDK_OK ${checks}`);
}

function printTrace() {
  console.error("requests the SDK sent:");
  for (const t of trace) {
    const body = t.body === undefined ? "" : ` body=${t.body}`;
    const response = t.response === undefined ? "" : ` -> ${t.response.slice(0, 2000)}`;
    console.error(`  ${t.method} ${t.url}${body} [${t.status ?? "no response"}]${response}`);
  }
}

main()
  .then(() => {
    if (process.env.NODE_SDK_TRACE) printTrace();
  })
  .catch((err) => {
    console.error(`NODE_SDK_FAILED after ${checks} checks`);
    console.error(err);
    printTrace();
    process.exit(1);
  });
