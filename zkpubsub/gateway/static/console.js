// The zkpubsub console: reads snapshots of the bus from the gateway's
// Server-Sent Events stream (with fetch, so that it can send the token) and
// acts through the gateway's own endpoints. Everything shown is set as text,
// never as markup.
"use strict";

const TOKEN_KEY = "zkpubsub.console.token";
// The gateway's base path: the page is served at <base>/ui.
const BASE = location.pathname.replace(/\/ui\/?$/, "");
const RETRY_MS = [1000, 2000, 5000];

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let stream = null;      // the AbortController of the running stream
let previous = null;    // the last snapshot, for rates
let rates = new Map();  // "topic\u0000client" -> [in/s, out/s]
let failures = 0;

const $ = (id) => document.getElementById(id);

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const c of cells) tr.appendChild(c);
  return tr;
}

function tag(text, kind) {
  const span = document.createElement("span");
  span.className = "tag " + kind;
  span.textContent = text;
  return span;
}

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

function age(started, now) {
  if (!started) return "?";
  const s = Math.max(0, Math.floor(now - started));
  for (const [size, unit] of [[86400, "d"], [3600, "h"], [60, "m"]]) {
    if (s >= 2 * size) return Math.floor(s / size) + unit;
  }
  return s + "s";
}

function rate(value) {
  return value === undefined ? "-" : value.toFixed(1);
}

function clock(at) {
  return new Date(at * 1000).toLocaleTimeString();
}

// What went into and out of a queue between two snapshots, segment by
// segment (as zkpubsub.stats.moved_between): a segment in both (same number,
// same creating zxid) counts its new creations and what it lost besides; a
// new one all it ever had; one removed meanwhile (emptied, or its queue made
// afresh) what it held; nodes from before segments only go.
function moved(old, s) {
  const id = (g) => g[0] + ":" + g[3];
  const then = new Map((old.segments || []).map((g) => [id(g), g]));
  let into = 0;
  let out = 0;
  for (const g of s.segments || []) {
    const before = then.get(id(g));
    then.delete(id(g));
    const made = g[1] - (before ? before[1] : 0);
    const held = before ? before[2] : 0;
    into += Math.max(0, made);
    out += Math.max(0, held + made - g[2]);
  }
  for (const g of then.values()) out += g[2];
  out += Math.max(0, (old.loose || 0) - (s.loose || 0));
  return [into, out];
}

// Rates from two snapshots of each queue.
function updateRates(snapshot) {
  const next = new Map();
  if (previous) {
    const span = Math.max(snapshot.at - previous.at, 1e-3);
    const before = new Map();
    for (const t of previous.topics) {
      for (const s of t.subscribers) before.set(t.name + "\u0000" + s.client_id, s);
    }
    for (const t of snapshot.topics) {
      for (const s of t.subscribers) {
        const key = t.name + "\u0000" + s.client_id;
        const old = before.get(key);
        if (!old) continue;
        const [into, out] = moved(old, s);
        next.set(key, [into / span, out / span]);
      }
    }
  }
  rates = next;
  previous = snapshot;
}

function renderTopics(snapshot) {
  const body = $("topics").tBodies[0];
  const names = $("topic-names");
  body.replaceChildren();
  names.replaceChildren();
  for (const t of snapshot.topics) {
    const known = t.subscribers.map((s) => rates.get(t.name + "\u0000" + s.client_id))
      .filter((r) => r !== undefined);
    const inRate = known.length ? Math.max(...known.map((r) => r[0])) : undefined;
    const outRate = known.length ? known.reduce((a, r) => a + r[1], 0) : undefined;
    const top = row([
      cell(t.name),
      cell(t.backlog, "num backlog"),
      cell(rate(inRate), "num"),
      cell(rate(outRate), "num"),
      cell(t.subscribers.length + " subscriber(s)", "muted"),
    ], "topic");
    top.dataset.topic = t.name;
    body.appendChild(top);
    for (const s of t.subscribers) {
      const r = rates.get(t.name + "\u0000" + s.client_id);
      const state = cell("");
      state.appendChild(s.live ? tag("live", "ok") : tag("client gone", "bad"));
      if (!s.subscribed) state.appendChild(tag("unsubscribed", "warn"));
      const sub = row([
        cell(s.client_id),
        cell(s.backlog, "num backlog"),
        cell(rate(r && r[0]), "num"),
        cell(rate(r && r[1]), "num"),
        state,
      ], "subscriber");
      sub.dataset.topic = t.name;
      sub.dataset.client = s.client_id;
      body.appendChild(sub);
    }
    const option = document.createElement("option");
    option.value = t.name;
    names.appendChild(option);
  }
  $("no-topics").hidden = snapshot.topics.length > 0;
  if (!$("publish-topic").value && snapshot.topics.length) {
    $("publish-topic").value = snapshot.topics[0].name;
  }
}

function replayButton(queue, ids, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small replay";
  button.textContent = label;
  button.dataset.queue = queue;
  button.addEventListener("click", () => replay(queue, ids, button));
  return button;
}

function renderQueues(snapshot) {
  const body = $("queues").tBodies[0];
  const dead = $("dead-letters");
  body.replaceChildren();
  dead.replaceChildren();
  for (const q of snapshot.work_queues) {
    const action = cell("");
    if (q.dead) action.appendChild(replayButton(q.name, null, "Replay all dead letters"));
    const tr = row([
      cell(q.name),
      cell(q.ready, "num ready"),
      cell(q.reserved, "num reserved"),
      cell(q.dead, "num dead"),
      cell(q.workers, "num workers"),
      action,
    ]);
    tr.dataset.queue = q.name;
    body.appendChild(tr);
    if (!q.dead_letters.length) continue;
    const box = document.createElement("div");
    box.className = "dead-queue";
    const title = document.createElement("h3");
    title.textContent = "Dead letters of " + q.name +
      (q.dead > q.dead_letters.length ? ` (the oldest ${q.dead_letters.length} of ${q.dead})` : "");
    box.appendChild(title);
    const table = document.createElement("table");
    table.className = "dead";
    const head = row(["id", "attempts", "reason", "died", "payload", ""].map((h) => {
      const th = document.createElement("th");
      th.textContent = h;
      return th;
    }));
    table.createTHead().appendChild(head);
    const rows = table.createTBody();
    for (const d of q.dead_letters) {
      const act = cell("");
      act.appendChild(replayButton(q.name, [d.id], "Replay"));
      const tr = row([
        cell(d.id, "mono"),
        cell(d.attempts, "num"),
        cell(d.reason, "reason"),
        cell(d.died_at ? clock(d.died_at) : "?"),
        cell(d.payload, "payload"),
        act,
      ]);
      tr.dataset.queue = q.name;
      tr.dataset.id = d.id;
      rows.appendChild(tr);
    }
    box.appendChild(table);
    dead.appendChild(box);
  }
  $("no-queues").hidden = snapshot.work_queues.length > 0;
}

function renderClients(snapshot) {
  const body = $("clients").tBodies[0];
  body.replaceChildren();
  for (const c of snapshot.clients) {
    const tr = row([
      cell(c.id, "mono"),
      cell(c.host || "?"),
      cell(c.pid || "?", "num"),
      cell(age(c.started, snapshot.at), "num"),
      cell(c.version),
    ]);
    tr.dataset.client = c.id;
    body.appendChild(tr);
  }
}

function render(snapshot) {
  updateRates(snapshot);
  $("root").textContent = "root " + snapshot.root;
  $("n-clients").textContent = snapshot.clients.length;
  $("n-topics").textContent = snapshot.topics.length;
  $("n-backlog").textContent = snapshot.topics.reduce((a, t) => a + t.backlog, 0);
  $("n-queues").textContent = snapshot.work_queues.length;
  $("leader").textContent = snapshot.cleaner.leader || "none";
  $("candidates").textContent = snapshot.cleaner.candidates;
  $("checked").textContent = "as of " + clock(snapshot.at);
  $("problem").textContent = "";
  renderTopics(snapshot);
  renderQueues(snapshot);
  renderClients(snapshot);
}

// What a failed answer says: an RFC 9457 problem's detail or title.
async function reasonOf(response) {
  try {
    const doc = await response.json();
    const said = doc.detail || doc.title;
    return typeof said === "string" ? said : JSON.stringify(said || doc);
  } catch (err) {
    return response.status + " " + response.statusText;
  }
}

// Without a token (a gateway without a tokens file admits anyone), no header.
function authHeaders(extra) {
  const auth = token ? { Authorization: "Bearer " + token } : {};
  return Object.assign(auth, extra || {});
}

function handle(kind, data) {
  if (kind === "snapshot") {
    render(JSON.parse(data));
  } else if (kind === "alive") {
    // nothing changed since the last snapshot: the same bus, seen later
    // (so the rates over that span are zero)
    if (previous) render(Object.assign({}, previous, { at: JSON.parse(data).at }));
  } else if (kind === "problem") {
    const p = JSON.parse(data);
    $("problem").textContent = p.title + ": " + p.detail;
  }
}

// One Server-Sent Events stream, read until it ends or is aborted.
async function follow(controller) {
  const response = await fetch(BASE + "/ui/events", {
    headers: authHeaders({ Accept: "text/event-stream" }),
    cache: "no-store",
    signal: controller.signal,
  });
  if (response.status === 401 || response.status === 403) {
    const reason = await reasonOf(response);
    // a first look without a token that is refused just asks for one
    if (stream === controller) signOut(token ? reason : "");
    return;
  }
  if (!response.ok) throw new Error(await reasonOf(response));
  setStatus("live", "live");
  failures = 0;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) handle(kind, data.join("\n"));
    }
  }
  throw new Error("the stream ended");
}

async function connect() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  $("login").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  while (stream === controller) {
    setStatus("connecting", failures ? "reconnecting" : "connecting");
    try {
      await follow(controller);
      return;  // signed out
    } catch (err) {
      if (controller.signal.aborted) return;
      $("problem").textContent = "Connection to the gateway: " + err.message;
      setStatus("error", "disconnected");
      failures += 1;
      await new Promise((r) => setTimeout(r, RETRY_MS[Math.min(failures, RETRY_MS.length) - 1]));
    }
  }
}

function signOut(reason) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  if (stream) stream.abort();
  stream = null;
  previous = null;
  $("console").hidden = true;
  $("login").hidden = false;
  $("sign-out").hidden = true;
  $("login-error").textContent = reason || "";
  setStatus("signed-out", "signed out");
  $("token").focus();
}

async function publish(event) {
  event.preventDefault();
  const result = $("publish-result");
  const topic = $("publish-topic").value.trim();
  const text = $("publish-payload").value;
  result.className = "result";
  try {
    JSON.parse(text);
  } catch (err) {
    result.className = "result bad";
    result.textContent = "The payload is not JSON: " + err.message;
    return;
  }
  $("publish").disabled = true;
  try {
    const response = await fetch(BASE + "/topics/" + encodeURIComponent(topic) + "/messages", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: text,
    });
    if (!response.ok) {
      result.className = "result bad";
      result.textContent = "Not published: " + (await reasonOf(response));
      return;
    }
    result.textContent = "Published to " + topic + ": " + JSON.stringify(await response.json());
  } catch (err) {
    result.className = "result bad";
    result.textContent = "Not published: " + err.message;
  } finally {
    $("publish").disabled = false;
  }
}

async function replay(queue, ids, button) {
  if (!ids && !window.confirm("Put every dead letter of " + queue + " back into the queue?")) {
    return;
  }
  const result = $("replay-result");
  result.className = "result";
  button.disabled = true;
  try {
    const response = await fetch(BASE + "/queues/" + encodeURIComponent(queue) + "/dead/replay", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(ids ? { ids } : {}),
    });
    if (!response.ok) {
      result.className = "result bad";
      result.textContent = "Not replayed: " + (await reasonOf(response));
      button.disabled = false;
      return;
    }
    const doc = await response.json();
    result.textContent = "Replayed " + doc.replayed + " dead letter(s) of " + queue;
  } catch (err) {
    result.className = "result bad";
    result.textContent = "Not replayed: " + err.message;
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login-error").textContent = "";
    connect();
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("publish-form").addEventListener("submit", publish);
  connect();  // with the tab's token, or without one: the gateway may need none
});
