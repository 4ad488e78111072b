/* painline live queue: on each flag event from /events, re-fetch the queue rows (no library). */
(function () {
  "use strict";
  var body = document.getElementById("queue-rows");
  var status = document.getElementById("live-status");
  function say(text) { if (status) { status.textContent = text; } }
  if (!body) { return; }
  if (!window.EventSource || !window.fetch) { say("Live updates are not supported here: reload to refresh."); return; }
  var busy = false, again = false, highlight = null;

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var focusedRow = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tr") : null;
    var focusedCall = focusedRow && body.contains(focusedRow) ? focusedRow.getAttribute("data-call-id") : null;
    fetch(body.getAttribute("data-src"), { credentials: "same-origin", headers: { "X-Painline-Background": "1" } })
      .then(function (res) {
        if (res.redirected || res.status === 401 || res.status === 403) { window.location.reload(); throw new Error("signed out"); }
        if (!res.ok) { throw new Error("HTTP " + res.status); }
        return res.text();
      })
      .then(function (html) {
        body.innerHTML = html;
        if (highlight) {
          var fresh = body.querySelector('tr[data-call-id="' + highlight + '"]');
          if (fresh) { fresh.classList.add("fresh"); }
          highlight = null;
        }
        if (focusedCall) {
          var link = body.querySelector('tr[data-call-id="' + focusedCall + '"] a');
          if (link) { link.focus(); }
        }
      })
      .catch(function (err) { if (err.message !== "signed out") { say("Could not refresh the queue (" + err.message + "); retrying on the next update."); } })
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }

  var opened = false;
  var source = new EventSource(body.getAttribute("data-events"));
  source.addEventListener("open", function () {
    say("Live updates on.");
    if (opened) { refresh(); }  /* reconnected: catch up on anything missed */
    opened = true;
  });
  source.addEventListener("flag", function (event) {
    var flag = {};
    try { flag = JSON.parse(event.data); } catch (e) { /* refresh anyway */ }
    highlight = flag.call_id || null;
    say((flag.event === "flag.upgraded" ? "Flag upgraded" : "New flag") + (flag.level ? ": " + flag.level : "") +
        " (" + new Date().toLocaleTimeString() + ")");
    refresh();
  });
  source.addEventListener("error", function () { say("Live updates interrupted; reconnecting…"); });
  window.setInterval(refresh, 30000);  /* speech heard on live calls changes without flag events */
}());
