// cbexec dashboard: refreshes every [data-live] region from the server, every 2 s.
// The server renders and escapes each region's HTML; this script only swaps it in
// (innerHTML never runs scripts) and marks rows it had not seen. No libraries, no build.
"use strict";

(function () {
  var PERIOD_MS = 2000;
  var status = null;

  function setStatus(text, ok) {
    if (!status) { return; }
    status.textContent = text;
    status.className = ok ? "live" : "live off";
  }

  function keys(region) {
    var seen = {};
    region.querySelectorAll("[data-key]").forEach(function (row) {
      seen[row.getAttribute("data-key")] = true;
    });
    return seen;
  }

  function refresh(region) {
    var url = region.getAttribute("data-live");
    return fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "live" } })
      .then(function (response) {
        if (response.status === 401) { throw new Error("signed out"); }
        return response.text().then(function (text) {
          if (!response.ok && !text) { throw new Error("HTTP " + response.status); }
          return text;
        });
      })
      .then(function (text) {
        if (text === region.getAttribute("data-last")) { return; }
        var before = keys(region);
        var first = !region.hasAttribute("data-last");
        region.innerHTML = text;
        region.setAttribute("data-last", text);
        if (first) { return; }
        region.querySelectorAll("[data-key]").forEach(function (row) {
          if (!before[row.getAttribute("data-key")]) { row.classList.add("new"); }
        });
      });
  }

  function tick() {
    if (document.hidden) { return; }
    var regions = document.querySelectorAll("[data-live]");
    var work = [];
    regions.forEach(function (region) { work.push(refresh(region)); });
    Promise.all(work).then(
      function () { setStatus("live", true); },
      function (error) { setStatus(String(error.message || error), false); }
    );
  }

  document.addEventListener("DOMContentLoaded", function () {
    status = document.getElementById("live-status");
    var regions = document.querySelectorAll("[data-live]");
    if (!regions.length) {
      if (status) { status.hidden = true; }
      return;
    }
    // The first refresh records what the server rendered, so new rows are marked after it.
    regions.forEach(function (region) { region.setAttribute("data-last", region.innerHTML); });
    window.setInterval(tick, PERIOD_MS);
    document.addEventListener("visibilitychange", tick);
  });
})();
