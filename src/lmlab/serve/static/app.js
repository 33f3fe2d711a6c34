// lmlab serve's page: stream a completion, then colour its tokens by loss, entropy or rank
// (Al-Rfou et al. 2018, Fig. 6, as `lmlab inspect` draws it); music models get a piano roll and a MIDI file.
// Plain JavaScript, no library, nothing fetched from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const SCALES = {  // white -> dark, as matplotlib's Reds, Blues, Purples
  loss: [[255, 245, 240], [251, 106, 74], [103, 0, 13]],
  entropy: [[247, 251, 255], [107, 174, 214], [8, 48, 107]],
  rank: [[252, 251, 253], [158, 154, 200], [63, 0, 125]],
};
let card = null;        // the model card from /v1/models
let inspected = null;   // the last /v1/inspect result
let controller = null;  // aborts the running request

async function api(path, body, signal) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : {"Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body), signal,
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "muted";
}

async function loadCard() {
  try {
    card = (await (await api("/v1/models")).json()).data[0];
  } catch (e) {
    $("model").textContent = `cannot read the model card: ${e.message}`;
    return;
  }
  const m = card.lmlab;
  $("model").textContent = `${card.id}: ${m.family} (${m.kind}, state ${m.state}), ${m.tokenizer} tokenizer, ` +
    `context ${m.context}`;
  $("max-tokens").max = m.limits.max_tokens;
  if (!m.endpoints.includes("completions")) {
    $("generate").disabled = true;
    status(`this model does not generate (it serves ${m.endpoints.join(", ") || "nothing"})`);
  }
  if (m.midi) showMusic(m.midi);
}

function showMusic(midi) {
  $("music").hidden = false;
  $("prompt-box").hidden = true;
  for (const name of midi.composers) $("composer").add(new Option(name, name));
  for (const name of midi.instruments) $("instruments").add(new Option(name, name));
  if ($("instruments").options.length) $("instruments").options[0].selected = true;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

async function promptText(signal) {
  if (!card.lmlab.midi) return $("prompt").value;
  const instruments = [...$("instruments").selectedOptions].map((o) => o.value);
  const body = {composer: $("composer").value, instruments};
  return (await (await api("/v1/midi/prompt", body, signal)).json()).prompt;
}

// Server-sent events: "data: {json}\n\n" ... "data: [DONE]\n\n"
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function generate() {
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("out-new").textContent = "";
  $("strip").textContent = "";
  $("music-out").hidden = true;
  inspected = null;
  let chunks = 0;
  try {
    const prompt = await promptText(controller.signal);
    $("out-prompt").textContent = prompt;
    const body = {model: card.id, prompt, stream: true, max_tokens: number("max-tokens"),
                  temperature: number("temperature"), top_k: number("top-k"), top_p: number("top-p"),
                  seed: number("seed")};
    status("waiting for the first token…");
    const response = await api("/v1/completions", body, controller.signal);
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (!choice) continue;
      $("out-new").textContent += choice.text;
      chunks += 1;
      $("output").dataset.chunks = chunks;
      status(`streaming… ${chunks} chunks` + (choice.finish_reason ? ` (${choice.finish_reason})` : ""));
    }
    const text = $("out-new").textContent;
    status(`streamed ${chunks} chunks; scoring the tokens…`);
    await inspect(prompt, text);
    if (card.lmlab.midi) await renderMusic(prompt + text);
    status(`done: ${chunks} chunks`);
  } catch (e) {
    status(e.name === "AbortError" ? "stopped" : `error: ${e.message}`, e.name !== "AbortError");
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

async function inspect(prompt, text) {
  if (!card.lmlab.endpoints.includes("inspect") || !(prompt + text)) return;
  inspected = await (await api("/v1/inspect", {model: card.id, prompt, text})).json();
  drawStrip();
}

function colour(scale, t) {
  const [a, b] = t < 0.5 ? [scale[0], scale[1]] : [scale[1], scale[2]];
  const u = t < 0.5 ? t * 2 : (t - 0.5) * 2;
  return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * u)).join(",")})`;
}

function drawStrip() {
  if (!inspected) return;
  const by = $("color-by").value;
  const values = inspected[by];
  const shown = values.filter((v) => v !== null);
  const top = Math.max(...shown, by === "rank" ? 2 : 1e-6);
  const norm = (v) => by === "rank" ? Math.log(v) / Math.log(top) : v / top;
  const unit = by === "rank" ? "" : ` ${inspected.unit}`;
  $("scale").textContent = `(${by}: white 0 → dark ${top.toFixed(by === "rank" ? 0 : 2)}${unit}; ` +
    `underlined: the prompt)`;
  const strip = $("strip");
  strip.textContent = "";
  inspected.tokens.forEach((label, i) => {
    const span = document.createElement("span");
    span.className = "tok" + (i < inspected.prompt_tokens ? " prompt" : "");
    span.textContent = label.replaceAll("␣", " ").replaceAll("⏎", "\n") + (card.lmlab.midi ? " " : "");
    const v = values[i];
    const describe = v === null ? "first token: no prediction" :
      `loss ${inspected.loss[i].toFixed(3)} ${inspected.unit} · entropy ${inspected.entropy[i].toFixed(3)} ` +
      `${inspected.unit} · rank ${inspected.rank[i]}`;
    span.title = `${JSON.stringify(label)}: ${describe}`;
    span.dataset.value = v === null ? "" : String(v);
    if (v !== null) {
      const t = Math.min(1, Math.max(0, norm(v)));
      span.style.background = colour(SCALES[by], t);
      if (t > 0.6) span.style.color = "white";
    }
    span.addEventListener("mouseenter", () => { $("hover").textContent = span.title; });
    strip.appendChild(span);
  });
}

async function renderMusic(text) {
  const result = await (await api("/v1/midi/render", {text})).json();
  $("music-out").hidden = false;
  drawRoll(result.notes, result.steps_per_quarter);
  const bytes = Uint8Array.from(atob(result.midi), (c) => c.charCodeAt(0));
  const link = $("midi-download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([bytes], {type: "audio/midi"}));
  link.hidden = false;
  $("roll").dataset.notes = result.notes.length;
}

function drawRoll(notes, stepsPerQuarter) {
  const canvas = $("roll");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!notes.length) {
    g.fillStyle = "#888";
    g.fillText("no notes", 10, 20);
    return;
  }
  const low = Math.min(...notes.map((n) => n[2])) - 1, high = Math.max(...notes.map((n) => n[2])) + 1;
  const end = Math.max(...notes.map((n) => n[1]));
  const x = (step) => 4 + (canvas.width - 8) * step / end;
  const h = (canvas.height - 8) / (high - low + 1);
  g.strokeStyle = "#eee";
  for (let q = 0; q <= end; q += stepsPerQuarter * 4) {  // a line every bar of 4/4
    g.beginPath(); g.moveTo(x(q), 0); g.lineTo(x(q), canvas.height); g.stroke();
  }
  for (const [start, stop, pitch, velocity, program] of notes) {
    g.fillStyle = `hsla(${(program * 47) % 360}, 65%, ${60 - velocity / 6}%, 0.9)`;
    g.fillRect(x(start), 4 + (high - pitch) * h, Math.max(2, x(stop) - x(start)), Math.max(2, h - 1));
  }
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("color-by").addEventListener("change", drawStrip);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("generate").disabled) generate();
});
loadCard();
