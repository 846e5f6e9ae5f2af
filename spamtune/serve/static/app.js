// The spamtune page: send a message to this service, show the verdict.
// Every piece of user or server text is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
// file: the opened file's bytes and the text shown of them, sent as the bytes while the text is
// unedited: a message in another charset than UTF-8, read as UTF-8 text, lost its 8-bit characters.
const state = { apiKey: sessionStorage.getItem("spamtune-key") || "", positive: "spam", file: null };

// A pasted e-mail starts with header lines ("Name: value") before its first blank line.
const MAIL_HEADERS = /^(?:[!-9;-~]+:[^\n]*\n(?:[ \t][^\n]*\n)*)+\r?\n/;
const looksLikeMail = (text) => MAIL_HEADERS.test(text.replace(/\r\n/g, "\n")) && /^(from|subject|received|return-path|message-id|date|to|delivered-to|mime-version):/im.test(text);

function headers(extra) {
  const h = Object.assign({}, extra);
  if (state.apiKey) h.Authorization = "Bearer " + state.apiKey;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model", { headers: headers() });
    if (response.status === 401) {
      $("key-row").hidden = false;
      $("run").textContent = "API key needed";
      return;
    }
    const info = await response.json();
    state.positive = info.positive_label || "spam";
    $("run").textContent = `run ${info.run} · ${info.model} · threshold ${info.threshold}`;
  } catch (err) {
    $("run").textContent = "service unreachable";
  }
}

async function classify(event) {
  if (event) event.preventDefault();
  const text = $("message").value;
  if (!text.trim()) {
    showError("Paste a message first.");
    return;
  }
  if ($("key-row").hidden === false) {
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem("spamtune-key", state.apiKey);
  }
  const asMail = $("as-mail").checked;
  const button = $("classify");
  button.disabled = true;
  button.textContent = "Classifying…";
  showError("");
  try {
    const response = asMail
      ? await fetch("/v1/classify/mail?explain=true", { method: "POST", headers: headers({ "Content-Type": "message/rfc822" }),
          body: state.file && state.file.text === text ? state.file.bytes : text })
      : await fetch("/v1/classify", { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify({ text, explain: true }) });
    const answer = await response.json().catch(() => ({ error: `the service answered ${response.status}` }));
    if (response.status === 401) {
      $("key-row").hidden = false;
      $("api-key").focus();
    }
    if (!response.ok) {
      showError(answer.error || `the service answered ${response.status}`);
      return;
    }
    // A message's spans index the text the model read of it (its decoded Subject and body), which the answer carries.
    render(answer, asMail ? answer.text : text);
    if (response.status === 200 && !$("key-row").hidden) loadModel();
  } catch (err) {
    showError("Could not reach the service.");
  } finally {
    button.disabled = false;
    button.textContent = "Classify";
  }
}

function render(answer, text) {
  const isSpam = answer.label === state.positive;
  const result = $("result");
  result.classList.toggle("is-spam", isSpam);
  result.classList.toggle("is-ham", !isSpam);
  $("verdict").textContent = answer.label;
  $("p-spam").textContent = answer.p_spam.toFixed(3);
  $("meter-fill").style.width = `${(answer.p_spam * 100).toFixed(1)}%`;
  $("meter-mark").style.left = `${(answer.threshold * 100).toFixed(1)}%`;
  $("compare").textContent = `${answer.p_spam.toFixed(3)} ${answer.p_spam >= answer.threshold ? "≥" : "<"} threshold ${answer.threshold.toFixed(3)} · run ${answer.run}`;
  renderExplanation(text, answer.explanation);
  renderHeaders(answer.headers);
  result.hidden = false;
}

// The message with its explanation spans highlighted: spans are {text, start, end, score},
// start/end offsets in characters (code points, as Python counts them) into the text shown;
// score > 0 towards spam, < 0 towards ham. Spans that do not fit the message are left out.
function renderExplanation(text, spans) {
  const box = $("explanation-box");
  const target = $("explanation");
  target.replaceChildren();
  const chars = Array.from(text || "");
  const fits = (s) => Number.isInteger(s.start) && Number.isInteger(s.end) && s.start >= 0 && s.start < s.end && s.end <= chars.length;
  const placed = (Array.isArray(spans) ? spans : []).filter(fits).sort((a, b) => a.start - b.start);
  if (placed.length === 0) {
    box.hidden = true;
    return;
  }
  const peak = Math.max(...placed.map((s) => Math.abs(Number(s.score) || 0)), 1e-9);
  let last = 0;
  for (const span of placed) {
    if (span.start < last) continue; // overlaps the previous span
    target.append(document.createTextNode(chars.slice(last, span.start).join("")));
    const el = document.createElement("span");
    el.textContent = chars.slice(span.start, span.end).join("");
    const score = Number(span.score) || 0;
    const strength = Math.min(Math.abs(score) / peak, 1);
    if (strength > 0.05) {
      const hue = score > 0 ? "214, 51, 108" : "43, 138, 62";
      el.style.backgroundColor = `rgba(${hue}, ${(0.12 + 0.55 * strength).toFixed(2)})`;
    }
    el.title = `score ${score.toFixed(3)}`;
    target.append(el);
    last = span.end;
  }
  target.append(document.createTextNode(chars.slice(last).join("")));
  box.hidden = false;
}

function renderHeaders(added) {
  const box = $("headers-box");
  if (!added || typeof added !== "object") {
    box.hidden = true;
    return;
  }
  $("headers").textContent = Object.entries(added).map(([name, value]) => `${name}: ${value}`).join("\n");
  box.hidden = false;
}

function loadFile(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const bytes = new Uint8Array(reader.result);
    $("message").value = new TextDecoder().decode(bytes);
    // As the text area gives it back (line breaks normalized), to tell an edit from none.
    state.file = { bytes, text: $("message").value };
    $("file-name").textContent = file.name;
    $("as-mail").checked = /\.eml$/i.test(file.name) || looksLikeMail(state.file.text);
    classify();
  };
  reader.onerror = () => showError("Could not read that file.");
  reader.readAsArrayBuffer(file);
}

function setUp() {
  $("form").addEventListener("submit", classify);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classify(e);
  });
  $("message").addEventListener("input", () => {
    $("as-mail").checked = looksLikeMail($("message").value);
    $("file-name").textContent = "";
    state.file = null;
  });
  $("file").addEventListener("change", (e) => loadFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    loadFile(e.dataTransfer.files[0]);
  });
  if (state.apiKey) $("api-key").value = state.apiKey;
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
