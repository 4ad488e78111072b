/* painline live pages (no library): the triage queue and the call page follow /events.
 *
 * Events only say "something changed"; the page re-reads what it shows from the server, so a lost
 * event costs a late refresh at worst (both pages also refresh when the stream reconnects).
 * - queue: every flag or call event re-fetches the rows (same sort and filters as the page), except
 *   call.scored: that comes with every utterance of every live call, and re-fetching the whole queue
 *   on each would load the database for what its 30 s poll shows soon enough;
 * - call page: events naming this call (its stream's start and end, a score landing, its verdict,
 *   its flag) re-fetch its parts from /calls/<id>/live. While the call is live or its verdict
 *   pending it also polls: every 5 s while the event stream is down (nothing else would tell it),
 *   and 30 s after its last refresh while the stream is up, a fallback for an event lost on the way
 *   (pub/sub is at-most-once: a worker that could not reach Redis published nothing);
 * - both: relative times ("raised 3 min ago") are kept current; a new flag while the tab is not in
 *   focus counts in the tab title, "(2) New flags — ...", cleared when the tab gets focus; when the
 *   server stops or the stream drops the status says live updates are paused, not on.
 */
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var body = document.getElementById("queue-rows");
  var callId = status ? status.getAttribute("data-call-id") : null;
  var eventsUrl = body ? body.getAttribute("data-events") : (status ? status.getAttribute("data-events") : null);
  function say(text) { if (status) { status.textContent = text; } }

  /* -- relative times: the same rule as dashboard.formatting.ago ------------------------------ */
  function ago(iso, now) {
    var then = Date.parse(iso);
    if (isNaN(then)) { return null; }
    var seconds = Math.max(0, Math.floor((now - then) / 1000));
    if (seconds < 60) { return "just now"; }
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) { return minutes + " min ago"; }
    var hours = Math.floor(minutes / 60);
    if (hours < 24) { return hours + " h " + (minutes % 60 < 10 ? "0" : "") + (minutes % 60) + " min ago"; }
    return Math.floor(hours / 24) + " d ago";
  }
  function tick() {
    var now = Date.now();
    var times = document.querySelectorAll("time.ago[datetime]");
    for (var i = 0; i < times.length; i++) {
      var text = ago(times[i].getAttribute("datetime"), now);
      if (text === null) { continue; }
      var prefix = times[i].getAttribute("data-prefix");
      times[i].textContent = prefix ? prefix + " " + text : text;
    }
  }
  window.painlineAgo = ago;  /* for the browser test that pins it to the server's rule */
  tick();
  window.setInterval(tick, 15000);

  if (!eventsUrl) { return; }
  if (!window.EventSource || !window.fetch) { say("Live updates are not supported here: reload to refresh."); return; }

  /* -- the tab title alert --------------------------------------------------------------------- */
  var baseTitle = document.title, unseen = 0, attentive = document.hasFocus();
  function showTitle() {
    document.title = unseen ? "(" + unseen + ") New flag" + (unseen > 1 ? "s" : "") + " — " + baseTitle : baseTitle;
  }
  function seen() { attentive = true; unseen = 0; showTitle(); }
  window.addEventListener("focus", seen);
  window.addEventListener("blur", function () { attentive = false; });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && document.hasFocus()) { seen(); } else { attentive = false; }
  });
  function alertNewFlag() { if (!attentive) { unseen += 1; showTitle(); } }

  /* -- fetching a fragment --------------------------------------------------------------------- */
  function load(url) {
    return fetch(url, { credentials: "same-origin", headers: { "X-Painline-Background": "1" } })
      .then(function (res) {
        if (res.redirected || res.status === 401 || res.status === 403) { window.location.reload(); throw new Error("signed out"); }
        if (!res.ok) { throw new Error("HTTP " + res.status); }
        return res.text();
      });
  }
  function serial(update) {  /* one refresh at a time; a request during one runs once after it */
    var busy = false, again = false;
    function run() {
      if (busy) { again = true; return; }
      busy = true;
      update()
        .catch(function (err) { if (err.message !== "signed out") { say("Could not refresh (" + err.message + "); retrying on the next update."); } })
        .then(function () { busy = false; if (again) { again = false; run(); } });
    }
    return run;
  }

  /* -- the queue ------------------------------------------------------------------------------- */
  var highlight = null;
  var refreshQueue = body ? serial(function () {
    var focusedRow = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tr") : null;
    var focusedCall = focusedRow && body.contains(focusedRow) ? focusedRow.getAttribute("data-call-id") : null;
    return load(body.getAttribute("data-src")).then(function (html) {
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
      tick();
    });
  }) : null;

  /* -- the call page --------------------------------------------------------------------------- */
  function editing(section) {
    var note = section.querySelector("textarea");
    return section.contains(document.activeElement) || (note && note.value) || section.querySelector("input[type=radio]:checked");
  }
  var streaming = false, lastCallRefresh = Date.now();
  var refreshCall = callId ? serial(function () {
    lastCallRefresh = Date.now();
    return load(status.getAttribute("data-src")).then(function (html) {
      var fresh = new DOMParser().parseFromString(html, "text/html");
      var parts = document.querySelectorAll("[data-live-part][id]");
      for (var i = 0; i < parts.length; i++) {
        var next = fresh.getElementById(parts[i].id);
        if (next) { parts[i].replaceWith(document.importNode(next, true)); }
      }
      var flag = document.getElementById("call-flag"), nextFlag = fresh.getElementById("call-flag");
      if (flag && nextFlag && flag.getAttribute("data-flag-state") !== nextFlag.getAttribute("data-flag-state") && !editing(flag)) {
        flag.replaceWith(document.importNode(nextFlag, true));  /* raised, acknowledged or resolved meanwhile */
      }
      var nextStatus = fresh.getElementById("live-status");
      if (nextStatus) { status.setAttribute("data-poll", nextStatus.getAttribute("data-poll")); }
      tick();
    });
  }) : null;
  if (refreshCall) {
    window.setInterval(function () {
      if (status.getAttribute("data-poll") !== "yes") { return; }
      if (!streaming || Date.now() - lastCallRefresh >= 30000) { refreshCall(); }
    }, 5000);
  }
  function refresh() { if (refreshQueue) { refreshQueue(); } if (refreshCall) { refreshCall(); } }

  /* -- the event stream ------------------------------------------------------------------------ */
  var opened = false;
  var source = new EventSource(eventsUrl);
  function parse(event) { try { return JSON.parse(event.data) || {}; } catch (e) { return {}; } }
  source.addEventListener("open", function () {
    streaming = true;
    say("Live updates on.");
    if (opened) { refresh(); }  /* reconnected: catch up on anything missed */
    opened = true;
  });
  source.addEventListener("flag", function (event) {
    var flag = parse(event);
    if (flag.event === "flag.raised" || flag.event === "flag.upgraded") {
      alertNewFlag();
      say(flag.event === "flag.upgraded" ? "Flag upgraded" + (flag.level ? ": " + flag.level : "") + "." :
          "New flag" + (flag.level ? ": " + flag.level : "") + ".");
    }
    if (refreshQueue) { highlight = flag.call_id || null; refreshQueue(); }
    if (refreshCall && String(flag.call_id) === callId) { refreshCall(); }
  });
  source.addEventListener("call", function (event) {
    var call = parse(event);
    if (refreshQueue && call.event !== "call.scored") { refreshQueue(); }
    if (refreshCall && String(call.call_id) === callId) { refreshCall(); }
  });
  function paused() { streaming = false; say("Live updates paused — reconnecting…"); }
  source.addEventListener("closing", paused);
  source.addEventListener("error", paused);
  if (refreshQueue) { window.setInterval(refreshQueue, 30000); }  /* speech heard on live calls changes without events */
}());
