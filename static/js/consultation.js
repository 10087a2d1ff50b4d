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

  // The display status (clinic/status.py) is the one truth: badge, detail, evidence note.
  const LIVE_STATES = { retrieving: ["Searching the literature", "running"], writing: ["Writing", "running"],
    checking: ["Writing", "running"], generating: ["Writing", "running"],
    verifying: ["Checking the citations", "running"] };

  function setLiveBadge(stage) {
    const state = LIVE_STATES[stage];
    if (!state) return;
    $("status-badge").textContent = state[0];
    $("status-badge").className = "badge " + state[1];
    const empty = $("evidence-empty");
    if (empty && stage !== "retrieving") empty.textContent = "No passages were found.";
  }

  function setStatus(snapshot) {
    const badge = $("status-badge");
    const display = snapshot.display || { label: snapshot.status_label, badge: snapshot.status, detail: "", state: snapshot.status };
    badge.textContent = display.label;
    badge.className = "badge " + display.badge;
    badge.dataset.state = display.state;
    const empty = $("evidence-empty");
    if (empty) {
      empty.textContent = display.state === "retrieving" ? "Searching the literature…"
        : display.state === "waiting" ? "The literature search has not started yet."
        : display.state === "failed" || display.state === "cancelled" ? "No passages were found before it stopped."
        : display.state === "generating" || display.state === "verifying" ? "No passages were found."
        : "No passages were used.";
    }
    const error = $("error");
    error.textContent = snapshot.error_message || "";
    error.hidden = !snapshot.error_message;
    const retry = $("retry-form");
    if (retry) retry.hidden = !(snapshot.status === "failed" || snapshot.status === "cancelled");
    const cancel = $("cancel-form");
    if (cancel) cancel.hidden = snapshot.finished;
    const feedback = $("feedback-card");
    if (feedback) feedback.hidden = snapshot.status !== "complete";
    // Running: what is under way (or the queue); finished: why an answer stopped early, or
    // (cancelled) that the question is kept and how to ask again.
    if (!snapshot.finished) $("stage").textContent = display.detail || "";
    else $("stage").textContent = display.stopped_by || display.state === "cancelled" ? display.detail : "";
    const suggest = $("suggest-deep");
    if (suggest) suggest.hidden = !((snapshot.routing && snapshot.routing.suggested_deep) || snapshot.withheld);
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
      if (p.retracted) {
        const note = el("div", { class: "retracted" }, "Retracted");
        if (p.retraction_notice_pmid) {
          note.append(" · retraction notice ", el("a", { href: p.retraction_notice_url, target: "_blank",
            rel: "noopener noreferrer" }, "PMID " + p.retraction_notice_pmid));
        }
        note.append(el("span", { class: "muted small" }, " · not evidence: never counted as support"));
        li.append(note);
      }
      const found = Object.entries(p.stages || {}).map(([stage, rank]) => stage + " #" + rank).join(", ");
      if (found) li.append(el("div", { class: "muted small" }, "found by " + found));
      ol.append(li);
    });
    $("evidence-empty").hidden = list.length > 0;
  }

  const FLAGS = {
    contradicted: (claim) => " contradicted by passage [" + claim.passage + "]",
    not_found: (claim) => claim.citations.length ? " not found in the cited passage" : " no citation",
  };

  // A withheld answer comes without its draft: only why, and what to do.
  function renderWithheld(snapshot) {
    const box = $("withheld");
    box.hidden = !snapshot.withheld;
    if (!snapshot.withheld) return false;
    $("withheld-message").textContent = snapshot.withheld.message;
    answer.replaceChildren();
    (snapshot.withheld.contradicting_passages || []).forEach((n) => {
      const li = $("passage-" + n);
      if (li) {
        li.classList.add("contradicts");
        li.append(el("div", { class: "verdict contradicted" }, "Contradicts the withheld draft"));
      }
    });
    return true;
  }

  function renderClaims(snapshot) {
    if (renderWithheld(snapshot)) return;
    if (!snapshot.claims || snapshot.claims.length === 0) {
      answer.textContent = snapshot.answer_text;
      if (!snapshot.answer_text && (snapshot.status === "failed" || snapshot.status === "cancelled")) {
        // Say so rather than leave an empty card; the status line above says what to do.
        answer.append(el("p", { class: "muted", id: "no-answer" },
          "No answer: this consultation " + (snapshot.status === "failed" ? "failed" : "was cancelled") +
          " before one was written. Your question is kept."));
      }
      return;
    }
    answer.replaceChildren();
    const container = el("div", {});
    snapshot.claims.forEach((claim) => {
      const verdict = claim.verdict || (claim.supported ? "supported" : "not_found");
      const span = el("span", { class: "claim " + verdict + (verdict === "supported" ? "" : " unsupported"),
        "data-verdict": verdict });
      span.append(document.createTextNode(claim.text.replace(/\s*\[\d+(?:\s*,\s*\d+)*\]/g, "") + " "));
      (claim.citations || []).forEach((n) => {
        const button = el("button", { type: "button", class: "cite", "data-number": String(n),
          title: "Show passage " + n }, "[" + n + "]");
        button.addEventListener("click", () => showPassage(n));
        span.append(button);
      });
      if (FLAGS[verdict]) span.append(el("span", { class: "flag" }, FLAGS[verdict](claim)));
      if ((claim.retracted_citations || []).length) {
        span.append(el("span", { class: "flag" }, " cites a retracted article (not counted)"));
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

  // "writing… · 3 sentences checked, 2 shown, 1 held back for the end"
  function stageText(data) {
    const label = { retrieving: "searching the literature", writing: "writing", checking: "checking",
      verifying: "checking the whole answer" }[data.stage] || data.stage;
    if (data.written === undefined) return label + "…";
    const parts = [data.checked + " of " + data.written + " sentence(s) checked", data.released + " shown"];
    if (data.held) parts.push(data.held + " held back until the end");
    if (data.withholding) parts.push("the answer will be withheld");
    return label + "… · " + parts.join(", ");
  }

  function renderSteps(snapshot) {
    const ol = $("steps");
    if (!ol) return;
    ol.replaceChildren();
    (snapshot.steps || []).forEach((step) => {
      const output = step.output || {};
      // A step skipped because the consult stopped first was never reached: not progress.
      const label = output.cancelled ? "cancelled" : output.not_reached ? "not reached"
        : output.retrying ? "will retry" : step.status;
      const li = el("li", { class: "step " + step.status, "data-kind": step.kind, "data-status": label });
      li.append(el("span", { class: "badge " + step.status }, label), " ", el("span", {}, step.title));
      if (step.status === "running" && output.tokens_so_far) {
        li.append(el("span", { class: "muted small" }, " · " + output.tokens_so_far + " tokens written"));
      }
      if (step.elapsed_s !== null) li.append(el("span", { class: "muted small" }, " " + step.elapsed_s + " s"));
      if (step.status === "skipped" && output.reason) li.append(el("div", { class: "muted small" }, output.reason));
      ol.append(li);
    });
    // Counts only the steps that ran, of those that will run: never full unless it finished.
    const display = snapshot.display || {};
    const progress = $("progress");
    progress.max = display.steps_total || 6;
    progress.value = display.steps_done || 0;
    progress.title = progress.value + " of " + progress.max + " steps done";
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
    source.addEventListener("stage", (e) => {
      const data = JSON.parse(e.data);
      setLiveBadge(data.stage);
      $("stage").textContent = stageText(data);
    });
    source.addEventListener("first_token", (e) => { $("ttft").textContent = "first token after " + JSON.parse(e.data).ms + " ms"; });
    // Only sentences checked against their passages and found supported are ever sent.
    source.addEventListener("sentence", (e) => {
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
