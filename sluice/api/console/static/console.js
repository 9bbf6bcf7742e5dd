// The console's own script (no inline script anywhere: the CSP allows only these files).
// The overview's live part comes by Server-Sent Events from one shared poller on the
// server; each message is the part's new HTML, rendered and escaped by the server.
(function () {
  "use strict";
  function connect() {
    var target = document.getElementById("live");
    if (!target || !target.dataset.stream || !window.EventSource) {
      return;
    }
    var source = new EventSource(target.dataset.stream);
    source.addEventListener("open", function () {
      target.dataset.connected = "true";
    });
    source.addEventListener("live", function (event) {
      target.innerHTML = event.data;
      target.dataset.updated = String(Date.now());
    });
    source.addEventListener("error", function () {
      target.dataset.connected = "false";
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
})();
