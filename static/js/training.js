// Follows a training run: polls its progress (steps, loss, tokens/s, ETA), reloads when it ends.
(function () {
  "use strict";
  const root = document.getElementById("training-run");
  if (!root || root.dataset.finished === "1") return;
  const url = root.dataset.progressUrl;
  const $ = (id) => document.getElementById(id);
  const fixed = (value, digits) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((response) => response.json())
      .then((progress) => {
        $("run-step").textContent = progress.step;
        $("run-total").textContent = progress.total_steps;
        $("run-progress").max = progress.total_steps || 1;
        $("run-progress").value = progress.step;
        $("run-loss").textContent = fixed(progress.loss, 4);
        $("run-tps").textContent = fixed(progress.tokens_per_second, 0);
        $("run-eta").textContent = fixed(progress.eta_seconds, 0);
        $("run-tokens").textContent = progress.tokens_seen;
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
