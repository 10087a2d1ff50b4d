// Draws a consultation and keeps it live. Model output and abstracts are only ever set as
// textContent: nothing from a model or an abstract is parsed as HTML.
(function () {
  "use strict";
  const root = document.getElementById("consultation");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const answer = $("answer");
  let passages = {};
  let streamedText = answer.textContent;
  let source = null;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function setStatus(snapshot) {
    const badge = $("status-badge");
    badge.textContent = snapshot.status_label;
    badge.className = "badge " + snapshot.status;
    const error = $("error");
    error.textContent = snapshot.error_message || "";
    error.hidden = !snapshot.error_message;
    const retry = $("retry-form");
    if (retry) retry.hidden = !(snapshot.status === "failed" || snapshot.status === "cancelled");
    const cancel = $("cancel-form");
    if (cancel) cancel.hidden = snapshot.finished;
    const feedback = $("feedback-card");
    if (feedback) feedback.hidden = snapshot.status !== "complete";
    if (snapshot.finished) $("stage").textContent = "";
    const suggest = $("suggest-deep");
    if (suggest) suggest.hidden = !(snapshot.routing && snapshot.routing.suggested_deep);
    if (snapshot.time_to_first_token_ms) {
      $("ttft").textContent = "first token after " + snapshot.time_to_first_token_ms + " ms";
    }
  }

  function showPassage(number) {
    const passage = passages[number];
    if (!passage) return;
    $("passage-view-title").textContent = "[" + number + "] " + passage.title + " (PMID " + passage.pmid + ")";
    $("passage-view-text").textContent = passage.text;
    $("passage-view").hidden = false;
    document.querySelectorAll(".evidence li").forEach((li) => li.classList.toggle("highlight", li.dataset.number === String(number)));
  }

  function renderPassages(list) {
    const ol = $("evidence");
    ol.replaceChildren();
    passages = {};
    list.forEach((p) => {
      passages[p.number] = p;
      const li = el("li", { "data-number": String(p.number), id: "passage-" + p.number });
      li.append(el("span", { class: "num" }, "[" + p.number + "]"), " ");
      const link = el("a", { href: p.url, target: "_blank", rel: "noopener noreferrer" }, p.title || ("PMID " + p.pmid));
      li.append(link);
      const meta = [p.journal, p.year, (p.publication_types || []).join(", "), "PMID " + p.pmid].filter(Boolean).join(" · ");
      li.append(el("div", { class: "muted small" }, meta));
      const show = el("button", { type: "button", class: "link show-passage small" }, "show passage");
      show.addEventListener("click", () => showPassage(p.number));
      li.append(" ", show);
      if (p.retracted) li.append(el("div", { class: "retracted" }, "⚠ Retracted publication: do not rely on it."));
      const found = Object.entries(p.stages || {}).map(([stage, rank]) => stage + " #" + rank).join(", ");
      if (found) li.append(el("div", { class: "muted small" }, "found by " + found));
      ol.append(li);
    });
    $("evidence-empty").hidden = list.length > 0;
  }

  function renderClaims(snapshot) {
    if (snapshot.abstained) {
      $("abstained").hidden = false;
    }
    if (!snapshot.claims || snapshot.claims.length === 0) {
      answer.textContent = snapshot.abstained ? "" : snapshot.answer_text;
      return;
    }
    if (snapshot.abstained) {
      answer.replaceChildren(el("p", { class: "muted small" }, "The model's draft, withheld from use:"));
    } else {
      answer.replaceChildren();
    }
    const container = el("div", { class: snapshot.abstained ? "draft" : "" });
    snapshot.claims.forEach((claim) => {
      const span = el("span", { class: "claim" + (claim.supported === false ? " unsupported" : "") });
      span.append(document.createTextNode(claim.text.replace(/\s*\[\d+(?:\s*,\s*\d+)*\]/g, "") + " "));
      (claim.citations || []).forEach((n) => {
        const button = el("button", { type: "button", class: "cite", "data-number": String(n),
          title: "Show passage " + n }, "[" + n + "]");
        button.addEventListener("click", () => showPassage(n));
        span.append(button);
      });
      if (claim.supported === false) {
        span.append(el("span", { class: "flag" }, claim.citations.length ? " not supported by the cited passage" : " no citation"));
      }
      span.append(" ");
      container.append(span);
    });
    answer.append(container);
    const meta = [];
    if (snapshot.support_rate !== null) meta.push(Math.round(snapshot.support_rate * 100) + "% of claims supported");
    if (snapshot.removed_citations) meta.push(snapshot.removed_citations + " citation(s) to passages that were not given removed");
    if (snapshot.routing && snapshot.routing.model) meta.push("model " + snapshot.routing.model.split("/").pop());
    if (snapshot.completion_tokens) meta.push(snapshot.prompt_tokens + "+" + snapshot.completion_tokens + " tokens");
    if (snapshot.total_ms) meta.push((snapshot.total_ms / 1000).toFixed(1) + " s");
    $("answer-meta").textContent = meta.join(" · ");
  }

  function renderSteps(snapshot) {
    const ol = $("steps");
    if (!ol) return;
    ol.replaceChildren();
    let done = 0;
    (snapshot.steps || []).forEach((step) => {
      if (step.status === "done" || step.status === "skipped") done += 1;
      const li = el("li", { class: "step " + step.status });
      li.append(el("span", { class: "badge " + step.status }, step.status), " ", el("span", {}, step.title));
      if (step.elapsed_s !== null) li.append(el("span", { class: "muted small" }, " " + step.elapsed_s + " s"));
      ol.append(li);
    });
    const progress = $("progress");
    progress.max = Math.max(6, (snapshot.steps || []).length);
    progress.value = snapshot.finished ? progress.max : done;
  }

  function render(snapshot) {
    setStatus(snapshot);
    renderPassages(snapshot.passages || []);
    renderSteps(snapshot);
    if (snapshot.finished) {
      renderClaims(snapshot);
    } else {
      streamedText = snapshot.answer_text || "";
      answer.textContent = streamedText;
    }
  }

  function connect() {
    source = new EventSource(root.dataset.eventsUrl);
    source.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
    source.addEventListener("passages", (e) => renderPassages(JSON.parse(e.data).passages || []));
    source.addEventListener("stage", (e) => { $("stage").textContent = JSON.parse(e.data).stage + "…"; });
    source.addEventListener("first_token", (e) => { $("ttft").textContent = "first token after " + JSON.parse(e.data).ms + " ms"; });
    source.addEventListener("token", (e) => {
      streamedText += JSON.parse(e.data).text;
      answer.textContent = streamedText;
      answer.classList.add("streaming");
    });
    source.addEventListener("final", (e) => {
      answer.classList.remove("streaming");
      render(JSON.parse(e.data));
      source.close();
    });
    source.onerror = () => {
      // The server closes the stream after "final"; a real drop reconnects by itself, and the
      // snapshot that comes first on reconnect carries everything saved so far.
      if (source.readyState === EventSource.CLOSED) return;
    };
  }

  function poll() {
    fetch(root.dataset.snapshotUrl, { headers: { Accept: "application/json" } })
      .then((response) => response.json())
      .then((snapshot) => {
        render(snapshot);
        if (!snapshot.finished) setTimeout(poll, 1000);
      })
      .catch(() => setTimeout(poll, 3000));
  }

  $("passage-view-close").addEventListener("click", () => { $("passage-view").hidden = true; });
  const initial = JSON.parse(document.getElementById("initial-snapshot").textContent);
  render(initial);
  if (!initial.finished) {
    if (root.dataset.mode === "quick") connect(); else poll();
  }
})();
