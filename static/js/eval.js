// Follows a running evaluation: polls its progress and reloads the page when it finishes.
(function () {
  "use strict";
  const root = document.getElementById("eval-run");
  if (!root || root.dataset.finished === "1") return;
  const url = root.dataset.progressUrl;
  const $ = (id) => document.getElementById(id);

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((response) => response.json())
      .then((progress) => {
        $("run-done").textContent = progress.done;
        $("run-total").textContent = progress.total;
        $("run-progress").max = progress.total || 1;
        $("run-progress").value = progress.done;
        $("run-status").textContent = progress.status_label;
        $("run-status").className = "badge " + progress.status;
        if (progress.finished) {
          window.location.reload();
          return;
        }
        window.setTimeout(poll, 2000);
      })
      .catch(() => window.setTimeout(poll, 5000));
  }
  window.setTimeout(poll, 1500);
})();
