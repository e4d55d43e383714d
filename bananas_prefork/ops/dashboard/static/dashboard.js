// Keeps a dashboard page current without reloading it: every few seconds the
// page asks the server for its live part again (the server renders and escapes
// it) and swaps it in, unless the reader is busy with it (typing, selecting,
// pointing at a table marked data-hold) or the tab is hidden.
(function () {
  "use strict";
  var body = document.body;
  var live = document.getElementById("live");
  var stateLabel = document.getElementById("live-state");
  var pauseButton = document.getElementById("pause");
  var every = parseFloat(body.getAttribute("data-refresh") || "0") * 1000;
  var paused = false;
  var inFlight = false;

  function show(text, kind) {
    stateLabel.textContent = text;
    stateLabel.className = "live-state " + kind;
  }

  function readerIsBusy() {
    var active = document.activeElement;
    if (active && active !== body && live.contains(active) &&
        /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(active.tagName)) {
      return true;
    }
    if (live.querySelector("[data-hold]:hover")) {
      return true;
    }
    var selection = window.getSelection();
    return !!(selection && !selection.isCollapsed && live.contains(selection.anchorNode));
  }

  function detailsState() {
    var state = {};
    live.querySelectorAll("details[id]").forEach(function (d) { state[d.id] = d.open; });
    return state;
  }

  function refresh() {
    if (paused || inFlight || document.hidden || readerIsBusy()) {
      return;
    }
    inFlight = true;
    fetch(window.location.href, {headers: {"X-Bananas-Partial": "1"},
                                 credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var open = detailsState();
        live.innerHTML = html;
        Object.keys(open).forEach(function (id) {
          var d = document.getElementById(id);
          if (d) { d.open = open[id]; }
        });
        show("live", "ok");
        body.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function (error) { show("update failed: " + error.message, "bad"); })
      .then(function () { inFlight = false; });
  }

  if (pauseButton) {
    pauseButton.addEventListener("click", function () {
      paused = !paused;
      pauseButton.textContent = paused ? "resume" : "pause";
      show(paused ? "paused" : "live", paused ? "paused" : "ok");
      if (!paused) { refresh(); }
    });
  }
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
  if (every > 0) {
    window.setInterval(refresh, every);
  }
})();
