// Review pages: show only the parts of the decision form that apply, and poll export progress.
(function () {
  "use strict";

  var form = document.getElementById("decision-form");
  if (form) {
    var sync = function () {
      var chosen = form.querySelector("input[name=kind]:checked");
      var kind = chosen ? chosen.value : "";
      form.querySelectorAll(".correct-only").forEach(function (el) { el.hidden = kind !== "correct"; });
      form.querySelectorAll(".reject-only").forEach(function (el) { el.hidden = kind !== "reject"; });
    };
    form.addEventListener("change", sync);
    sync();
  }

  var rows = document.querySelectorAll(".export-row");
  rows.forEach(function (row) {
    var status = row.getAttribute("data-status");
    if (status !== "pending" && status !== "running") { return; }
    var url = row.getAttribute("data-status-url");
    var timer = setInterval(function () {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.json(); })
        .then(function (data) {
          row.querySelector("progress").value = data.progress;
          row.querySelector(".export-status").textContent = data.status_label;
          if (data.status === "done" || data.status === "failed") {
            clearInterval(timer);
            window.location.reload();
          }
        })
        .catch(function () { clearInterval(timer); });
    }, 2000);
  });
})();
