// The fleet page: the machines SlaveAPI knows, filtered; one machine's
// details, health and history; buttons for its actions, and their progress
// live. Everything is read from this service's API; every value shown is
// set as text, never parsed as HTML.

import { Api, STATES, slavePath, storeToken, storedToken } from "./api.js";
import { isDestructive, loadCatalogue } from "./catalogue.js";
import { Follower } from "./live.js";

// Per-machine health reads in flight at once.
const HEALTH_CONCURRENCY = 4;
const HISTORY_PAGE = 20;
// How often the fleet's health is read again: soon while the first check is
// still to come, then at the pace of a health loop.
const HEALTH_SOON_MS = 5000;
const HEALTH_EVERY_MS = 60000;
const LIST_FILTERS = ["purpose", "environment", "pool"];
const LIVE_MODES = {
  stream: "Following the service's event stream.",
  polling: "No event stream: reading each running action once a second.",
  connecting: "Connecting to the event stream…",
};

const byId = (id) => document.getElementById(id);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "className") {
      node.className = value;
    } else {
      node.setAttribute(name, value);
    }
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function when(timestamp) {
  return timestamp ? new Date(timestamp * 1000).toLocaleString() : "—";
}

function stateBadge(state) {
  return element("span", { className: `state state-${state}` }, STATES[state] || String(state));
}

// A result's text as lines: escalation steps one to a line; other values as JSON.
function textLines(text) {
  if (text === null || text === undefined || text === "") {
    return [];
  }
  if (typeof text === "string") {
    return text.split("\n").filter((line) => line.trim() !== "");
  }
  return [JSON.stringify(text)];
}

class FleetPage {
  constructor() {
    this.api = new Api((message) => this.askToken(message));
    this.slaves = [];
    this.verdicts = new Map();
    this.healthServed = null;
    this.healthCheckedAt = null;
    this.healthTimer = null;
    this.healthQueue = new Set();
    this.healthWorkers = 0;
    this.catalogue = [];
    this.selected = null;
    this.runs = new Map();
    this.tokenAsk = null;
    this.follower = new Follower(
      this.api,
      (requestid, change) => this.runChanged(requestid, change),
      (mode) => {
        byId("live-mode").textContent = LIVE_MODES[mode] || "";
      },
    );
  }

  async start() {
    // "input" as one types a name; "change" as a choice is made (not every way of choosing fires "input").
    for (const kind of ["input", "change"]) {
      byId("filters").addEventListener(kind, () => this.render());
    }
    byId("filters").addEventListener("submit", (event) => event.preventDefault());
    byId("refresh").addEventListener("click", () => this.loadFleet());
    byId("token-set").addEventListener("click", async () => {
      if (await this.askToken("")) {
        this.loadFleet();
      }
    });
    byId("token-forget").addEventListener("click", () => {
      storeToken("");
      this.showToken();
    });
    window.addEventListener("hashchange", () => this.selectFromAddress());
    this.showToken();
    // The list first: where reads need a token, it is asked for then, and the rest goes with it.
    await this.loadFleet();
    this.catalogue = await loadCatalogue();
    this.follower.start();
    this.selectFromAddress();
  }

  showToken() {
    byId("token-state").textContent = storedToken() ? "token set" : "no token";
    byId("token-forget").disabled = !storedToken();
  }

  // One dialog for every request refused at once; resolves to the token, or null.
  askToken(message) {
    if (!this.tokenAsk) {
      this.tokenAsk = new Promise((resolve) => {
        const dialog = byId("token-dialog");
        byId("token-reason").textContent = message ? `The service says: ${message}` : "";
        byId("token-input").value = "";
        dialog.addEventListener(
          "close",
          () => {
            const token = dialog.returnValue === "save" ? byId("token-input").value.trim() : "";
            if (token) {
              storeToken(token);
              // An event stream refused without a token is tried again with this one.
              this.follower.tokenStored();
            }
            this.tokenAsk = null;
            this.showToken();
            resolve(token || null);
          },
          { once: true },
        );
        dialog.returnValue = "";
        dialog.showModal();
      });
    }
    return this.tokenAsk;
  }

  // ----- the list -----

  async loadFleet() {
    byId("list-status").textContent = "Loading…";
    try {
      const answer = await this.api.get("/slaves");
      this.slaves = answer.slaves.sort((a, b) => a.name.localeCompare(b.name));
    } catch (error) {
      byId("list-status").textContent = `Could not list the machines: ${error.message}`;
      return;
    }
    this.fillChoices();
    this.verdicts.clear();
    this.healthCheckedAt = null;
    this.render();
    await this.loadFleetHealth();
  }

  fillChoices() {
    for (const key of LIST_FILTERS) {
      const select = byId(`filter-${key}`);
      const chosen = select.value;
      const values = [...new Set(this.slaves.map((slave) => slave[key]).filter((v) => v !== null && v !== ""))];
      select.replaceChildren(
        element("option", { value: "" }, "any"),
        ...values.sort().map((value) => element("option", { value: String(value) }, String(value))),
      );
      select.value = values.map(String).includes(chosen) ? chosen : "";
    }
  }

  async loadFleetHealth() {
    const summary = byId("fleet-health");
    clearTimeout(this.healthTimer);
    try {
      const health = await this.api.get("/health");
      this.healthServed = true;
      // After a new check each machine's verdict is read again as it is shown (the old one shown meanwhile).
      this.healthCheckedAt = health.checked_at;
      this.healthTimer = setTimeout(() => this.loadFleetHealth(), health.checked_at ? HEALTH_EVERY_MS : HEALTH_SOON_MS);
      const counts = Object.entries(health.verdicts || {}).map(([verdict, count]) => `${count} ${verdict}`);
      summary.textContent = `Health of ${health.machines} machines: ${counts.join(", ")}; checked ${when(health.checked_at)}`;
    } catch (error) {
      this.healthServed = false;
      summary.textContent = error.status === 503 ? "The health loop is not running." : `Health: ${error.message}`;
      if (error.status !== 503) {
        this.healthTimer = setTimeout(() => this.loadFleetHealth(), HEALTH_EVERY_MS);
      }
    }
    this.render();
  }

  filters() {
    const value = (key) => byId(`filter-${key}`).value;
    return {
      name: value("name").trim(),
      purpose: value("purpose"),
      environment: value("environment"),
      pool: value("pool"),
      enabled: value("enabled"),
      verdict: value("verdict"),
    };
  }

  matches(slave, wanted, withVerdict) {
    if (wanted.name && !slave.name.includes(wanted.name)) {
      return false;
    }
    for (const key of LIST_FILTERS) {
      if (wanted[key] && String(slave[key]) !== wanted[key]) {
        return false;
      }
    }
    if (wanted.enabled && (slave.enabled ? "yes" : "no") !== wanted.enabled) {
      return false;
    }
    return !(withVerdict && wanted.verdict && this.verdicts.get(slave.name)?.verdict !== wanted.verdict);
  }

  render() {
    const wanted = this.filters();
    const candidates = this.slaves.filter((slave) => this.matches(slave, wanted, false));
    const shown = candidates.filter((slave) => this.matches(slave, wanted, true));
    byId("machines").tBodies[0].replaceChildren(...shown.map((slave) => this.row(slave)));
    const reading = this.healthQueue.size + this.healthWorkers ? "; reading health…" : "";
    byId("list-status").textContent = `${shown.length} of ${this.slaves.length} machines${reading}`;
    if (this.healthServed) {
      const stale = (name) => this.verdicts.get(name)?.checkedAt !== this.healthCheckedAt;
      this.readVerdicts(candidates.map((slave) => slave.name).filter(stale));
    }
  }

  row(slave) {
    const link = element("a", { href: `#slave=${encodeURIComponent(slave.name)}` }, slave.name);
    return element(
      "tr",
      { "data-name": slave.name, className: slave.name === this.selected ? "selected" : "" },
      element("td", {}, link),
      element("td", {}, slave.purpose || ""),
      element("td", {}, slave.environment || ""),
      element("td", {}, slave.pool || ""),
      element("td", {}, slave.enabled ? "yes" : "no"),
      element("td", { className: "verdict-cell" }, this.verdictBadge(slave.name)),
      element("td", {}, slave.current_master || ""),
    );
  }

  verdictBadge(name) {
    if (this.healthServed === false) {
      return "—";
    }
    const verdict = this.verdicts.get(name)?.verdict;
    return element("span", { className: `verdict verdict-${verdict || "pending"}` }, verdict || "…");
  }

  readVerdicts(names) {
    for (const name of names) {
      this.healthQueue.add(name);
    }
    while (this.healthWorkers < HEALTH_CONCURRENCY && this.healthQueue.size) {
      this.healthWorkers += 1;
      this.readVerdictsInTurn();
    }
  }

  async readVerdictsInTurn() {
    while (this.healthQueue.size) {
      const name = this.healthQueue.values().next().value;
      this.healthQueue.delete(name);
      let verdict;
      try {
        verdict = (await this.api.get(slavePath(name, "health"))).verdict;
      } catch (error) {
        verdict = error.status === 404 ? "not checked" : "unreadable";
      }
      this.verdicts.set(name, { verdict, checkedAt: this.healthCheckedAt });
      const cell = document.querySelector(`#machines tr[data-name="${CSS.escape(name)}"] .verdict-cell`);
      if (cell) {
        cell.replaceChildren(this.verdictBadge(name));
      }
    }
    this.healthWorkers -= 1;
    if (!this.healthWorkers) {
      this.render();
    }
  }

  // ----- one machine -----

  selectFromAddress() {
    const name = new URLSearchParams(window.location.hash.slice(1)).get("slave");
    if (name && name !== this.selected) {
      this.select(name);
    }
  }

  async select(name) {
    this.selected = name;
    for (const row of byId("machines").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.name === name);
    }
    byId("details").hidden = false;
    byId("details-name").textContent = name;
    byId("details-status").textContent = "Loading…";
    byId("details-facts").replaceChildren();
    byId("details-health").replaceChildren();
    this.renderActions(name);
    this.loadHistory(name, null);
    this.loadMachineHealth(name);
    try {
      const slave = await this.api.get(slavePath(name));
      if (this.selected === name) {
        this.renderFacts(slave);
        byId("details-status").textContent = "";
      }
    } catch (error) {
      if (this.selected === name) {
        byId("details-status").textContent = `Could not read ${name}: ${error.message}`;
      }
    }
  }

  renderFacts(slave) {
    const job = (slave.recent_jobs || [])[0];
    const facts = [
      ["FQDN", slave.fqdn],
      ["IP address", slave.ip],
      ["Purpose", slave.purpose],
      ["Environment", slave.environment],
      ["Pool", slave.pool],
      ["Datacenter", slave.datacenter],
      ["Distribution", slave.distro],
      ["Enabled", slave.enabled ? "yes" : "no"],
      ["Master", slave.master ? `${slave.master.nickname || ""} ${slave.master.fqdn || ""}`.trim() : null],
      ["Power channels", (slave.power_channels || []).join(", ") || "none"],
      ["Bug", slave.bug && (slave.bug.id || JSON.stringify(slave.bug))],
      ["Notes", slave.notes],
      ["Last job", job ? `${job.buildername} #${job.buildnumber}, ended ${when(job.endtime)}` : null],
      ["Could not learn", slave.errors && Object.keys(slave.errors).length ? JSON.stringify(slave.errors) : null],
    ];
    byId("details-facts").replaceChildren(
      ...facts
        .filter(([, value]) => value !== null && value !== undefined && value !== "")
        .flatMap(([label, value]) => [element("dt", {}, label), element("dd", {}, String(value))]),
    );
  }

  async loadMachineHealth(name) {
    const box = byId("details-health");
    let health;
    try {
      health = await this.api.get(slavePath(name, "health"));
    } catch (error) {
      if (this.selected === name) {
        box.replaceChildren(element("p", {}, `Health not available: ${error.message}`));
      }
      return;
    }
    if (this.selected !== name) {
      return;
    }
    box.replaceChildren(
      element("p", {}, element("span", { className: `verdict verdict-${health.verdict}` }, health.verdict),
        ` since ${when(health.since)}, checked ${when(health.checked_at)}`),
      element("ul", {}, ...(health.evidence || []).map((item) =>
        element("li", {}, `${item.check}: ${item.outcome}`, item.detail ? ` — ${item.detail}` : ""))),
    );
  }

  async loadHistory(name, next) {
    const box = byId("history");
    if (!next) {
      box.replaceChildren(element("p", {}, "Loading…"));
    }
    let page;
    try {
      page = await this.api.get(next || `${slavePath(name, "history")}?limit=${HISTORY_PAGE}`);
    } catch (error) {
      if (this.selected === name && !next) {
        const text = error.status === 404 ? "History not available." : `Could not read the history: ${error.message}`;
        box.replaceChildren(element("p", {}, text));
      }
      return;
    }
    if (this.selected !== name) {
      return;
    }
    if (!next) {
      box.replaceChildren();
    }
    box.querySelector(".older")?.remove();
    if (!next && !page.history.length) {
      box.append(element("p", {}, "No actions yet."));
    }
    box.append(...page.history.map((entry) => this.historyEntry(entry)));
    if (typeof page.next === "string" && page.next.startsWith("/slaves/")) {
      const older = element("button", { type: "button", className: "older" }, "Older");
      older.addEventListener("click", () => this.loadHistory(name, page.next));
      box.append(older);
    }
  }

  historyEntry(entry) {
    const fields = Object.entries(entry.fields || {});
    return element(
      "article",
      { className: "history-entry", "data-requestid": String(entry.requestid) },
      element("header", {},
        element("strong", {}, `#${entry.requestid} ${entry.action}`), " ", stateBadge(entry.state),
        ` by ${entry.client || "anonymous"}, requested ${when(entry.request_timestamp)}`,
        entry.finish_timestamp ? `, finished ${when(entry.finish_timestamp)}` : ""),
      fields.length
        ? element("p", { className: "fields" }, fields.map(([key, value]) => `${key}=${value}`).join(", "))
        : null,
      element("ol", { className: "steps" }, ...(entry.steps || []).map((step) =>
        element("li", {}, step.heading, step.outcome ? ` — ${step.outcome}` : " …",
          element("span", { className: "when" }, ` (${when(step.started)} to ${when(step.finished)})`)))),
      element("pre", { className: "text" }, textLines(entry.text).join("\n")),
    );
  }

  // ----- actions -----

  renderActions(name) {
    byId("action-buttons").replaceChildren(
      ...this.catalogue.map((action) => {
        const button = element(
          "button",
          {
            type: "button",
            "data-action": action.name,
            className: isDestructive(action) ? "destructive" : "",
            title: action.description || action.name,
          },
          action.name,
        );
        button.addEventListener("click", () => this.runAction(name, action));
        return button;
      }),
    );
  }

  // The action's form fields, asked for (and a destructive action confirmed)
  // in a dialog; null when the operator cancels.
  askFields(slave, action) {
    const destructive = isDestructive(action);
    if (!destructive && !action.fields.length) {
      return Promise.resolve({});
    }
    return new Promise((resolve) => {
      const dialog = byId("action-dialog");
      byId("action-title").textContent = `${action.name} on ${slave}`;
      byId("action-warning").textContent = destructive
        ? `This acts on ${slave} and cannot be undone from here. Go ahead?`
        : "";
      byId("action-confirm").textContent = destructive ? `Yes, ${action.name}` : "Run";
      byId("action-fields").replaceChildren(...action.fields.map((field) => this.fieldInput(field)));
      dialog.addEventListener(
        "close",
        () => {
          if (dialog.returnValue !== "run") {
            resolve(null);
            return;
          }
          const form = {};
          for (const field of action.fields) {
            const value = byId(`field-${field.name}`).value.trim();
            if (value !== "") {
              form[field.name] = value;
            }
          }
          resolve(form);
        },
        { once: true },
      );
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  fieldInput(field) {
    const attributes = { id: `field-${field.name}`, name: field.name };
    if (field.required) {
      attributes.required = "";
    }
    let input;
    const choices = field.kind === "boolean" ? ["yes", "no"] : field.choices || [];
    if (choices.length) {
      input = element("select", attributes,
        element("option", { value: "" }, field.required ? "choose…" : "default"),
        ...choices.map((choice) => element("option", { value: choice }, choice)));
    } else {
      const type = field.kind === "integer" || field.kind === "number" ? "number" : "text";
      input = element("input", { ...attributes, type, autocomplete: "off" });
    }
    return element("label", {}, `${field.name}${field.required ? " (required)" : ""} `, input,
      field.description ? element("small", {}, ` ${field.description}`) : null);
  }

  async runAction(slave, action) {
    const form = await this.askFields(slave, action);
    if (form === null) {
      return;
    }
    const run = this.addRun(slave, action);
    let answer;
    try {
      answer = (await this.api.post(slavePath(slave, "actions", action.route), { ...form, waittime: "0" })).body;
    } catch (error) {
      this.showRun(run, { error: `${action.name} was not requested: ${error.message}` });
      return;
    }
    const earlier = this.runs.get(answer.requestid);
    if (earlier) {
      // A request already pending or running answered instead (single flight).
      run.node.remove();
      earlier.node.classList.add("joined");
      return;
    }
    run.requestid = answer.requestid;
    run.node.dataset.requestid = String(answer.requestid);
    run.node.querySelector(".requestid").textContent = `#${answer.requestid}`;
    this.runs.set(answer.requestid, run);
    this.showRun(run, answer);
    if (answer.state < 2) {
      this.follower.follow(slave, action.route, answer);
    }
  }

  addRun(slave, action) {
    const node = element(
      "li",
      { className: "run", "data-slave": slave, "data-action": action.name },
      element("header", {},
        element("span", { className: "run-title" }, `${action.name} ${slave} `),
        element("span", { className: "requestid" }, "sending…"), " ",
        element("span", { className: "state" })),
      element("ol", { className: "steps" }),
      element("p", { className: "run-error" }),
    );
    byId("runs").prepend(node);
    return { slave, action, node, requestid: null };
  }

  runChanged(requestid, change) {
    const run = this.runs.get(requestid);
    if (run) {
      this.showRun(run, change);
    }
  }

  showRun(run, change) {
    const error = run.node.querySelector(".run-error");
    if (change.error) {
      error.textContent = change.error;
      return;
    }
    if (change.gaveUp) {
      error.textContent = "No longer followed here; its result will be in the machine's history.";
      return;
    }
    error.textContent = "";
    run.node.querySelector(".state").replaceWith(stateBadge(change.state));
    run.node.dataset.state = String(change.state);
    const lines = textLines(change.text);
    run.node.querySelector(".steps").replaceChildren(
      ...(lines.length ? lines : [change.state === 0 ? "Waiting to start…" : "Started…"]).map((line) =>
        element("li", {}, line)),
    );
    if (change.state >= 2 && this.selected === run.slave) {
      this.loadHistory(run.slave, null);
    }
  }
}

new FleetPage().start();
