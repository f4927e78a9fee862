// EndoRM reward inspector: builds a /score or /compare request, renders per-token rewards.
// Static, no dependencies. The API key lives only in the variable below (never stored).
// Every text from the API or the user goes into the page as a text node or an attribute value
// (textContent, setAttribute via el()), never into markup: token and model text can hold anything.
"use strict";
(function () {
  let apiKey = null;
  let lastResult = null;
  let controller = null;
  const $ = (id) => document.getElementById(id);

  // An element with attributes (set as values, never parsed) and children (nodes, or strings as text).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  // Diverging, colour-blind-safe (blue - white - orange, ColorBrewer PuOr/RdBu ends).
  const NEG = [179, 88, 6];    // #b35806 (orange): negative reward
  const POS = [33, 102, 172];  // #2166ac (blue): positive reward
  function mix(c, t) {  // t in [0, 1]: white -> c
    const m = (i) => Math.round(255 + (c[i] - 255) * t);
    return `rgb(${m(0)}, ${m(1)}, ${m(2)})`;
  }
  function rewardColour(s) { return s < 0 ? mix(NEG, -s) : mix(POS, s); }
  function logprobColour(s) { return mix(NEG, s); }  // s in [0, 1]: 0 = certain, 1 = least likely
  function textColour(s) { return Math.abs(s) > 0.6 ? "#fff" : "#1a1a1a"; }

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (apiKey !== null) h["Authorization"] = "Bearer " + apiKey;
    return h;
  }

  async function api(method, path, body, signal) {
    const r = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined, signal });
    let data = null;
    const text = await r.text();
    try { data = JSON.parse(text); } catch (e) { data = null; }
    if (!r.ok) {
      const err = data && data.error ? data.error : null;
      const msg = err ? err.message + (err.param ? ` (param: ${err.param})` : "") : `HTTP ${r.status}: ${text.slice(0, 500)}`;
      const e = new Error(msg); e.status = r.status; throw e;
    }
    return data;
  }

  function askKey(message) {
    $("key-form").hidden = false;
    $("key-message").textContent = message || "This server needs an API key.";
    $("api-key").focus();
  }

  async function loadModel() {
    try {
      const m = await api("GET", "/v1/models");
      const c = m.data[0];
      $("model-info").textContent = `Model: ${c.id} · alpha ${c.alpha} · engine ${c.engine} · fingerprint ${c.system_fingerprint}`;
      $("model-info").dataset.model = c.id;
      $("model-info").dataset.alpha = String(c.alpha);
      $("model-info").dataset.fingerprint = c.system_fingerprint || "";
      $("key-form").hidden = true;
    } catch (e) {
      if (e.status === 401) askKey(e.message); else $("model-info").textContent = "Model: unavailable (" + e.message + ")";
    }
  }

  function addResponse(value) {
    const n = $("responses").children.length + 1;
    const id = "response-" + n;
    const box = el("textarea", { id, class: "response", rows: 3 });
    box.value = value || "";
    const remove = el("button", { type: "button", class: "remove" }, `Remove response ${n}`);
    const div = el("div", { class: "response-in" }, el("label", { for: id }, `Response ${n}`), box, remove);
    remove.addEventListener("click", () => { div.remove(); });
    $("responses").appendChild(div);
  }

  function unescape(s) { return s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"); }

  // The request exactly as sent: /score for one response (or explicit steps), /compare for several.
  function buildRequest() {
    const responses = Array.from(document.querySelectorAll("textarea.response")).map((t) => t.value);
    if (responses.length === 0) throw new Error("add at least one response");
    const mode = document.querySelector("input[name=prompt-mode]:checked").value;
    const prompt = {};
    if (mode === "user") prompt.messages = [{ role: "user", content: $("prompt").value }];
    else {
      try { prompt.messages = JSON.parse($("prompt").value); } catch (e) { throw new Error("messages: not valid JSON: " + e.message); }
    }
    if ($("system").value !== "") prompt.system = $("system").value;
    const opts = { aggregation: $("aggregation").value, return_tokens: true };
    const gamma = parseFloat($("gamma").value), beta = parseFloat($("beta").value);
    if (gamma !== 1) opts.gamma = gamma;
    if (beta !== 0) opts.beta = beta;
    if ($("contrast").checked) {
      opts.contrast = true;
      if ($("baseline").value !== "") opts.baseline_system = $("baseline").value;
    }
    const steps = $("steps-mode").value;
    const sep = unescape($("separator").value);
    if (responses.length >= 2 && steps !== "explicit") {
      const body = { ...prompt, responses, ...opts };
      if (steps === "separator") body.step_separator = sep;
      return { path: "/compare", body };
    }
    const items = responses.map((r) => {
      const it = { ...prompt };
      if (steps === "explicit") it.steps = r.split(/\n---\n/);
      else it.response = r;
      if (steps === "separator") it.step_separator = sep;
      return it;
    });
    return { path: "/score", body: { items, ...opts } };
  }

  function curl(req) {
    const json = JSON.stringify(req.body);
    const auth = apiKey !== null ? ` \\\n  -H "Authorization: Bearer $ENDORM_API_KEY"` : "";
    return `curl -sS ${location.origin}${req.path} \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d '${json.replace(/'/g, "'\\''")}'`;
  }

  const fmt = (x) => (x === null || x === undefined ? "–" : Number(x).toPrecision(4));

  function showDetails(el) {
    const t = lastResult.results[+el.dataset.result].tokens[+el.dataset.index];
    let s = `response ${+el.dataset.result + 1}, token ${el.dataset.index}: ${JSON.stringify(t.text)}\n` +
      `id ${t.id} · reward ${t.reward} · log-prob ${t.logprob} · offset ${t.offset ? "[" + t.offset[0] + ", " + t.offset[1] + ")" : "none"}`;
    if (t.criteria_reward !== null && t.criteria_reward !== undefined)
      s += `\ncriteria reward ${t.criteria_reward} · baseline reward ${t.baseline_reward}`;
    $("details").textContent = s;
  }

  // The reward scale. The last token of a response (the end of turn) has the raw logit for its
  // reward (the terminal state's value is 0), usually far the largest |reward|: on a max scale it
  // leaves every other token white. So the scale is the 95th percentile (nearest rank below) of
  // |reward| over every token but each response's last; a token past it (often that last one) is
  // drawn at full colour and outlined ("beyond"), its value in its label and details.
  const SCALE_QUANTILE = 0.95;
  function rewardScale(results) {
    const body = results.flatMap((r) => (r.tokens || []).slice(0, -1).map((t) => Math.abs(t.reward)));
    const vals = (body.length ? body : results.flatMap((r) => (r.tokens || []).map((t) => Math.abs(t.reward))))
      .sort((a, b) => a - b);
    if (!vals.length) return 1;
    return vals[Math.floor(SCALE_QUANTILE * (vals.length - 1))] || vals[vals.length - 1] || 1;
  }
  const clamp1 = (x) => Math.max(-1, Math.min(1, x));

  function legend(scale, minLp) {
    const view = document.querySelector("input[name=view]:checked").value;
    const bar = view === "reward"
      ? `linear-gradient(to right, ${rewardColour(-1)}, #fff, ${rewardColour(1)})`
      : `linear-gradient(to right, #fff, ${logprobColour(1)})`;
    const lo = view === "reward" ? `≤ −${fmt(scale)} (orange)` : "0 (certain)";
    const hi = view === "reward" ? `≥ +${fmt(scale)} (blue)` : `${fmt(minLp)} (least likely, orange)`;
    const barEl = el("span", { class: "legend-bar" });
    barEl.style.background = bar;
    const parts = [el("span", {}, `${view === "reward" ? "reward" : "log-prob"}: ${lo}`), barEl, el("span", {}, hi)];
    if (view === "reward") {
      parts.push(el("span", { class: "legend-note" },
        `scale: the 95th percentile of |reward| over all tokens but each response's last; `,
        el("span", { class: "legend-sample" }, "outlined"), " tokens are beyond it"));
    }
    $("legend").replaceChildren(...parts);
  }

  function applyView() {
    if (!lastResult) return;
    const view = document.querySelector("input[name=view]:checked").value;
    document.querySelectorAll(".tok").forEach((el) => {
      const s = parseFloat(view === "reward" ? el.dataset.shade : el.dataset.shadeLogprob);
      el.style.background = view === "reward" ? rewardColour(s) : logprobColour(s);
      el.style.color = textColour(s);
    });
    legend(lastResult._scale, lastResult._minLp);
  }

  function render(req, data) {
    lastResult = data;
    const all = data.results.flatMap((r) => r.tokens || []);
    // One scale for all responses, so colours compare across them.
    const scale = rewardScale(data.results);
    const minLp = Math.min(...all.map((t) => t.logprob), 0) || -1;
    data._scale = scale; data._minLp = minLp;
    const fp = data.system_fingerprint || "";
    const summary = [el("p", { id: "result-meta", "data-model": data.model, "data-alpha": data.alpha, "data-fingerprint": fp },
      `model ${data.model} · alpha ${data.alpha} · aggregation ${data.aggregation} · fingerprint ${fp}`)];
    if (data.ranking) {
      summary.push(el("h2", {}, "Ranking"));
      summary.push(el("p", { id: "ranking", "data-ranking": data.ranking.join(",") },
        "best first: " + data.ranking.map((i) => "response " + (i + 1)).join(" › ")));
      const head = el("tr", {}, el("th", { scope: "col" }), ...data.scores.map((_, j) => el("th", { scope: "col" }, j + 1)));
      const rows = data.probabilities.map((row, i) => el("tr", {}, el("th", { scope: "row" }, i + 1),
        ...row.map((p, j) => el("td", { "data-i": i, "data-j": j, "data-p": p }, i === j ? "–" : p.toFixed(3)))));
      summary.push(el("table", { id: "bt" }, el("caption", {}, "Bradley-Terry: P(row beats column)"), head, ...rows));
    }
    $("summary").replaceChildren(...summary);
    const out = $("responses-out");
    out.replaceChildren();
    data.results.forEach((r, ri) => {
      const sec = el("section", { class: "response-out", "data-result": ri, "data-score": r.score });
      sec.append(el("h2", { class: data.best === ri ? "best" : null }, `Response ${ri + 1}: score `,
        el("span", { class: "score" }, fmt(r.score)), data.ranking ? ` · rank ${data.ranking.indexOf(ri) + 1}` : ""));
      sec.append(el("p", {}, `${r.num_tokens} tokens · prompt ${r.prompt_tokens} tokens` +
        (r.truncated_tokens ? ` · ${r.truncated_tokens} prompt tokens truncated` : "") +
        (r.criteria_score !== null && r.criteria_score !== undefined ? ` · criteria ${fmt(r.criteria_score)} · baseline ${fmt(r.baseline_score)}` : "")));
      const starts = new Set((r.steps || []).map((s) => s.start));
      const tokens = el("div", { class: "tokens", "aria-label": `Tokens of response ${ri + 1}` });
      (r.tokens || []).forEach((t, ti) => {
        const beyond = Math.abs(t.reward) > scale;
        const cls = "tok" + (t.offset && t.offset[0] === t.offset[1] ? " special" : "") +
          (starts.has(ti) && ti > 0 ? " step-start" : "") + (beyond ? " beyond" : "");
        tokens.append(el("span", {
          class: cls, tabindex: 0, "data-result": ri, "data-index": ti, "data-id": t.id,
          "data-reward": t.reward, "data-logprob": t.logprob, "data-shade": clamp1(t.reward / scale), "data-shade-logprob": t.logprob / minLp,
          "aria-label": `${JSON.stringify(t.text)} reward ${fmt(t.reward)}`,
        }, t.text));
      });
      sec.append(tokens);
      if (r.steps) {
        const minStep = Math.min(...r.steps.map((s) => s.reward));
        const head = el("tr", {}, ...["step", "tokens", "reward", "log-prob", "text"].map((c) => el("th", { scope: "col" }, c)));
        const rows = r.steps.map((s, si) => {
          const weakest = s.reward === minStep;
          return el("tr", { "data-step": si, "data-reward": s.reward, class: weakest ? "best" : null },
            el("td", {}, `${si + 1}${weakest ? " (weakest)" : ""}`), el("td", {}, `${s.start}–${s.end}`),
            el("td", {}, fmt(s.reward)), el("td", {}, fmt(s.logprob)), el("td", { class: "text" }, s.text || ""));
        });
        sec.append(el("table", { class: "steps" }, el("caption", {}, `Steps of response ${ri + 1}`), head, ...rows));
      }
      out.appendChild(sec);
    });
    out.querySelectorAll(".tok").forEach((tok) => {
      tok.addEventListener("focus", () => showDetails(tok));
      tok.addEventListener("mouseenter", () => showDetails(tok));
    });
    $("curl").textContent = curl(req);
    $("results").hidden = false;
    applyView();
  }

  function showError(msg) {
    $("error").textContent = "Error: " + msg;
    $("error").hidden = false;
  }

  async function run(ev) {
    ev.preventDefault();
    $("error").hidden = true;
    let req;
    try { req = buildRequest(); } catch (e) { showError(e.message); return; }
    $("curl").textContent = curl(req);
    controller = new AbortController();
    $("run").disabled = true; $("cancel").disabled = false;
    document.body.setAttribute("aria-busy", "true");
    const t0 = Date.now();
    $("progress").textContent = "Scoring…";
    const timer = setInterval(() => { $("progress").textContent = `Scoring… ${((Date.now() - t0) / 1000).toFixed(0)} s`; }, 500);
    try {
      const data = await api("POST", req.path, req.body, controller.signal);
      render(req, data);
      $("progress").textContent = "Done.";
    } catch (e) {
      $("progress").textContent = "";
      if (e.name === "AbortError") showError("cancelled");
      else { showError(e.message); if (e.status === 401) askKey(e.message); }
    } finally {
      clearInterval(timer);
      $("run").disabled = false; $("cancel").disabled = true;
      document.body.removeAttribute("aria-busy");
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    addResponse(""); addResponse("");
    $("add-response").addEventListener("click", () => addResponse(""));
    $("inputs").addEventListener("submit", run);
    $("cancel").addEventListener("click", () => controller && controller.abort());
    document.querySelectorAll("input[name=view]").forEach((r) => r.addEventListener("change", applyView));
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault(); apiKey = $("api-key").value; $("api-key").value = ""; loadModel();
    });
    $("copy-curl").addEventListener("click", async () => {
      try { await navigator.clipboard.writeText($("curl").textContent); $("copy-curl").textContent = "Copied"; }
      catch (e) { const r = document.createRange(); r.selectNodeContents($("curl")); getSelection().removeAllRanges(); getSelection().addRange(r); }
    });
    loadModel();
  });
})();
