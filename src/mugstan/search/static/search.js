// The search page: query -> /api/search -> a grid of videos, each looping its matched window.
// Everything that comes from the index (paths) or the user (the query) is inserted as text.
"use strict";

const K = 12;
const grid = document.getElementById("grid");
const statusLine = document.getElementById("status");

function mediaUrl(path) {
  return "/media/" + path.split("/").map(encodeURIComponent).join("/");
}

function clock(t) {  // seconds -> m:ss.s
  t = Math.round(t * 10) / 10;
  const m = Math.floor(t / 60), s = t - 60 * m;
  return m + ":" + (s < 10 ? "0" : "") + s.toFixed(1);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function captionControls(r) {  // a button that asks the model's decoder for this window's caption
  const button = element("button", "caption-button", "Caption");
  button.type = "button";
  const text = element("div", "caption");
  button.addEventListener("click", async () => {
    button.disabled = true;
    text.textContent = "Captioning\u2026";
    try {
      const res = await fetch("/api/caption?" + new URLSearchParams({ path: r.path, start: r.start, end: r.end }));
      text.textContent = res.ok ? (await res.json()).caption : "Error " + res.status;
    } catch (err) {
      text.textContent = "The server cannot be reached (" + err.message + ").";
    }
    button.disabled = false;
  });
  return [button, text];
}

function askControls(r) {  // a question about this window, answered by the video chat model
  const form = element("form", "ask");
  const input = element("input", "ask-input");
  input.placeholder = "Ask about this video";
  input.maxLength = 500;
  const button = element("button", "ask-button", "Ask");
  const text = element("div", "answer");  // textContent only: an answer is never inserted as HTML
  form.append(input, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = input.value.trim();
    if (!q) return;
    button.disabled = true;
    text.textContent = "Thinking\u2026";
    try {  // the answer is streamed: shown as it is generated
      const res = await fetch("/api/ask/stream?" + new URLSearchParams({ path: r.path, start: r.start, end: r.end, q }));
      if (!res.ok) {
        text.textContent = "Error " + res.status;
      } else {
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let answer = "";
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          answer += decoder.decode(value, { stream: true });
          text.textContent = answer;
        }
        text.textContent = (answer + decoder.decode()).trim();
      }
    } catch (err) {
      text.textContent = "The server cannot be reached (" + err.message + ").";
    }
    button.disabled = false;
  });
  return [form, text];
}

function card(r, captions, ask) {
  const div = element("div", "result");
  div.dataset.start = r.start;
  div.dataset.end = r.end;
  const video = element("video");
  const url = mediaUrl(r.path) + "#t=" + r.start + "," + r.end;  // media fragment: the matched window
  video.src = url;
  video.muted = true;
  video.playsInline = true;
  video.preload = "auto";
  // Play the matched window over and over.
  const restart = () => { video.currentTime = r.start; video.play().catch(() => {}); };
  video.addEventListener("loadedmetadata", restart);
  video.addEventListener("ended", restart);
  video.addEventListener("timeupdate", () => {
    if (video.currentTime >= r.end - 0.04 || video.currentTime < r.start - 0.5) restart();
  });
  const meta = element("div", "meta");
  meta.append(
    element("span", "score", "#" + r.rank + " \u00b7 score " + r.score.toFixed(3)),
    element("span", "window", " \u00b7 " + clock(r.start) + "\u2013" + clock(r.end)),
  );
  const link = element("a", "path", r.path);
  link.href = url;
  link.target = "_blank";
  link.rel = "noopener";
  meta.append(link);
  if (captions) meta.append(...captionControls(r));
  if (ask) meta.append(...askControls(r));
  div.append(video, meta);
  return div;
}

async function search(q) {
  statusLine.textContent = "Searching\u2026";
  let res;
  try {
    res = await fetch("/api/search?" + new URLSearchParams({ q, k: K }));
  } catch (err) {
    statusLine.textContent = "The server cannot be reached (" + err.message + ").";
    return;
  }
  if (!res.ok) {
    let detail = await res.text();
    try { detail = JSON.stringify(JSON.parse(detail).detail); } catch (_) { /* plain text */ }
    statusLine.textContent = "Error " + res.status + ": " + detail;
    return;
  }
  const data = await res.json();
  grid.replaceChildren(...data.results.map((r) => card(r, data.captions, data.ask)));
  statusLine.textContent = data.results.length
    ? data.results.length + " results for \u201c" + data.query + "\u201d"
    : "No results for \u201c" + data.query + "\u201d";
}

document.getElementById("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = document.getElementById("q").value.trim();
  if (q) search(q);
});
