// fleet dashboard: live updates by Server-Sent Events, and confirmed operator actions.
// Plain JavaScript, no dependencies. The server renders every fragment; this script only
// puts them in place (see fleetd/api/dashboard.py).
"use strict";
(function () {
  var body = document.body;
  var view = body.dataset.view;
  var revision = body.dataset.revision;
  var live = document.getElementById("live");

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function placeRow(op) {
    var old = document.getElementById(op.id);
    if (old) old.remove();
    if (op.html === null) return;
    var tbody = document.getElementById(op.table);
    if (!tbody) return;
    var row = fragment(op.html);
    var rows = tbody.children;
    for (var i = 0; i < rows.length; i++) {  // rows are sorted by data-key (failed first)
      if (rows[i].dataset.key > op.key) { tbody.insertBefore(row, rows[i]); return; }
    }
    tbody.appendChild(row);
  }

  function apply(ops) {
    ops.forEach(function (op) {
      if (op.op === "html") {
        var el = document.getElementById(op.id);
        if (el) el.replaceWith(fragment(op.html));
      } else if (op.op === "row") {
        placeRow(op);
      } else if (op.op === "refresh") {
        load(document.getElementById(op.id));
      }
    });
  }

  var loading = {};
  function load(pre) {  // status / journal through the fleet API (relayed to the unit's machine)
    if (!pre || loading[pre.id]) return;
    loading[pre.id] = true;
    fetch(pre.dataset.src, {headers: {"Accept": "text/plain"}}).then(function (r) {
      return r.text().then(function (text) {
        if (!r.ok) {
          try { text = JSON.parse(text).error.message; } catch (e) { /* keep the text */ }
          text = "(" + r.status + ") " + text;
        }
        pre.textContent = text || "(no output)";
      });
    }).catch(function (e) { pre.textContent = "cannot load: " + e; })
      .finally(function () { loading[pre.id] = false; });
  }

  function connect() {
    if (view === "services") { live.textContent = "static"; return; }
    var url = "/dashboard/events?view=" + encodeURIComponent(view) + "&since=" + encodeURIComponent(revision);
    if (body.dataset.unit) url += "&unit=" + encodeURIComponent(body.dataset.unit);
    var source = new EventSource(url);
    source.addEventListener("hello", function () { live.textContent = "live"; live.className = "live on"; });
    source.onmessage = function (e) {
      var msg = JSON.parse(e.data);
      revision = msg.revision;
      body.dataset.revision = revision;
      apply(msg.ops || []);
      body.dataset.updated = String(Date.now());
    };
    source.onerror = function () {
      live.textContent = "reconnecting"; live.className = "live off";
      source.close();
      setTimeout(connect, 1000);  // the next stream starts with what changed since `revision`
    };
  }

  function toast(text, bad) {
    var t = document.getElementById("toast");
    t.textContent = text; t.className = bad ? "bad" : ""; t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.hidden = true; }, 4000);
  }

  var WARNINGS = {destroy: "Its unit file is removed from the cluster.", drain: "Its units move to other machines."};

  document.addEventListener("click", function (e) {
    var button = e.target.closest("button[data-action]");
    if (!button) return;
    var verb = button.textContent.trim();
    var holder = button.closest("[data-target]");
    var question = verb.charAt(0).toUpperCase() + verb.slice(1) + " " + (holder ? holder.dataset.target : "") + "?";
    if (WARNINGS[verb]) question += " " + WARNINGS[verb];
    if (!window.confirm(question)) return;
    button.disabled = true;
    fetch(button.dataset.action, {method: "POST", headers: {"X-Fleet-Dashboard": "1"}})
      .then(function (r) {
        return r.json().then(function (data) {
          if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
          toast(button.textContent.trim() + ": done");
          if (verb === "destroy" && view === "unit") window.location.assign("/");
        });
      })
      .catch(function (err) { toast(String(err.message || err), true); button.disabled = false; });
  });

  ["unit-status", "unit-journal"].forEach(function (id) { load(document.getElementById(id)); });
  connect();
})();
