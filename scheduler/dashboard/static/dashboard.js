// The dashboard's only script: regions marked data-live are fetched again every few
// seconds (an HTML fragment rendered by the server, escaped there), unless the page is
// hidden, the viewer paused it, or focus is inside the region (a keyboard user's place
// is kept). Destructive buttons ask first. Without script, the pages work as they are.
(function () {
  "use strict";
  var PERIOD = 5000;

  function setUp(region) {
    var paused = false;
    var status = document.createElement("p");
    status.className = "live-status";
    var toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "button";
    toggle.setAttribute("aria-pressed", "false");
    toggle.textContent = "Pause live refresh";
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.setAttribute("aria-pressed", paused ? "true" : "false");
      toggle.textContent = paused ? "Resume live refresh" : "Pause live refresh";
    });
    status.appendChild(toggle);
    region.parentNode.insertBefore(status, region);

    function refresh() {
      if (paused || document.hidden || region.contains(document.activeElement)) {
        return;
      }
      fetch(region.getAttribute("data-live"), { credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401) {
            paused = true;
            toggle.textContent = "Session ended: reload to log in";
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html !== null && !region.contains(document.activeElement)) {
            region.innerHTML = html;
          }
        })
        .catch(function () { /* the next period tries again */ });
    }
    window.setInterval(refresh, PERIOD);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-live]"), setUp);
    Array.prototype.forEach.call(document.querySelectorAll("button[data-confirm]"), function (button) {
      button.form.addEventListener("submit", function (event) {
        if (!window.confirm(button.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
  });
})();
