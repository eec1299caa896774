// The dashboard (CONTRACT 3.4): one script for the two views of one HTML
// shell. It reads the view and its filters from the page URL, fetches the
// JSON API like any other client, and builds the page with createElement
// and textContent only: a stored value is always shown as text, never
// parsed as markup. (A module: strict mode, and run once the shell is parsed.)

const TOKEN_KEY = "instance-api-token";  // the docs page (docs.js) reads it too
const STATUSES = ["pending", "starting", "running", "paused", "stopping", "stopped",
                  "terminated", "error"];
const TYPES = ["ubuntu", "browser", "windows"];
const LEVELS = ["debug", "info", "warn", "error", "fatal"];
// The list's query parameters, under the API's own names, so a page URL is
// also the API query (and a link someone can paste).
const FILTERS = ["site_id", "user_id", "agent_id", "status", "instance_type", "q", "label"];
const LOG_PAGE = 200;
const WAIT = 25;          // seconds a tail request may be held (3.3 allows 30)
const NO_CURSOR_POLL = 1500;

const main = document.getElementById("main");
const notices = el("div", {class: "notices", role: "alert"});
main.before(notices);

// -- building the page -----------------------------------------------------

// el("a", {href: "/ui/"}, "text", node, [more]): attributes set as attributes,
// on* as listeners, children appended as text nodes or elements.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat(Infinity).filter((child) => child !== null && child !== undefined)
    .map((child) => (child instanceof Node ? child : String(child))));
  return node;
}

const none = () => el("span", {class: "muted"}, "—");
const badge = (status) => el("span", {class: `badge status-${status}`}, status);
const shortId = (id) => el("span", {class: "id", title: id}, `${id.slice(0, 8)}…`);

// A time in the browser's zone, ISO-like so columns line up; the UTC value
// the API sent is the title (shown on hover).
function when(iso, withMs = false) {
  if (!iso) return none();
  const d = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  const shown = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}` +
    (withMs ? `.${String(d.getMilliseconds()).padStart(3, "0")}` : "");
  return el("time", {datetime: iso, title: iso}, Number.isNaN(d.getTime()) ? iso : shown);
}

// A /ui/ URL with the current filters changed by `changes` (null removes).
function listUrl(params, changes = {}) {
  const query = new URLSearchParams(params);
  for (const [name, value] of Object.entries(changes)) {
    if (value === null) query.delete(name);
    else query.set(name, value);
  }
  const search = query.toString();
  return search ? `/ui/?${search}` : "/ui/";
}

function labelChips(labels, params) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return none();
  return el("span", {class: "labels"}, entries.map(([key, value]) => el("a", {
    class: "label", href: listUrl(params || "", {label: `${key}=${value}`, offset: null}),
    title: `Show the instances labelled ${key}=${value}`,
  }, `${key}=${value}`)));
}

function notice(message) {
  if ([...notices.children].some((node) => node.firstChild.textContent === message)) return;
  const item = el("p", {}, message, " ",
    el("button", {type: "button", class: "link", onclick: () => item.remove()}, "dismiss"));
  notices.append(item);
}

// -- the API -----------------------------------------------------------------

class Problem extends Error {}        // already shown to the person
class TokenNeeded extends Problem {}

// GET `path` with the stored token; { body, headers } on success. A problem
// document becomes a shown message (and a Problem thrown, so the caller
// stops); a 401 becomes the token prompt. A network failure is thrown as
// fetch's TypeError, for the caller to retry or report.
async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = {Accept: "application/json"};
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {headers, cache: "no-store"});
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);  // a refused token is not kept
    askToken(token !== null);
    throw new TokenNeeded("token needed");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const problem = new Problem(describe(body) || `${response.status} ${response.statusText}`);
    problem.status = response.status;
    notice(problem.message);
    throw problem;
  }
  return {body, headers: response.headers};
}

// A problem document as one sentence: title, detail, and each bad field.
function describe(problem) {
  if (!problem?.detail) return null;
  const errors = Object.entries(problem.errors || {}).flatMap(([where, fields]) =>
    Object.entries(fields).map(([field, messages]) => `${where}.${field}: ` +
      [messages].flat().map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join(" ")));
  return [`${problem.title}: ${problem.detail}`, ...errors].join(" ");
}

// The page holds no data until a token is entered; it is kept in this tab's
// sessionStorage only (no cookie, never in the URL).
function askToken(refused) {
  if (main.querySelector("form.token")) return;   // parallel requests, one prompt
  const input = el("input", {type: "password", name: "token", required: true,
                             autocomplete: "off"});
  main.replaceChildren(el("form", {class: "token", onsubmit: (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    location.reload();
  }},
  el("h1", {}, "API token"),
  el("p", {class: refused ? "refused" : "muted"}, refused
    ? "The server refused that token. Enter another one."
    : "This server asks for a token before it shows its data."),
  el("label", {}, "Token ", input), " ", el("button", {type: "submit"}, "Show the data")));
  input.focus();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// -- /ui/: the instances ---------------------------------------------------

async function showInstances(params) {
  const filters = new URLSearchParams();
  for (const name of [...FILTERS, "sort", "limit", "offset"]) {
    if (params.get(name)) filters.set(name, params.get(name));
  }
  const counts = el("nav", {class: "counts", "aria-label": "Instances by status"});
  const summary = el("p", {class: "summary muted loading"}, "Loading…");
  const body = el("tbody");
  const pager = el("nav", {class: "pager", "aria-label": "Pages"});
  main.replaceChildren(el("h1", {}, "Instances"), filterForm(filters), counts, el("table", {},
    el("thead", {}, el("tr", {}, ["Name", "Type", "Status", "Site", "Agent", "Labels",
                                  "Last update", "Last active"].map((title) =>
      el("th", {}, title)))),
    body), summary, pager);

  // Counts per status for the other filters: each chip says how many a click
  // on it shows (the chip of the status filtered on is the highlighted one).
  const others = new URLSearchParams(filters);
  for (const name of ["status", "sort", "limit", "offset"]) others.delete(name);
  others.set("by", "status");
  // Marks for timing the page (bench: navigation start to table and counts).
  const tally = api(`/api/instances/counts?${others}`).then(({body: answer}) => {
    const chosen = new Set((filters.get("status") || "").split(",").filter(Boolean));
    counts.replaceChildren(
      el("a", {href: listUrl(filters, {status: null, offset: null}),
               class: chosen.size ? "chip" : "chip active"},
         "all ", el("b", {}, answer.total.toLocaleString())),
      ...Object.entries(answer.by.status).map(([status, n]) => el("a", {
        href: listUrl(filters, {status, offset: null}),
        class: `chip status-${status}${chosen.has(status) ? " active" : ""}`,
      }, `${status} `, el("b", {}, n.toLocaleString()))));
    performance.mark("dashboard-counts");
  }).catch(() => {});  // a failed count is already shown; the table stands

  const {body: rows, headers} = await api(`/api/instances?${filters}`);
  const total = Number(headers.get("X-Total-Count"));
  const offset = Number(filters.get("offset") || 0);
  body.replaceChildren(...rows.map((instance) => el("tr", {},
    el("td", {}, el("a", {href: `/ui/instances/${instance.id}`}, instance.name)),
    el("td", {}, instance.instance_type),
    el("td", {}, badge(instance.status)),
    el("td", {}, el("a", {href: listUrl(filters, {site_id: instance.site_id, offset: null})},
                    shortId(instance.site_id))),
    el("td", {}, instance.agent_id ? shortId(instance.agent_id) : none()),
    el("td", {}, labelChips(instance.labels, filters)),
    el("td", {}, when(instance.updated_at)),
    el("td", {}, when(instance.last_activity_at)))));
  summary.className = "summary muted";
  summary.textContent = rows.length
    ? `${(offset + 1).toLocaleString()}–${(offset + rows.length).toLocaleString()} of ` +
      `${total.toLocaleString()}`
    : (total ? `Nothing past ${total.toLocaleString()} instances.`
      : "No instances match these filters.");
  // Prev/next are the API's own Link header, turned into page URLs.
  const links = {};
  for (const [, url, rel] of (headers.get("Link") || "").matchAll(/<([^>]*)>\s*;\s*rel="(\w+)"/g)) {
    links[rel] = `/ui/${new URL(url, location.href).search}`;
  }
  if (links.prev || links.next) {
    pager.replaceChildren(...[["prev", "← Newer"], ["next", "Older →"]].map(([rel, title]) =>
      (links[rel] ? el("a", {href: links[rel], rel}, title) : el("span", {class: "muted"}, title))));
  }
  performance.mark("dashboard-table");
  await tally;
}

// The filter form writes the page URL (the page then reads it): empty fields
// are left out, since the API refuses an empty filter value.
function filterForm(filters) {
  const choice = (name, options) => {
    const current = filters.get(name) || "";
    const values = current && !options.includes(current) ? [...options, current] : options;
    return el("select", {name}, el("option", {value: ""}, "any"),
      values.map((value) => el("option", {value, selected: value === current}, value)));
  };
  const text = (name, placeholder) => el("input", {name, placeholder, type: "search",
                                                   value: filters.get(name) || ""});
  const form = el("form", {class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const query = new URLSearchParams(filters);
    query.delete("offset");
    for (const [name, value] of new FormData(form)) {
      if (value.trim()) query.set(name, value.trim());
      else query.delete(name);
    }
    location.assign(listUrl(query));
  }},
  el("label", {}, "Name ", text("q", "part of a name")),
  el("label", {}, "Status ", choice("status", STATUSES)),
  el("label", {}, "Type ", choice("instance_type", TYPES)),
  el("label", {}, "Site ", text("site_id", "site uuid")),
  el("label", {}, "Labels ", text("label", "env=prod,!canary")),
  el("button", {type: "submit"}, "Filter"), " ", el("a", {href: "/ui/"}, "Clear"));
  return form;
}

// -- /ui/instances/{id}: one instance ----------------------------------------

// When the service will end the instance by itself (CONTRACT 4.1): idle
// only while active, expiry unless it has ended.
const ACTIVE = ["pending", "starting", "running", "stopping"];
function deadlines(instance) {
  const shown = [];
  if (instance.idle_timeout_s !== null && ACTIVE.includes(instance.status)) {
    const idle = new Date(Date.parse(instance.last_activity_at) + instance.idle_timeout_s * 1000);
    shown.push(el("dt", {}, "ends if idle at"), el("dd", {}, when(idle.toISOString())));
  }
  if (instance.expires_at !== null && (ACTIVE.includes(instance.status) ||
                                       instance.status === "paused")) {
    shown.push(el("dt", {}, "expires at"), el("dd", {}, when(instance.expires_at)));
  }
  return shown;
}

async function showInstance(id, params) {
  const {body: instance} = await api(`/api/instances/${id}`);
  document.title = `${instance.name} · Instances`;
  const plans = el("div", {}, el("p", {class: "muted loading"}, "Loading…"));
  const head = el("div", {class: "instance-head"}, instanceHead(instance));
  const objects = Object.entries(instance).filter(([key, value]) => key !== "labels" &&
    typeof value === "object" && value !== null);
  main.replaceChildren(
    el("p", {class: "crumbs"}, el("a", {href: "/ui/"}, "← All instances")),
    head,
    el("div", {class: "objects"}, objects.map(([key, value]) => el("section", {},
      el("h2", {}, key), el("pre", {}, JSON.stringify(value, null, 2))))),
    el("section", {}, el("h2", {}, "Plans"), plans),
    logSection(id, LEVELS.includes(params.get("min_level")) ? params.get("min_level") : ""));
  followInstance(id, head, instance);

  // Most important first, then in the order they were made; 1000 is the
  // API's largest page.
  api(`/api/instances/${id}/plans?sort=-priority,created_at&limit=1000`)
    .then(({body}) => plans.replaceChildren(planTree(body)), () => plans.replaceChildren());
}

// The name, status and reason, then every field that is not an object, with
// the deadlines the service keeps (4.1).
function instanceHead(instance) {
  const scalars = Object.entries(instance).filter(([, value]) => typeof value !== "object" ||
                                                                  value === null);
  return [
    el("h1", {}, instance.name, " ", badge(instance.status),
       instance.status_reason ? el("span", {class: "reason"}, instance.status_reason) : ""),
    el("dl", {class: "fields"}, deadlines(instance), scalars.map(([key, value]) => [el("dt", {}, key), el("dd", {},
      value === null ? none() : key.endsWith("_at") ? when(value) : key === "status" ? badge(value)
        : key === "id" || key.endsWith("_id") ? el("span", {class: "id"}, value) : String(value))]),
    el("dt", {}, "labels"), el("dd", {}, labelChips(instance.labels)))];
}

// Keeps the head current while the page shows this instance: its status,
// reason, last activity and deadlines move without the page being asked
// (the agent's logs and heartbeats, the reaper). Activity moves at most once
// a second and is no event (4.4), so the instance is read again every few
// seconds rather than followed on /api/events.
const HEAD_REFRESH_MS = 2000;
async function followInstance(id, head, shown) {
  while (head.isConnected) {
    await sleep(HEAD_REFRESH_MS);
    if (!head.isConnected) return;
    let instance;
    try {
      ({body: instance} = await api(`/api/instances/${id}`));
    } catch (error) {
      if (error.status === 404 || error instanceof TokenNeeded) return;
      continue;     // a passing fault: the next round tries again
    }
    if (JSON.stringify(instance) !== JSON.stringify(shown)) {
      shown = instance;
      head.replaceChildren(...instanceHead(instance));
    }
  }
}

// Plans nested under their parent_id; a plan whose parent is not in the
// list (or a cycle) is shown at the top level rather than lost.
function planTree(plans) {
  if (!plans.length) return el("p", {class: "muted"}, "No plans.");
  const byId = new Map(plans.map((plan) => [plan.id, plan]));
  const children = new Map();
  for (const plan of plans) {
    const parent = byId.has(plan.parent_id) ? plan.parent_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(plan);
  }
  const placed = new Set();
  const branch = (list) => el("ul", {class: "plans"}, list.map((plan) => {
    if (placed.has(plan.id)) return null;   // met already, through a cycle
    placed.add(plan.id);
    const kids = children.get(plan.id) || [];
    return el("li", {}, el("div", {class: "plan"},
      el("span", {class: "title"}, plan.title), " ",
      el("span", {class: "tag"}, plan.plan_type), " ", badge(plan.status), " ",
      el("span", {class: "muted"}, `priority ${plan.priority}`),
      plan.started_at ? [" · started ", when(plan.started_at)] : null,
      plan.completed_at ? [" · ended ", when(plan.completed_at)] : null),
    kids.length ? branch(kids) : null);
  }));
  const tree = branch(children.get(null) || []);
  const lost = plans.filter((plan) => !placed.has(plan.id));
  if (lost.length) tree.append(...branch(lost).children);
  return tree;
}

// The log tail: newest at the bottom; older pages on demand at the top; new
// logs through long-polling (3.3).
function logSection(id, minLevel) {
  const base = `/api/instances/${id}/logs`;
  const level = minLevel ? `&min_level=${minLevel}` : "";
  const held = new Set();          // ids shown, a run from the newest end
  const lines = el("ol", {class: "log-lines"});
  const box = el("div", {class: "log-box"}, lines);
  const state = el("p", {class: "tail-state muted"}, "Loading…");
  const older = el("button", {type: "button", hidden: true, onclick: () => loadOlder()},
                   "Older logs");
  const select = el("select", {name: "min_level", onchange: () => {
    const query = new URLSearchParams(location.search);
    if (select.value) query.set("min_level", select.value);
    else query.delete("min_level");
    location.search = query.toString();
  }}, el("option", {value: ""}, "all"),
  LEVELS.map((name) => el("option", {value: name, selected: name === minLevel}, `${name}+`)));

  const line = (log) => el("li", {class: `log level-${log.level}`},
    when(log.created_at, true), " ", el("span", {class: "level"}, log.level), " ",
    el("span", {class: "type"}, log.log_type), " ", el("span", {class: "message"}, log.message),
    Object.keys(log.details || {}).length
      ? el("span", {class: "details"}, ` ${JSON.stringify(log.details)}`) : null);
  const fresh = (logs) => logs.filter((log) => !held.has(log.id) && held.add(log.id));

  function append(logs) {       // oldest first
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    lines.append(...fresh(logs).map(line));
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  // Newest first from the count of logs held: logs that landed meanwhile
  // shift the page towards ones already shown, never past unseen ones.
  async function loadOlder() {
    older.disabled = true;
    const {body, headers} = await api(`${base}?limit=${LOG_PAGE}&offset=${held.size}${level}`)
      .finally(() => { older.disabled = false; });
    const keep = box.scrollHeight - box.scrollTop;
    lines.prepend(...fresh(body).reverse().map(line));
    box.scrollTop = box.scrollHeight - keep;
    older.hidden = held.size >= Number(headers.get("X-Total-Count")) || !body.length;
  }

  async function tail() {
    const {body, headers} = await api(`${base}?limit=${LOG_PAGE}${level}`);
    append([...body].reverse());
    older.hidden = body.length >= Number(headers.get("X-Total-Count"));
    let cursor = body[0]?.id, delay = 0;
    for (;;) {
      state.textContent = cursor ? "Live: new logs appear below." : "No logs yet; watching.";
      try {
        if (cursor) {
          // Held by the server until a log lands (or [] at the deadline).
          const asked = Date.now();
          const {body: logs} = await api(
            `${base}?after=${cursor}&wait=${WAIT}&limit=${LOG_PAGE}${level}`);
          append(logs);
          cursor = logs.at(-1)?.id || cursor;
          // An empty answer long before the deadline: the server has as many
          // waiters as it holds and answered at once (3.3); do not spin.
          if (!logs.length && Date.now() - asked < 1000) await sleep(1000);
        } else {
          // Without a cursor there is nothing to wait after: poll the list.
          await sleep(NO_CURSOR_POLL);
          const {body: logs} = await api(`${base}?limit=${LOG_PAGE}${level}`);
          append([...logs].reverse());
          cursor = logs[0]?.id;
        }
        delay = 0;
      } catch (error) {
        // The cursor's log was purged by retention (4.2): follow on from the
        // newest log instead; what is shown stays.
        if (error instanceof Problem && error.status === 410) {
          const {body: logs} = await api(`${base}?limit=${LOG_PAGE}${level}`);
          append([...logs].reverse());
          cursor = logs[0]?.id;
          continue;
        }
        // Out of the network or a busy server: try again, backing off. Any
        // other answer (the instance deleted, a token needed) ends the tail.
        if (error instanceof Problem && !(error.status >= 500)) throw error;
        delay = Math.min(delay ? delay * 2 : 1000, 15000);
        state.textContent = `Lost the server; trying again in ${delay / 1000} s.`;
        await sleep(delay);
      }
    }
  }
  tail().catch((error) => {
    state.textContent = "Not following new logs.";
    if (!(error instanceof Problem)) notice(`The log tail stopped: ${error.message}`);
  });

  return el("section", {class: "logs"},
    el("div", {class: "log-head"}, el("h2", {}, "Logs"),
       el("label", {}, "Minimum level ", select), older),
    box, state);
}

// -- the fleet's activity (4.3, 4.4) ----------------------------------------------

// The fleet's live error stream and its recent changes, each linking to its
// instance. Filters in the URL under the API's names: min_level (error by
// default), site_id and label for both, type for the events.
async function showActivity(params) {
  document.title = "Activity";
  const shared = new URLSearchParams();
  for (const name of ["site_id", "label"]) if (params.get(name)) shared.set(name, params.get(name));
  const logQuery = new URLSearchParams(shared);
  logQuery.set("min_level", params.get("min_level") || "error");
  const eventQuery = new URLSearchParams(shared);
  if (params.get("type")) eventQuery.set("type", params.get("type"));
  const form = activityForm(params);
  main.replaceChildren(el("h1", {}, "Activity"), form,
    feedSection("Errors", "/api/logs", logQuery, (log) => [
      when(log.created_at, true), " ", el("span", {class: "level"}, log.level), " ",
      el("a", {href: `/ui/instances/${log.instance_id}`}, shortId(log.instance_id)), " ",
      el("span", {class: "type"}, log.log_type), " ", el("span", {class: "message"}, log.message)],
    (log) => `log level-${log.level}`),
    feedSection("Events", "/api/events", eventQuery, (event) => [
      when(event.at, true), " ", el("span", {class: "type"}, event.type), " ",
      el("a", {href: `/ui/instances/${event.instance_id}`}, shortId(event.instance_id)), " ",
      el("span", {class: "message"}, event.data?.name || event.data?.title || ""),
      event.data?.status ? [" ", badge(event.data.status)] : null],
    () => "event"));
}

function activityForm(params) {
  const field = (name, label, value) => el("label", {}, `${label} `,
    el("input", {name, value: value || "", size: 24}));
  const level = el("select", {name: "min_level"},
    LEVELS.map((name) => el("option", {value: name,
      selected: name === (params.get("min_level") || "error")}, `${name}+`)));
  return el("form", {class: "filters", method: "get", action: "/ui/activity"},
    el("label", {}, "Logs from ", level), " ", field("site_id", "Site", params.get("site_id")),
    " ", field("label", "Label", params.get("label")), " ",
    field("type", "Event types", params.get("type")), " ",
    el("button", {type: "submit"}, "Filter"));
}

// A feed, newest at the top: the last page, then what follows its newest
// row, held by the server until something new is committed (wait).
function feedSection(heading, base, query, cells, className) {
  const list = el("ol", {class: "log-lines feed"});
  const state = el("p", {class: "tail-state muted"}, "Loading…");
  const seen = new Set();
  const show = (rows) => list.prepend(...rows.filter((row) => !seen.has(row.id) && seen.add(row.id))
    .map((row) => el("li", {class: className(row)}, cells(row))));
  const nextAfter = (headers) => new URLSearchParams(
    (headers.get("Link") || "").match(/<[^?]*\?([^>]*)>/)?.[1] || "").get("after");

  async function follow() {
    const {body} = await api(`${base}?limit=50&${query}`);
    show([...body].reverse());
    // The cursor starts at the newest row of the whole feed (unfiltered):
    // a filtered page may have none, and p0 would read the feed from its start.
    const {body: newest} = await api(`${base}?limit=1`);
    let cursor = newest[0]?.id || "p0", delay = 0;
    for (;;) {
      state.textContent = "Live: new entries appear at the top.";
      try {
        const asked = Date.now();
        const {body: rows, headers} = await api(
          `${base}?after=${cursor}&wait=${WAIT}&limit=200&${query}`);
        show(rows);
        cursor = nextAfter(headers) || cursor;
        if (!rows.length && Date.now() - asked < 1000) await sleep(1000);
        delay = 0;
      } catch (error) {
        if (error instanceof Problem && !(error.status >= 500)) throw error;
        delay = Math.min(delay ? delay * 2 : 1000, 15000);
        state.textContent = `Lost the server; trying again in ${delay / 1000} s.`;
        await sleep(delay);
      }
    }
  }
  follow().catch((error) => {
    state.textContent = "Not following.";
    if (!(error instanceof Problem)) notice(`The ${heading.toLowerCase()} stopped: ${error.message}`);
  });
  return el("section", {class: "logs"}, el("h2", {}, heading), el("div", {class: "log-box"}, list),
    state);
}

// -- start -------------------------------------------------------------------

const match = location.pathname.match(/^\/ui\/instances\/([^/]+)$/);
const params = new URLSearchParams(location.search);
const view = match ? showInstance(match[1], params)
  : location.pathname === "/ui/activity" ? showActivity(params) : showInstances(params);
view.catch((error) => {
  if (!(error instanceof Problem)) notice(`The server cannot be reached: ${error.message}`);
  if (error instanceof TokenNeeded) return;
  // The message says what went wrong; the page stops saying it is loading.
  if (match) main.replaceChildren(el("p", {class: "crumbs"}, el("a", {href: "/ui/"}, "← All instances")));
  for (const node of main.querySelectorAll(".loading")) node.textContent = "Nothing to show.";
});
