// The schedule page's live preview: as the form is edited, ask the preview URL
// (scheduler/preview.py) about the page's fields and show the answer: words,
// next runs with DST notes, the job's doc/queue/limits, and each field's error.
// Also shows only the inputs of the chosen schedule kind. No framework, no CDN.
"use strict";
(function () {
  const section = document.getElementById("schedule-preview");
  if (!section) return;
  const form = section.closest("form");
  const part = (name) => form.querySelector(`[data-preview="${name}"]`);
  const FIELDS_OF_KIND = {
    cron: ["cron", "timezone"],
    interval: ["every", "period", "anchor"],
    one_off: ["run_at", "timezone"],
  };
  const KIND_FIELDS = ["cron", "timezone", "every", "period", "anchor", "run_at"];
  let timer = null;
  let latest = 0;

  // The block holding a field: its box in a row of several, else its row.
  function block(name) {
    const box = form.querySelector(`.fieldBox.field-${name}`);
    return box ? box.parentElement : form.querySelector(`.form-row.field-${name}`);
  }

  function showKindFields() {
    const checked = form.querySelector("input[name=schedule_kind]:checked");
    const wanted = FIELDS_OF_KIND[checked ? checked.value : "cron"] || [];
    for (const name of KIND_FIELDS) {
      const element = block(name);
      if (element) element.hidden = !wanted.includes(name);
    }
    for (const row of form.querySelectorAll(".form-row")) {
      const blocks = row.querySelectorAll(".form-multiline > div");
      if (blocks.length) row.hidden = Array.from(blocks).every((b) => b.hidden);
    }
  }

  function query() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (name.startsWith("policy-") || name === "csrfmiddlewaretoken") continue;
      if (typeof value === "string") params.append(name, value);
    }
    if (section.dataset.id) params.set("id", section.dataset.id);
    return params;
  }

  // The preview checks ``fields`` as a save would: its answer replaces their errors
  // (a save's errors shown by the server, then the previous live ones).
  function showErrors(errors, fields) {
    for (const old of form.querySelectorAll(".live-errors")) old.remove();
    for (const name of fields || []) {
      const element = block(name);
      if (element) for (const old of element.querySelectorAll(".errorlist")) old.remove();
    }
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    for (const [name, messages] of Object.entries(errors || {})) {
      const element = block(name);
      if (!element) continue;
      const list = document.createElement("ul");
      list.className = "errorlist live-errors";
      list.dataset.field = name;
      for (const message of messages) {
        const item = document.createElement("li");
        item.textContent = message;
        list.append(item);
      }
      element.prepend(list);
      for (const input of element.querySelectorAll("input, select, textarea")) {
        input.setAttribute("aria-invalid", "true");
      }
    }
  }

  function showRuns(answer) {
    part("words").textContent = answer.words || "";
    part("note").textContent = answer.note || "";
    part("timezone").textContent = answer.timezone || "";
    const body = part("runs");
    body.replaceChildren();
    for (const run of answer.runs || []) {
      const row = document.createElement("tr");
      if (run.dst) row.className = "dst-day";
      for (const [text, css] of [[run.local_text, ""], [run.utc_text, ""], [run.dst || "", "dst"]]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        if (css) cell.className = css;
        row.append(cell);
      }
      body.append(row);
    }
    part("table").hidden = !(answer.runs || []).length;
  }

  function showJob(job) {
    part("job").hidden = !job;
    if (!job) return;
    part("job-name").textContent = job.name;
    part("job-queue").textContent = job.queue;
    part("job-limits").textContent = `soft ${job.soft_time_limit} s, hard ${job.hard_time_limit} s`;
    part("job-doc").textContent = job.doc || "(no description)";
  }

  async function refresh() {
    const ticket = ++latest;
    let answer;
    try {
      const response = await fetch(`${section.dataset.url}?${query()}`, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      answer = await response.json();
      if (!response.ok) answer = { errors: {}, words: answer.error || `preview failed (${response.status})` };
    } catch (error) {
      answer = { errors: {}, words: `preview unavailable: ${error}` };
    }
    if (ticket !== latest) return; // a newer answer is on its way
    showErrors(answer.errors, answer.fields);
    showRuns(answer);
    showJob(answer.job);
    section.dataset.state = "ready";
  }

  function schedule() {
    section.dataset.state = "waiting";
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }

  form.addEventListener("input", (event) => {
    if (!(event.target.name || "").startsWith("policy-")) schedule();
  });
  form.addEventListener("change", (event) => {
    if (event.target.name === "schedule_kind") showKindFields();
    if (!(event.target.name || "").startsWith("policy-")) schedule();
  });
  // The chosen job's doc, queue and limits sit beside the job picker.
  const jobBlock = block("task");
  if (jobBlock) jobBlock.append(part("job"));
  showKindFields();
  refresh();
})();
