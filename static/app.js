// health-monitor dashboard: live updates from the event stream (GET /api/v1/events) and the
// actions (ack, silence) with the HTTP token. The pages are complete without this script; it
// only keeps them current and adds the buttons' behaviour. Every value from the daemon is put
// in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "health-monitor-token";
  const body = document.body;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const ICONS = { healthy: "✓", unhealthy: "!", critical: "✖", degraded: "◐", unknown: "?" };

  function flash(text, isError) {
    const out = $("#flash");
    if (!out) return;
    out.textContent = text;
    out.classList.toggle("error", !!isError);
  }

  // --- the token: typed once, kept in this tab's session storage, sent as a bearer header ---
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }
  const form = $("#token-form");
  if (form) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("#token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
      $("#token").value = "";
      showMode();
      flash(value ? "token kept for this tab" : "token forgotten", false);
    });
  }
  function showMode() {
    const mode = $("#mode");
    if (!mode || body.dataset.writes !== "enabled") return;
    mode.textContent = token() ? "actions enabled (token kept in this tab)" : "actions need the token";
  }
  showMode();

  async function call(method, url, payload) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(url, {
        method,
        headers,
        body: payload === undefined ? undefined : JSON.stringify(payload),
        credentials: "omit",
      });
    } catch (e) {
      throw new Error("the daemon did not answer: " + e.message);
    }
    let data = {};
    try {
      data = await res.json();
    } catch (e) {
      data = {};
    }
    if (!res.ok) {
      const why = data.error || res.statusText;
      throw new Error("refused (" + res.status + "): " + why);
    }
    return data;
  }

  // --- rendering pieces, as text ---
  function statusCell(td, status) {
    td.className = "status status-" + status;
    td.textContent = "";
    const icon = document.createElement("span");
    icon.className = "icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = ICONS[status] || "?";
    td.append(icon, " " + status);
  }

  function age(since) {
    const s = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h";
    return Math.floor(s / 86400) + " d";
  }

  function resourceHref(type, id) {
    return "/resource/" + type + "/" + encodeURIComponent(id).replace(/%2F/g, "/");
  }

  function setOverall(status) {
    const el = $("#overall");
    if (!el || !status) return;
    el.dataset.status = status;
    el.className = "status status-" + status;
    el.textContent = "";
    const icon = document.createElement("span");
    icon.className = "icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = ICONS[status] || "?";
    el.append(icon, " " + status);
    if (body.dataset.page === "overview") document.title = "health-monitor: " + status;
  }

  const KIND = {
    cpu: ["system", "System"], memory: ["system", "System"], filesystem: ["system", "System"],
    network: ["network", "Network"], agent: ["agent", "Agents"], workspace: ["workspace", "Workspaces"],
    database: ["database", "Databases"], check: ["check", "Checks"],
  };

  function findRow(type, id) {
    return $$("tr.resource").find((tr) => tr.dataset.type === type && tr.dataset.id === id);
  }

  function applyResource(r) {
    if (body.dataset.page === "resource") {
      if (r.type === body.dataset.type && r.id === body.dataset.id) {
        const el = $("h1 .status");
        if (el) {
          el.dataset.status = r.status;
          statusCell(el, r.status);
        }
      }
      return;
    }
    let tr = findRow(r.type, r.id);
    if (!tr) {
      const [kind, title] = KIND[r.type] || [r.type, r.type];
      let section = $('section.group[data-kind="' + kind + '"]');
      if (!section) {
        section = document.createElement("section");
        section.className = "group";
        section.dataset.kind = kind;
        const h2 = document.createElement("h2");
        h2.textContent = title;
        const table = document.createElement("table");
        table.className = "resources";
        table.append(document.createElement("tbody"));
        section.append(h2, table);
        const silences = $("#silences-section");
        if (silences) silences.before(section);
        else $("#overview").append(section);
      }
      tr = document.createElement("tr");
      tr.className = "resource";
      tr.dataset.type = r.type;
      tr.dataset.id = r.id;
      const status = document.createElement("td");
      const name = document.createElement("td");
      name.className = "name";
      const a = document.createElement("a");
      a.href = resourceHref(r.type, r.id);
      a.textContent = r.id;
      name.append(a);
      const values = document.createElement("td");
      values.className = "values";
      const spark = document.createElement("td");
      spark.className = "spark";
      tr.append(status, name, values, spark);
      $("tbody", section).append(tr);
    }
    tr.dataset.status = r.status;
    statusCell(tr.cells[0], r.status);
    tr.cells[2].textContent = r.values;
  }

  function removeResource(key) {
    const slash = key.indexOf("/");
    const tr = findRow(key.slice(0, slash), key.slice(slash + 1));
    if (tr) tr.remove();
  }

  function alertRow(a) {
    const tr = document.createElement("tr");
    tr.className = "alert";
    tr.dataset.id = a.id;
    const cells = [];
    for (let i = 0; i < 7; i++) cells.push(document.createElement("td"));
    const link = document.createElement("a");
    link.href = resourceHref(a.type, a.resource);
    link.textContent = a.type + "/" + a.resource;
    cells[1].append(link);
    cells[2].textContent = a.metric;
    cells[3].className = "message";
    cells[3].textContent = a.message;
    const time = document.createElement("time");
    time.dateTime = a.since;
    time.textContent = age(a.since);
    cells[4].append(time);
    cells[5].className = "state";
    cells[6].className = "actions";
    if (body.dataset.writes === "enabled") {
      const ack = document.createElement("button");
      ack.className = "ack";
      ack.dataset.id = a.id;
      ack.textContent = "ack";
      const silence = document.createElement("button");
      silence.className = "silence";
      silence.textContent = "silence";
      cells[6].append(ack, " ", silence);
    }
    tr.append(...cells);
    updateAlertRow(tr, a);
    return tr;
  }

  function updateAlertRow(tr, a) {
    tr.dataset.severity = a.severity;
    tr.dataset.type = a.type;
    tr.dataset.resource = a.resource;
    tr.dataset.metric = a.metric;
    if (a.acked !== undefined) tr.dataset.acked = String(!!a.acked);
    if (a.silenced !== undefined) tr.dataset.silenced = String(!!a.silenced);
    if (!tr.dataset.silenced) tr.dataset.silenced = "false";
    statusCell(tr.cells[0], a.severity);
    tr.cells[3].textContent = a.message;
    showAlertState(tr);
  }

  function showAlertState(tr) {
    const words = [];
    if (tr.dataset.acked === "true") words.push("acknowledged");
    if (tr.dataset.silenced === "true") words.push("silenced");
    tr.cells[5].textContent = words.join(", ");
  }

  function alertsBody() {
    return $("#alerts tbody");
  }

  function countAlerts() {
    const n = $$("#alerts tr.alert").length;
    const count = $("#alerts-section .count");
    if (count) count.textContent = "(" + n + ")";
    const none = $("#no-alerts");
    if (none) none.hidden = n > 0;
  }

  function setAlerts(list) {
    const tbody = alertsBody();
    if (!tbody) return;
    const rows = list.map((a) => {
      const old = $$("tr.alert", tbody).find((tr) => tr.dataset.id === String(a.id));
      if (old) {
        updateAlertRow(old, a);
        return old;
      }
      return alertRow(a);
    });
    tbody.replaceChildren(...rows);
    countAlerts();
  }

  const RANK = { unknown: 0, healthy: 1, degraded: 2, unhealthy: 3, critical: 4 };

  function applyAlertEvent(e) {
    // The resource's row is at least as bad as an alert that just opened on it; the next
    // cycle brings its exact status.
    if (e.event !== "resolved") {
      const row = findRow(e.type, e.resource);
      if (row && (RANK[e.severity] || 0) > (RANK[row.dataset.status] || 0)) {
        row.dataset.status = e.severity;
        statusCell(row.cells[0], e.severity);
      }
    }
    const tbody = alertsBody();
    if (!tbody || e.id === null || e.id === undefined) return;
    const tr = $$("tr.alert", tbody).find((row) => row.dataset.id === String(e.id));
    if (e.event === "resolved") {
      if (tr) tr.remove();
    } else if (tr) {
      updateAlertRow(tr, e);
    } else {
      tbody.prepend(alertRow(Object.assign({ silenced: false }, e)));
    }
    countAlerts();
  }

  // --- the event stream ---
  function connect() {
    if (!window.EventSource) return;
    const live = $("#live");
    const source = new EventSource("/api/v1/events");
    source.addEventListener("open", () => {
      if (live) {
        live.textContent = "live";
        live.classList.add("on");
      }
    });
    source.addEventListener("error", () => {
      // EventSource reconnects by itself (the stream asks for 2 s).
      if (live) {
        live.textContent = "reconnecting";
        live.classList.remove("on");
      }
    });
    source.addEventListener("state", (m) => {
      const s = JSON.parse(m.data);
      setOverall(s.overall);
      Object.values(s.resources || {}).forEach(applyResource);
      if (body.dataset.page === "overview") {
        const known = new Set(Object.keys(s.resources || {}));
        $$("tr.resource").forEach((tr) => {
          if (!known.has(tr.dataset.type + "/" + tr.dataset.id)) tr.remove();
        });
      }
      setAlerts(s.alerts || []);
      setSilences(s.silences || []);
    });
    source.addEventListener("cycle", (m) => {
      const d = JSON.parse(m.data);
      setOverall(d.overall);
      (d.changed || []).forEach(applyResource);
      if (body.dataset.page === "overview") (d.removed || []).forEach(removeResource);
      if (d.alerts) setAlerts(d.alerts);
      if (d.silences) setSilences(d.silences);
    });
    source.addEventListener("alert", (m) => applyAlertEvent(JSON.parse(m.data)));
    source.addEventListener("resync", () => {
      source.close();
      connect();
    });
  }
  connect();

  // Ages tick on their own.
  setInterval(() => {
    $$("#alerts time").forEach((t) => {
      if (t.dateTime) t.textContent = age(t.dateTime);
    });
  }, 5000);

  // A resource page's charts are redrawn by the server: fetched again once a minute (the
  // rollups' resolution), its <main> swapped in.
  if (body.dataset.page === "resource") {
    setInterval(async () => {
      try {
        const res = await fetch(location.href, { credentials: "omit" });
        if (!res.ok) return;
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const fresh = doc.querySelector("#resource");
        if (fresh) $("#resource").replaceWith(document.importNode(fresh, true));
      } catch (e) {
        /* the stream's indicator says when the daemon is away */
      }
    }, 60000);
  }

  // --- actions ---
  document.addEventListener("click", async (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    const row = button.closest("tr");
    try {
      if (button.classList.contains("ack")) {
        const id = button.dataset.id || row.dataset.id;
        await call("POST", "/api/v1/alerts/" + encodeURIComponent(id) + "/ack");
        row.dataset.acked = "true";
        showAlertState(row);
        flash("acknowledged alert #" + id, false);
      } else if (button.classList.contains("silence")) {
        const select = $("#silence-duration");
        const duration = select ? Number(select.value) : 3600;
        const result = await call("POST", "/api/v1/silences", {
          resource_type: row.dataset.type,
          resource_id: row.dataset.resource,
          metric: row.dataset.metric,
          duration_secs: duration,
        });
        row.dataset.silenced = "true";
        showAlertState(row);
        addSilenceRow(result.silence);
        flash("silenced " + row.dataset.type + "/" + row.dataset.resource + " " + row.dataset.metric, false);
      } else if (button.classList.contains("unsilence")) {
        const url = "/api/v1/silences/" + row.dataset.type + "/" +
          encodeURIComponent(row.dataset.id).replace(/%2F/g, "/") +
          (row.dataset.metric ? "?metric=" + encodeURIComponent(row.dataset.metric) : "");
        await call("DELETE", url);
        row.remove();
        countSilences();
        $$("#alerts tr.alert").forEach((tr) => {
          if (tr.dataset.type === row.dataset.type && tr.dataset.resource === row.dataset.id &&
              (!row.dataset.metric || tr.dataset.metric === row.dataset.metric)) {
            tr.dataset.silenced = "false";
            showAlertState(tr);
          }
        });
        flash("unsilenced " + row.dataset.type + "/" + row.dataset.id, false);
      }
    } catch (err) {
      flash(err.message + (token() ? "" : " (no token typed)"), true);
    }
  });

  function countSilences() {
    const count = $("#silences-section .count");
    if (count) count.textContent = "(" + $$("#silences tr.silence").length + ")";
  }

  // The silences in force, as the stream lists them ({type, id, metric, until, comment}).
  function setSilences(list) {
    const tbody = $("#silences tbody");
    if (!tbody) return;
    tbody.replaceChildren();
    list.forEach((s) =>
      addSilenceRow({
        resource_type: s.type,
        resource_id: s.id,
        metric: s.metric,
        expires_at: s.until,
        comment: s.comment,
      })
    );
    countSilences();
  }

  function addSilenceRow(s) {
    const tbody = $("#silences tbody");
    if (!tbody || !s) return;
    const metric = s.metric || "";
    $$("tr.silence", tbody).forEach((tr) => {
      if (tr.dataset.type === s.resource_type && tr.dataset.id === s.resource_id && tr.dataset.metric === metric) tr.remove();
    });
    const tr = document.createElement("tr");
    tr.className = "silence";
    tr.dataset.type = s.resource_type;
    tr.dataset.id = s.resource_id;
    tr.dataset.metric = metric;
    const cells = [];
    for (let i = 0; i < 5; i++) cells.push(document.createElement("td"));
    cells[0].textContent = s.resource_type + "/" + s.resource_id;
    cells[1].textContent = metric || "every alert";
    const time = document.createElement("time");
    time.dateTime = s.expires_at;
    time.textContent = s.expires_at;
    cells[2].append(time);
    cells[3].textContent = s.comment || "";
    if (body.dataset.writes === "enabled") {
      const b = document.createElement("button");
      b.className = "unsilence";
      b.textContent = "remove";
      cells[4].append(b);
    }
    tr.append(...cells);
    tbody.append(tr);
    countSilences();
  }
})();
