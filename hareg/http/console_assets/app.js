// hareg web console: one ES module, no dependencies, no build step.
// It talks to the registry only through the /v2 and /hareg/v1 APIs, with the
// caller's own bearer token (docs/console.md), so the registry's rules apply
// to it as to any client: it hides what the caller's token does not grant,
// and the registry refuses it anyway.

const ROOT = "/console";
const PAGE = 50; // tags and repositories a page (the API's n)
const DETAIL_CONCURRENCY = 6; // manifest and history reads in flight for one page
const REFRESH_MS = 3000; // the cluster page's refresh
const MANIFEST_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");
const INDEX_TYPES = new Set([
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
]);

// ------------------------------------------------------------------ DOM

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function link(path, text, attrs) {
  return h("a", { href: path, "data-link": true, ...(attrs || {}) }, text);
}

function table(caption, headers, rows, attrs) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attrs || {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", class: t.cls }, t.text ?? t)))),
      h("tbody", {}, rows),
    ),
  );
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function badge(ok, text, warn) {
  return h("span", { class: `badge ${ok ? "ok" : warn ? "warn" : "bad"}` }, text);
}

function announce(text) {
  const el = document.getElementById("announce");
  el.textContent = "";
  setTimeout(() => (el.textContent = text), 30);
}

function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

function shortDigest(d) {
  return d ? `${d.slice(0, 19)}…` : "";
}

function repoPath(name) {
  return `${ROOT}/repositories/${name.split("/").map(encodeURIComponent).join("/")}`;
}

function pullCommand(name, ref) {
  const sep = ref.includes(":") ? "@" : ":";
  return `podman pull ${location.host}/${name}${sep}${ref}`;
}

function copyBox(label, text) {
  const input = h("input", { type: "text", readonly: true, value: text, "aria-label": label });
  const status = h("span", { class: "muted", "aria-live": "polite" });
  const copy = async () => {
    input.select();
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      ok = document.execCommand && document.execCommand("copy");
    }
    status.textContent = ok ? "Copied" : "Selected: press Ctrl+C";
  };
  return h("div", { class: "pull" }, input, h("button", { type: "button", class: "secondary", onclick: copy }, `Copy`), status);
}

// A string just below every string starting with ``prefix`` in byte order
// (the last character lowered by one and followed by "~", above every
// character of a tag or a repository name): the API's ``last`` for a page
// that starts at the prefix.
function before(prefix) {
  if (!prefix) return "";
  const code = prefix.charCodeAt(prefix.length - 1);
  return `${prefix.slice(0, -1)}${String.fromCharCode(code - 1)}~`;
}

// ---------------------------------------------------------------- session

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

class NeedLogin extends Error {}

function parseChallenge(header) {
  if (!header || !/^bearer\s/i.test(header)) return null;
  const out = {};
  for (const m of header.slice(7).matchAll(/(\w+)="([^"]*)"/g)) out[m[1]] = m[2];
  return out;
}

function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

// Who is logged in and the tokens obtained for them.  The password stays in
// this page's memory only; tokens (short-lived) are kept in sessionStorage so
// a reload keeps working until they expire.
class Session {
  constructor() {
    this.authOn = false;
    this.service = "hareg";
    this.user = sessionStorage.getItem("hareg.user");
    this.password = null;
    this.tokens = new Map(JSON.parse(sessionStorage.getItem("hareg.tokens") || "[]"));
  }

  save() {
    const now = Date.now();
    for (const [k, t] of this.tokens) if (t.expires <= now) this.tokens.delete(k);
    sessionStorage.setItem("hareg.tokens", JSON.stringify([...this.tokens]));
    if (this.user) sessionStorage.setItem("hareg.user", this.user);
    else sessionStorage.removeItem("hareg.user");
  }

  logout() {
    this.user = null;
    this.password = null;
    this.tokens.clear();
    this.save();
  }

  token(resource) {
    const t = this.tokens.get(resource);
    return t && t.expires > Date.now() ? t : null;
  }

  // May the caller do ``action`` on ``resource`` ("repository:NAME",
  // "cluster")?  Without authentication everyone may; with it, what the
  // token grants (the registry decides again on every request).
  can(resource, action) {
    if (!this.authOn) return true;
    const t = this.token(resource);
    if (!t) return false;
    const [type, ...rest] = resource.split(":");
    const kind = type === "cluster" ? "registry" : type;
    const name = type === "cluster" ? "cluster" : rest.join(":");
    return (t.access || []).some(
      (g) => g.type === kind && g.name === name && (g.actions.includes(action) || g.actions.includes("*")),
    );
  }

  scopesOf(resource) {
    if (resource === "cluster") return ["registry:cluster:*"];
    if (resource === "catalog") return ["registry:catalog:*"];
    // Everything the caller may do on the repository: the token grants the
    // intersection with the caller's roles, which tells the console what to show.
    return [`repository:${resource.slice("repository:".length)}:pull,push,delete,*`];
  }

  async fetchToken(resource, extraScope) {
    const params = new URLSearchParams({ service: this.service });
    for (const s of this.scopesOf(resource)) params.append("scope", s);
    if (extraScope && !this.scopesOf(resource).includes(extraScope)) params.append("scope", extraScope);
    const headers = {};
    if (this.user && this.password) headers.Authorization = `Basic ${btoa(`${this.user}:${this.password}`)}`;
    else if (this.user) throw new NeedLogin("Your session has expired: log in again.");
    const resp = await fetch(`/auth/token?${params}`, { headers, cache: "no-store" });
    if (resp.status === 401) throw new NeedLogin("Log in to see this.");
    if (!resp.ok) throw await apiError(resp);
    const body = await resp.json();
    const claims = jwtClaims(body.token);
    const t = { token: body.token, access: claims.access || [], expires: Date.now() + (body.expires_in - 10) * 1000 };
    this.tokens.set(resource, t);
    this.save();
    return t;
  }

  async login(user, password) {
    this.user = user;
    this.password = password;
    this.tokens.clear();
    try {
      await this.fetchToken("catalog");
      await this.fetchToken("cluster");
    } catch (err) {
      this.user = null;
      this.password = null;
      this.save();
      throw err instanceof NeedLogin ? new Error("Invalid user name or password.") : err;
    }
  }
}

async function apiError(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  let code = null;
  try {
    const body = await resp.json();
    const first = body.errors && body.errors[0];
    if (first) {
      message = first.message || message;
      code = first.code;
    }
  } catch {
    /* not JSON */
  }
  if (resp.status === 403) message = `Access denied: ${message}`;
  return new ApiError(resp.status, message, code);
}

class Api {
  constructor(session) {
    this.session = session;
  }

  // Detect whether the registry asks for credentials (/v2/ answers 401 with the challenge).
  async probe() {
    const resp = await fetch("/v2/", { cache: "no-store" });
    const challenge = parseChallenge(resp.headers.get("WWW-Authenticate"));
    if (resp.status === 401 && challenge) {
      this.session.authOn = true;
      this.session.service = challenge.service || "hareg";
    }
  }

  // One request on ``resource``'s behalf, following the token flow once on a 401.
  async request(path, resource, init) {
    const send = (t) => {
      const headers = { ...((init && init.headers) || {}) };
      if (t) headers.Authorization = `Bearer ${t.token}`;
      return fetch(path, { cache: "no-store", ...(init || {}), headers });
    };
    let resp = await send(this.session.token(resource));
    if (resp.status === 401 && this.session.authOn) {
      const challenge = parseChallenge(resp.headers.get("WWW-Authenticate"));
      const t = await this.session.fetchToken(resource, challenge && challenge.scope);
      resp = await send(t);
      if (resp.status === 401 && !this.session.user) throw new NeedLogin("Log in to see this.");
    }
    return resp;
  }

  async json(path, resource, init) {
    const resp = await this.request(path, resource, init);
    if (!resp.ok) throw await apiError(resp);
    return { body: await resp.json(), headers: resp.headers, status: resp.status };
  }

  async text(path, resource) {
    const resp = await this.request(path, resource);
    if (!resp.ok) throw await apiError(resp);
    return resp.text();
  }
}

// Run ``work`` over ``items`` with at most ``limit`` in flight.
async function eachLimited(items, limit, work) {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      try {
        await work(items[i], i);
      } catch {
        /* each work item shows its own failure */
      }
    }
  });
  await Promise.all(runners);
}

// --------------------------------------------------------------- registry

function repoUrl(name) {
  return `/v2/${name}`;
}

function manifestSummary(doc, mediaType) {
  const type = doc.mediaType || mediaType;
  if (INDEX_TYPES.has(type) || Array.isArray(doc.manifests)) {
    const platforms = (doc.manifests || [])
      .map((m) => m.platform)
      .filter(Boolean)
      .map((p) => [p.os, p.architecture, p.variant].filter(Boolean).join("/"));
    const size = (doc.manifests || []).reduce((n, m) => n + (m.size || 0), 0);
    return { type, platforms, size, index: true };
  }
  const layers = doc.layers || [];
  const size = (doc.config ? doc.config.size || 0 : 0) + layers.reduce((n, l) => n + (l.size || 0), 0);
  return { type, platforms: [], size, index: false };
}

async function getManifest(api, name, reference) {
  const resp = await api.request(`${repoUrl(name)}/manifests/${reference}`, `repository:${name}`, {
    headers: { Accept: MANIFEST_TYPES },
  });
  if (!resp.ok) throw await apiError(resp);
  const raw = await resp.text();
  const doc = JSON.parse(raw);
  return {
    doc,
    digest: resp.headers.get("Docker-Content-Digest"),
    mediaType: doc.mediaType || resp.headers.get("Content-Type"),
    length: raw.length,
  };
}

async function getHistory(api, name, tag) {
  const path = `/hareg/v1/repositories/${name}/tags/${encodeURIComponent(tag)}/history`;
  return (await api.json(path, `repository:${name}`)).body;
}

// Follow a Link header's ``last`` (the next page), if any.
function nextLast(headers) {
  const value = headers.get("Link");
  if (!value) return null;
  const m = value.match(/<([^>]*)>/);
  if (!m) return null;
  return new URL(m[1], location.origin).searchParams.get("last");
}

// ------------------------------------------------------------------ views

class Console {
  constructor() {
    this.session = new Session();
    this.api = new Api(this.session);
    this.main = document.getElementById("main");
    this.timer = null;
    this.generation = 0; // a render started later makes earlier ones drop their results
    this.seenReplicas = new Map(); // replica -> last record seen (cluster page)
  }

  async start() {
    document.addEventListener("click", (e) => {
      const a = e.target.closest("a[data-link], nav a");
      if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
      const url = new URL(a.href, location.href);
      if (url.origin !== location.origin || !url.pathname.startsWith(ROOT)) return;
      e.preventDefault();
      this.go(url.pathname + url.search);
    });
    window.addEventListener("popstate", () => this.render());
    try {
      await this.api.probe();
    } catch (err) {
      this.main.replaceChildren(h("p", { class: "error" }, `The registry did not answer: ${err.message}`));
      return;
    }
    await this.render();
  }

  go(path) {
    history.pushState(null, "", path);
    this.render();
  }

  updateChrome(view) {
    for (const a of document.querySelectorAll("nav a[data-nav]")) {
      if (a.dataset.nav === view) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.getElementById("nav-cluster").hidden = this.session.authOn && !this.session.can("cluster", "*");
    const box = document.getElementById("session");
    if (!this.session.authOn) {
      box.replaceChildren(h("span", { class: "muted-light" }, "authentication off"));
    } else if (this.session.user) {
      box.replaceChildren(
        h("span", {}, `Logged in as ${this.session.user}`),
        h("button", { type: "button", id: "logout", onclick: () => { this.session.logout(); this.go(`${ROOT}/login`); } }, "Log out"),
      );
    } else {
      box.replaceChildren(link(`${ROOT}/login?next=${encodeURIComponent(location.pathname + location.search)}`, "Log in"));
    }
  }

  route() {
    const path = location.pathname.replace(/\/+$/, "");
    const dec = (s) => s.split("/").map(decodeURIComponent).join("/");
    let m;
    if (path === ROOT || path === `${ROOT}/repositories`) return { view: "repositories" };
    if (path === `${ROOT}/login`) return { view: "login" };
    if (path === `${ROOT}/cluster`) return { view: "cluster" };
    if ((m = path.match(/^\/console\/repositories\/(.+)\/tags\/([^/]+)$/))) return { view: "tag", name: dec(m[1]), tag: dec(m[2]) };
    if ((m = path.match(/^\/console\/repositories\/(.+)\/manifests\/([^/]+)$/))) return { view: "manifest", name: dec(m[1]), digest: dec(m[2]) };
    if ((m = path.match(/^\/console\/repositories\/(.+)$/))) return { view: "repository", name: dec(m[1]) };
    return { view: "notfound" };
  }

  async render() {
    clearInterval(this.timer);
    this.timer = null;
    const generation = ++this.generation;
    const r = this.route();
    const nav = r.view === "cluster" ? "cluster" : "repositories";
    this.updateChrome(nav);
    const views = {
      repositories: () => this.repositories(generation),
      repository: () => this.repository(generation, r.name),
      tag: () => this.tag(generation, r.name, r.tag),
      manifest: () => this.manifest(generation, r.name, r.digest),
      cluster: () => this.cluster(generation),
      login: () => this.login(),
      notfound: () => this.show("Not found", h("p", {}, "The console has no such page. "), link(`${ROOT}/repositories`, "Repositories")),
    };
    try {
      await views[r.view]();
    } catch (err) {
      if (generation !== this.generation) return;
      if (err instanceof NeedLogin) {
        this.login(err.message);
      } else {
        this.show("Error", h("p", { class: "error", role: "alert" }, err.message));
      }
    }
    this.updateChrome(nav);
  }

  current(generation) {
    return generation === this.generation;
  }

  show(title, ...content) {
    document.title = `${title} · hareg console`;
    this.main.replaceChildren(h("h1", { id: "page-title" }, title), ...content.flat(Infinity).filter(Boolean));
    this.main.focus({ preventScroll: true });
    announce(title);
  }

  // ------------------------------------------------------------- login

  login(message) {
    if (!this.session.authOn) {
      this.show("Log in", h("p", {}, "This registry runs without authentication: nothing to log in to. "), link(`${ROOT}/repositories`, "Repositories"));
      return;
    }
    const params = new URLSearchParams(location.search);
    const next = location.pathname.startsWith(`${ROOT}/login`) ? params.get("next") || `${ROOT}/repositories` : location.pathname + location.search;
    const error = h("p", { class: "error", role: "alert", id: "login-error" });
    const user = h("input", { type: "text", id: "username", name: "username", autocomplete: "username", required: true, value: this.session.user || "" });
    const password = h("input", { type: "password", id: "password", name: "password", autocomplete: "current-password", required: true });
    const form = h(
      "form",
      {
        class: "login",
        onsubmit: async (e) => {
          e.preventDefault();
          error.textContent = "";
          try {
            await this.session.login(user.value, password.value);
            history.replaceState(null, "", next.startsWith(ROOT) ? next : `${ROOT}/repositories`);
            this.render();
          } catch (err) {
            error.textContent = err.message;
          }
        },
      },
      h("label", { for: "username" }, "User name", user),
      h("label", { for: "password" }, "Password", password),
      h("button", { type: "submit", id: "login-submit" }, "Log in"),
    );
    this.show("Log in", message ? h("p", { class: "notice" }, message) : null, error, form);
    user.focus();
  }

  // ------------------------------------------------------ repositories

  async repositories(generation) {
    const params = new URLSearchParams(location.search);
    const prefix = params.get("q") || "";
    const last = params.get("last") || (prefix ? before(prefix) : "");
    const query = new URLSearchParams({ n: String(PAGE) });
    if (last) query.set("last", last);
    const { body, headers } = await this.api.json(`/v2/_catalog?${query}`, "catalog");
    if (!this.current(generation)) return;
    let names = body.repositories || [];
    let more = nextLast(headers);
    if (prefix) {
      const inPrefix = names.filter((n) => n.startsWith(prefix));
      if (inPrefix.length < names.length) more = null; // past the prefix: no more matches
      names = inPrefix;
    }
    const rows = names.map((n) => h("tr", {}, h("td", {}, link(repoPath(n), n))));
    const filter = this.filterForm("Repositories starting with", "repo-filter", prefix, `${ROOT}/repositories`);
    const pager = h(
      "div",
      { class: "pager" },
      last ? link(`${ROOT}/repositories${prefix ? `?q=${encodeURIComponent(prefix)}` : ""}`, "First page") : null,
      more ? link(`${ROOT}/repositories?${new URLSearchParams({ ...(prefix ? { q: prefix } : {}), last: more })}`, "Next page", { rel: "next", id: "next-page" }) : null,
    );
    this.show(
      "Repositories",
      filter,
      rows.length ? table(`${rows.length} repositories on this page`, ["Name"], rows, { id: "repositories" }) : h("p", {}, prefix ? `No repository starts with ${prefix}.` : "No repositories yet."),
      pager,
    );
  }

  filterForm(label, id, value, action) {
    const input = h("input", { type: "search", id, name: "q", value, autocomplete: "off" });
    return h(
      "form",
      {
        class: "inline",
        role: "search",
        onsubmit: (e) => {
          e.preventDefault();
          this.go(input.value ? `${action}?q=${encodeURIComponent(input.value)}` : action);
        },
      },
      h("label", { for: id }, label, input),
      h("button", { type: "submit" }, "Filter"),
    );
  }

  // -------------------------------------------------------- repository

  async repository(generation, name) {
    const params = new URLSearchParams(location.search);
    const prefix = params.get("q") || "";
    const last = params.get("last") || (prefix ? before(prefix) : "");
    const query = new URLSearchParams({ n: String(PAGE) });
    if (last) query.set("last", last);
    const { body, headers } = await this.api.json(`${repoUrl(name)}/tags/list?${query}`, `repository:${name}`);
    if (!this.current(generation)) return;
    let tags = body.tags || [];
    let more = nextLast(headers);
    if (prefix) {
      const inPrefix = tags.filter((t) => t.startsWith(prefix));
      if (inPrefix.length < tags.length) more = null;
      tags = inPrefix;
    }
    const base = repoPath(name);
    const cells = new Map();
    const rows = tags.map((tag) => {
      const c = { digest: h("td", {}, "…"), type: h("td", { class: "hide-narrow" }, ""), size: h("td", {}, ""), platforms: h("td", { class: "hide-narrow" }, ""), pushed: h("td", {}, "") };
      cells.set(tag, c);
      return h("tr", { "data-tag": tag }, h("th", { scope: "row" }, link(`${base}/tags/${encodeURIComponent(tag)}`, tag)), c.digest, c.type, c.size, c.platforms, c.pushed);
    });
    const pager = h(
      "div",
      { class: "pager" },
      last ? link(prefix ? `${base}?q=${encodeURIComponent(prefix)}` : base, "First page") : null,
      more ? link(`${base}?${new URLSearchParams({ ...(prefix ? { q: prefix } : {}), last: more })}`, "Next page", { rel: "next", id: "next-page" }) : null,
    );
    this.show(
      name,
      h("p", { class: "crumbs" }, link(`${ROOT}/repositories`, "Repositories"), " / ", name),
      this.filterForm("Tags starting with", "tag-filter", prefix, base),
      rows.length
        ? table(`Tags ${tags[0]} to ${tags[tags.length - 1]}`, ["Tag", "Digest", { text: "Media type", cls: "hide-narrow" }, "Size", { text: "Platforms", cls: "hide-narrow" }, "Pushed"], rows, { id: "tags" })
        : h("p", {}, prefix ? `No tag starts with ${prefix}.` : "No tags."),
      pager,
    );
    // Details of this page's tags only: a page costs the same with 10 or 10,000 tags.
    await eachLimited(tags, DETAIL_CONCURRENCY, async (tag) => {
      if (!this.current(generation)) return;
      const c = cells.get(tag);
      try {
        const m = await getManifest(this.api, name, tag);
        const s = manifestSummary(m.doc, m.mediaType);
        c.digest.replaceChildren(link(`${base}/manifests/${m.digest}`, shortDigest(m.digest), { class: "digest", title: m.digest }));
        c.type.textContent = s.type || "";
        c.size.textContent = s.index ? `${(m.doc.manifests || []).length} manifests` : bytes(s.size);
        c.platforms.textContent = s.platforms.join(", ");
      } catch (err) {
        c.digest.replaceChildren(h("span", { class: "error" }, err.message));
      }
      try {
        const entries = await getHistory(this.api, name, tag);
        const lastEntry = entries[entries.length - 1];
        c.pushed.replaceChildren(lastEntry ? h("time", { datetime: lastEntry.time }, lastEntry.time.replace("T", " ").replace(/\.\d+Z$/, "Z")) : "");
      } catch {
        c.pushed.textContent = "";
      }
    });
  }

  // --------------------------------------------------------------- tag

  async tag(generation, name, tag) {
    const resource = `repository:${name}`;
    const [entries, manifest] = await Promise.all([
      getHistory(this.api, name, tag),
      getManifest(this.api, name, encodeURIComponent(tag)).catch((err) => (err.status === 404 ? null : Promise.reject(err))),
    ]);
    if (!this.current(generation)) return;
    const current = manifest ? manifest.digest : null;
    const base = repoPath(name);
    const mayRollback = this.session.can(resource, "*");
    const rows = [...entries].reverse().map((e) => {
      const target = e.new && e.new !== current && mayRollback
        ? h("button", { type: "button", class: "secondary rollback", "data-digest": e.new, onclick: () => this.rollback(name, tag, current, e.new) }, "Roll back to this")
        : e.new === current && current ? badge(true, "current") : "";
      const d = (digest) => (digest ? link(`${base}/manifests/${digest}`, digest, { class: "digest" }) : h("span", { class: "muted" }, "none"));
      return h("tr", { "data-seq": e.seq }, h("td", {}, e.seq), h("td", {}, h("time", { datetime: e.time }, e.time)), h("td", {}, e.action), h("td", {}, d(e.old)), h("td", {}, d(e.new)), h("td", { class: "hide-narrow" }, e.replica || ""), h("td", {}, target));
    });
    this.show(
      `${name}:${tag}`,
      h("p", { class: "crumbs" }, link(`${ROOT}/repositories`, "Repositories"), " / ", link(base, name), " / ", tag),
      facts([
        ["Digest", current ? link(`${base}/manifests/${current}`, current, { class: "digest", id: "current-digest" }) : h("span", { id: "current-digest" }, "the tag is deleted")],
        manifest ? ["Media type", manifest.mediaType] : null,
      ]),
      current ? [h("h2", {}, "Pull"), copyBox("Pull command by digest", pullCommand(name, current)), copyBox("Pull command by tag", pullCommand(name, tag))] : null,
      h("h2", {}, "History"),
      mayRollback ? null : h("p", { class: "muted", id: "no-rollback" }, "Rolling back needs the admin role on this repository."),
      h("div", { id: "rollback-status", role: "status" }),
      table(`${entries.length} entries, newest first`, ["#", "Time", "Action", "From", "To", { text: "Replica", cls: "hide-narrow" }, ""], rows, { id: "history" }),
    );
  }

  async rollback(name, tag, from, to) {
    const ok = await confirmDialog(
      `Roll back ${tag}?`,
      `Move tag ${name}:${tag} from ${from || "(deleted)"} to ${to}. The move is recorded in the tag's history.`,
      "Roll back",
    );
    const status = document.getElementById("rollback-status");
    if (!ok) {
      status.textContent = "Rollback cancelled.";
      return;
    }
    try {
      const path = `/hareg/v1/repositories/${name}/tags/${encodeURIComponent(tag)}/rollback`;
      await this.api.json(path, `repository:${name}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ digest: to }) });
      await this.render();
      document.getElementById("rollback-status").textContent = `${tag} now points to ${to}.`;
      announce(`${tag} rolled back`);
    } catch (err) {
      status.replaceChildren(h("span", { class: "error", role: "alert" }, `Rollback refused: ${err.message}`));
    }
  }

  // ---------------------------------------------------------- manifest

  async manifest(generation, name, digest) {
    const resource = `repository:${name}`;
    const m = await getManifest(this.api, name, digest);
    const referrers = await this.api
      .json(`${repoUrl(name)}/referrers/${digest}`, resource)
      .then((r) => r.body.manifests || [])
      .catch(() => null);
    if (!this.current(generation)) return;
    const doc = m.doc;
    const base = repoPath(name);
    const s = manifestSummary(doc, m.mediaType);
    const dlink = (d) => link(`${base}/manifests/${d}`, d, { class: "digest" });
    const sections = [];
    if (s.index) {
      sections.push(
        h("h2", {}, "Manifests"),
        table("One per platform", ["Digest", "Platform", "Media type", "Size"], (doc.manifests || []).map((c) => h("tr", {}, h("td", {}, dlink(c.digest)), h("td", {}, c.platform ? [c.platform.os, c.platform.architecture, c.platform.variant].filter(Boolean).join("/") : ""), h("td", {}, c.mediaType || ""), h("td", {}, bytes(c.size)))), { id: "children" }),
      );
    } else {
      if (doc.config) {
        sections.push(h("h2", {}, "Config"), facts([["Digest", h("code", {}, doc.config.digest)], ["Media type", doc.config.mediaType], ["Size", bytes(doc.config.size)]]));
        const details = h("div", { id: "config-details" });
        sections.push(details);
        this.configDetails(name, doc.config, details);
      }
      sections.push(
        h("h2", {}, "Layers"),
        table(`${(doc.layers || []).length} layers, ${bytes(s.size)} in all with the config`, ["#", "Digest", "Media type", "Size"], (doc.layers || []).map((l, i) => h("tr", {}, h("td", {}, i + 1), h("td", {}, h("code", {}, l.digest)), h("td", {}, l.mediaType), h("td", {}, bytes(l.size)))), { id: "layers" }),
      );
    }
    const annotations = Object.entries(doc.annotations || {});
    sections.push(
      h("h2", {}, "Annotations"),
      annotations.length ? table("Annotations", ["Key", "Value"], annotations.map(([k, v]) => h("tr", {}, h("td", {}, h("code", {}, k)), h("td", {}, v))), { id: "annotations" }) : h("p", { class: "muted" }, "None."),
      h("h2", {}, "Referrers"),
      referrers === null
        ? h("p", { class: "muted" }, "The referrers could not be read.")
        : referrers.length
          ? table("Signatures, SBOMs and other artifacts that refer to this manifest", ["Artifact type", "Digest", "Size", "Annotations"], referrers.map((r) => h("tr", {}, h("td", {}, r.artifactType || r.mediaType), h("td", {}, dlink(r.digest)), h("td", {}, bytes(r.size)), h("td", {}, Object.entries(r.annotations || {}).map(([k, v]) => `${k}=${v}`).join("; ")))), { id: "referrers" })
          : h("p", { class: "muted", id: "no-referrers" }, "Nothing refers to this manifest."),
    );
    this.show(
      `${name}@${shortDigest(m.digest)}`,
      h("p", { class: "crumbs" }, link(`${ROOT}/repositories`, "Repositories"), " / ", link(base, name), " / ", h("span", { class: "digest" }, m.digest)),
      facts([
        ["Digest", h("code", { id: "manifest-digest" }, m.digest)],
        ["Media type", m.mediaType],
        doc.artifactType ? ["Artifact type", doc.artifactType] : null,
        doc.subject ? ["Subject", dlink(doc.subject.digest)] : null,
        ["Manifest size", bytes(m.length)],
      ]),
      h("h2", {}, "Pull"),
      copyBox("Pull command by digest", pullCommand(name, m.digest)),
      sections,
    );
  }

  async configDetails(name, descriptor, box) {
    // The config blob is small (the registry streams or redirects it); show
    // what identifies the image, and nothing if it cannot be read.
    if (descriptor.size > 1024 * 1024 || !/json/.test(descriptor.mediaType || "")) return;
    try {
      const text = await this.api.text(`${repoUrl(name)}/blobs/${descriptor.digest}`, `repository:${name}`);
      const cfg = JSON.parse(text);
      const c = cfg.config || {};
      box.replaceChildren(
        facts([
          cfg.created ? ["Created", cfg.created] : null,
          cfg.os ? ["Platform", [cfg.os, cfg.architecture, cfg.variant].filter(Boolean).join("/")] : null,
          c.Entrypoint ? ["Entrypoint", JSON.stringify(c.Entrypoint)] : null,
          c.Cmd ? ["Command", JSON.stringify(c.Cmd)] : null,
          ...Object.entries(c.Labels || {}).map(([k, v]) => [`Label ${k}`, v]),
        ]),
      );
    } catch {
      /* a config that cannot be read is shown by its descriptor alone */
    }
  }

  // ----------------------------------------------------------- cluster

  async cluster(generation) {
    await this.clusterOnce(generation);
    if (this.current(generation)) {
      this.timer = setInterval(() => this.clusterOnce(generation, true).catch(() => {}), REFRESH_MS);
    }
  }

  async clusterOnce(generation, refresh) {
    const get = (path) => this.api.json(path, "cluster").then((r) => r.body);
    const [status, members, pruner, metrics] = await Promise.all([
      get("/hareg/v1/status"),
      get("/hareg/v1/members"),
      get("/hareg/v1/pruner"),
      fetch("/metrics", { cache: "no-store" }).then((r) => (r.ok ? r.text() : "")).catch(() => ""),
    ]);
    if (!this.current(generation)) return;
    const now = new Date();
    for (const r of members.replicas) this.seenReplicas.set(r.replica, r);
    const listed = new Set(members.replicas.map((r) => r.replica));
    // A replica that left (its lease expired) is shown as down until it is back.
    const replicaRows = [...this.seenReplicas.values()]
      .sort((a, b) => a.replica.localeCompare(b.replica))
      .map((r) => {
        const gone = !listed.has(r.replica);
        const up = !gone && r.ready;
        return h("tr", { "data-replica": r.replica, "data-state": up ? "up" : "down" }, h("th", { scope: "row" }, r.replica), h("td", {}, badge(up, up ? "up" : "down")), h("td", {}, gone ? "not registered (its lease expired)" : r.detail), h("td", { class: "hide-narrow" }, r.url), h("td", { class: "hide-narrow" }, r.version), h("td", { class: "hide-narrow" }, gone ? "" : r.started));
      });
    const conditionRows = status.conditions.map((c) => {
      // Available is good when True; Degraded when False; Progressing (a
      // change under way) is only worth a warning when True.
      const good = c.type === "Available" ? c.status === "True" : c.status === "False";
      return h("tr", { "data-condition": c.type }, h("th", { scope: "row" }, c.type), h("td", {}, badge(good, c.status, c.type === "Progressing")), h("td", {}, c.reason), h("td", {}, c.message), h("td", { class: "hide-narrow" }, c.lastTransitionTime || ""));
    });
    const etcdRows = members.etcd.map((e) => h("tr", { "data-endpoint": e.endpoint, "data-state": e.healthy ? "healthy" : "down" }, h("th", { scope: "row" }, e.endpoint), h("td", {}, badge(e.healthy, e.healthy ? "healthy" : "down")), h("td", {}, e.detail)));
    const readOnly = status.readOnly || {};
    const ro = Boolean(readOnly.readOnly);
    const roButton = h("button", { type: "button", id: "read-only-toggle", class: ro ? "" : "danger", onclick: () => this.setReadOnly(!ro) }, ro ? "Allow writes again" : "Make the registry read-only");
    const queues = parseQueues(metrics);
    const queueRows = Object.entries(queues).map(([kind, q]) => h("tr", { "data-kind": kind }, h("th", { scope: "row" }, kind), h("td", {}, q.queued ?? ""), h("td", {}, q.running ?? ""), h("td", {}, limitText(q.maxRunning)), h("td", {}, limitText(q.maxInQueue))));
    const last = pruner.lastRun;
    const content = [
      h("p", { class: "muted" }, `As seen by replica ${status.replica}; updated ${now.toLocaleTimeString()} (every ${REFRESH_MS / 1000} s).`),
      h("h2", {}, "Conditions"),
      table("This replica's conditions", ["Type", "Status", "Reason", "Message", { text: "Since", cls: "hide-narrow" }], conditionRows, { id: "conditions" }),
      h("h2", {}, "Replicas"),
      table(`${members.replicas.filter((r) => r.ready).length} of ${this.seenReplicas.size} replicas up`, ["Replica", "State", "Detail", { text: "URL", cls: "hide-narrow" }, { text: "Version", cls: "hide-narrow" }, { text: "Started", cls: "hide-narrow" }], replicaRows, { id: "replicas" }),
      h("h2", {}, "etcd members"),
      etcdRows.length ? table(`${members.etcd.filter((e) => e.healthy).length} of ${members.etcd.length} members healthy`, ["Endpoint", "State", "Detail"], etcdRows, { id: "etcd" }) : h("p", { class: "muted" }, "No etcd endpoints are known to this replica."),
      h("h2", {}, "Read-only switch"),
      h("p", { id: "read-only-state" }, ro ? badge(false, "read-only", true) : badge(true, "writable"), " ", readOnly.reason ? `(${readOnly.reason})` : ""),
      roButton,
      h("h2", {}, "Pruner"),
      facts([
        ["Leader", pruner.leader || "none elected"],
        ["Schedule", `${pruner.schedule}${pruner.suspend ? " (suspended)" : ""}`],
        ["Runs", Object.entries(pruner.runs || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "none yet"],
        ["Last run", last ? describeRun(last) : `none on ${status.replica} since it started`],
        ["fsck", pruner.fsck && pruner.fsck.schedule ? `${pruner.fsck.schedule}${pruner.fsck.running ? " (running)" : ""}` : "not scheduled"],
      ]),
      h("h2", {}, "Request queues"),
      queueRows.length ? table("From /metrics of the replica that answered", ["Kind", "Queued", "Running", "Max running", "Max in queue"], queueRows, { id: "queues" }) : h("p", { class: "muted" }, "No request limits are configured."),
    ];
    if (refresh) {
      // Keep focus and scroll: replace the content under the heading only.
      const title = document.getElementById("page-title");
      if (!title) return;
      const focused = document.activeElement && document.activeElement.id;
      this.main.replaceChildren(title, ...content.flat(Infinity).filter(Boolean));
      if (focused) document.getElementById(focused)?.focus({ preventScroll: true });
    } else {
      this.show("Cluster", ...content);
    }
  }

  async setReadOnly(on) {
    const ok = await confirmDialog(
      on ? "Make the registry read-only?" : "Allow writes again?",
      on ? "Every replica refuses pushes, deletes and rollbacks until writes are allowed again. Pulls go on." : "Every replica accepts writes again.",
      on ? "Make read-only" : "Allow writes",
    );
    if (!ok) return;
    try {
      await this.api.json("/hareg/v1/read-only", "cluster", { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ readOnly: on }) });
      announce(on ? "The registry is read-only" : "Writes are allowed");
    } catch (err) {
      announce(err.message);
    }
    await this.clusterOnce(this.generation, true);
  }
}

function limitText(value) {
  return value === 0 ? "unlimited" : value ?? "";
}

function describeRun(run) {
  const c = run.counts || {};
  const what = `${c.historyEntries} history entries, ${c.manifests} manifests, ${c.links} links, ${c.blobs} blobs (${bytes(c.bytes)}), ${c.uploads} uploads`;
  return `${run.dryRun ? "dry run, would remove" : "removed"} ${what}`;
}

// ``hareg_requests_{queued,running,limit}`` of a Prometheus text page, by kind.
function parseQueues(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^hareg_requests_(queued|running|limit)\{([^}]*)\}\s+(\S+)/);
    if (!m) continue;
    const labels = Object.fromEntries([...m[2].matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    const q = (out[labels.kind] ||= {});
    const value = Number(m[3]);
    if (m[1] === "limit") q[labels.limit] = value;
    else q[m[1]] = value;
  }
  return out;
}

function confirmDialog(title, text, confirmLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = confirmLabel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        resolve(dialog.returnValue === "ok");
        if (opener && opener.isConnected) opener.focus();
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
  });
}

new Console().start();
