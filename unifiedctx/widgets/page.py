"""The static explorer page: HTML, CSS and JavaScript, all inline (filled in by ``export.py``).

``{{TITLE}}`` and ``{{DATA}}`` (the JSON payload) are replaced; nothing else is loaded from
anywhere. The script mirrors the widget: the same status fields, the same rule for carrying the
query to another layer's or model's grid, one colour scale per layer component with its
colorbar (the uniform 1/N marked on softmax maps), tiles labelled by head (or channel), and the
through-depth map (``#ucx-depth-map``: the query's rollout or ERF on the input pixels, its own
colorbar with the uniform level 1/(H_in W_in)) when the depth selector is on. State lives in one
object ``S``; ``draw()`` renders it. ``#ucx-root`` carries ``data-query``, ``data-layer``,
``data-component``, ``data-head``, ``data-depth``, ``data-map-sum`` (the sum of the shown bytes)
and ``data-depth-sum`` (the same for the depth map, ``""`` when off) for tests.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{TITLE}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
#ucx-root h1 { font-size: 18px; margin: 0 0 8px 0; }
.ucx-controls { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 8px; font-size: 13px; }
.ucx-controls label { display: flex; gap: 4px; align-items: center; }
.ucx-status { display: grid; grid-template-columns: max-content auto; column-gap: 10px;
  font-family: monospace; font-size: 12px; margin: 6px 0 10px 0; }
.ucx-status dt { font-weight: bold; } .ucx-status dd { margin: 0; }
.ucx-pictures { display: flex; gap: 12px; align-items: flex-start; }
#ucx-image { cursor: crosshair; image-rendering: pixelated; }
.ucx-tiles { display: grid; gap: 4px; }
.ucx-tile, .ucx-depth-panel { display: flex; flex-direction: column; font-size: 11px; }
.ucx-bar { display: flex; gap: 4px; font-size: 11px; }
.ucx-bar-labels { position: relative; width: 90px; }
.ucx-bar-labels span { position: absolute; left: 0; transform: translateY(-50%); white-space: nowrap; }
.ucx-bar-labels .ucx-uniform { color: #0090b0; font-weight: bold; }
.ucx-note { font-size: 12px; color: #555; max-width: 900px; }
</style>
</head>
<body>
<div id="ucx-root" data-query="" data-layer="">
<h1>{{TITLE}}</h1>
<div class="ucx-controls">
  <label id="ucx-model-box">model <select id="ucx-model"></select></label>
  <label id="ucx-image-box">image <select id="ucx-image-index"></select></label>
  <label>layer <select id="ucx-layer"></select></label>
  <label>head <select id="ucx-head"></select></label>
  <label>component <select id="ucx-component"></select></label>
  <label id="ucx-depth-box">through depth <select id="ucx-depth"></select></label>
</div>
<dl class="ucx-status" id="ucx-status"></dl>
<div class="ucx-pictures">
  <canvas id="ucx-image" title="click to move the query token"></canvas>
  <div class="ucx-tiles" id="ucx-tiles"></div>
  <div class="ucx-bar"><canvas id="ucx-bar" width="14"></canvas>
    <div class="ucx-bar-labels" id="ucx-bar-labels"></div></div>
  <div class="ucx-depth-panel" id="ucx-depth-panel"><span id="ucx-depth-title"></span>
    <canvas id="ucx-depth-map" class="ucx-depth"></canvas></div>
  <div class="ucx-bar" id="ucx-depth-barbox"><canvas id="ucx-depth-bar" width="14"></canvas>
    <div class="ucx-bar-labels" id="ucx-depth-bar-labels"></div></div>
</div>
<p class="ucx-note">Click on the image to choose the query token (outlined in red). Each tile is one head's
row of the affinity A for that token, folded onto the layer's grid and laid over the image; all tiles
share one colour scale (the colorbar), and for softmax maps the cyan mark is the uniform level 1/N.
"Through depth" adds, on the right, the same query's context on the input pixels with every layer up to
this one taken into account (rollout: the affinities composed with their residuals; ERF: |dy/dx|), on its
own colour scale (0 to this map's peak; cyan: the uniform level 1/(pixels)).
Every map was computed in Python and stored in this page: no kernel, no network.</p>
</div>
<script type="application/json" id="ucx-data">{{DATA}}</script>
<script>
"use strict";
(async function () {
  const D = JSON.parse(document.getElementById("ucx-data").textContent);
  const $ = (id) => document.getElementById(id);
  const root = $("ucx-root");
  if (typeof DecompressionStream === "undefined") {
    root.insertAdjacentHTML("beforeend",
      "<p><b>This browser lacks DecompressionStream; please use a current browser.</b></p>");
    return;
  }
  const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  async function gunzip(b) {
    const stream = new Blob([b]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const luts = {};
  for (const k in D.luts) luts[k] = bytes(D.luts[k]);
  const H = D.images.h, W = D.images.w;
  const pictures = D.images.rgb.map(bytes);
  const scale = D.panel / Math.max(H, W);
  const PH = Math.max(1, Math.round(H * scale)), PW = Math.max(1, Math.round(W * scale));
  const S = Object.assign({}, D.start);
  const cache = new Map();

  const layers = (m) => D.layers[m];
  const layerInfo = (m, name) => layers(m).find((l) => l.name === name);
  const compInfo = (l, c) => l.components.find((x) => x.name === c);
  const defaultLayer = (m) => (layers(m).find((l) => l.kind === "mixed") || layers(m)[0]).name;
  function carry(q, oldGrid, grid) {
    let [r, c] = q;
    if (oldGrid && (oldGrid[0] !== grid[0] || oldGrid[1] !== grid[1])) {
      r = Math.floor((r + 0.5) * grid[0] / oldGrid[0]);
      c = Math.floor((c + 0.5) * grid[1] / oldGrid[1]);
    }
    return [Math.min(Math.max(r, 0), grid[0] - 1), Math.min(Math.max(c, 0), grid[1] - 1)];
  }
  function fit(oldGrid) {
    const l = layerInfo(S.model_name, S.layer);
    if (!compInfo(l, S.component)) S.component = l.components[0].name;
    if (S.head >= compInfo(l, S.component).heads) S.head = -1;
    S.query = carry(S.query, oldGrid, l.grid);
  }
  const set = {
    model_name(v) {
      const old = layerInfo(S.model_name, S.layer);
      S.model_name = v;
      if (!layerInfo(v, S.layer)) S.layer = defaultLayer(v);
      fit(old ? old.grid : null);
    },
    image_index(v) { S.image_index = Number(v); },
    layer(v) { const old = layerInfo(S.model_name, S.layer); S.layer = v; fit(old.grid); },
    head(v) { S.head = Number(v); },
    component(v) { S.component = v; fit(null); },
    depth(v) { S.depth = v; },
    query(v) { S.query = v; },
  };

  async function mapsOf() {
    const l = layerInfo(S.model_name, S.layer), c = compInfo(l, S.component);
    const entry = c.maps[c.shared ? 0 : S.image_index];
    const key = [S.model_name, S.layer, S.component, c.shared ? 0 : S.image_index].join("|");
    if (!cache.has(key)) cache.set(key, gunzip(bytes(entry.data)));
    return { layer: l, comp: c, scale: entry.scale, data: await cache.get(key) };
  }
  const cellBox = (q, g, h, w) => [Math.floor(q[0] * h / g[0]), Math.floor(q[1] * w / g[1]),
    Math.floor((q[0] + 1) * h / g[0]), Math.floor((q[1] + 1) * w / g[1])];
  function box(img, w, b, rgb, t) {
    const [top, left, bottom, right] = b;
    for (let y = top; y < bottom; y++) for (let x = left; x < right; x++) {
      if (y < top + t || y >= bottom - t || x < left + t || x >= right - t) {
        const o = (y * w + x) * 4; img[o] = rgb[0]; img[o + 1] = rgb[1]; img[o + 2] = rgb[2];
      }
    }
  }
  function drawImage(grid) {
    const cv = $("ucx-image"); cv.width = PW; cv.height = PH;
    const ctx = cv.getContext("2d"), out = ctx.createImageData(PW, PH), src = pictures[S.image_index];
    for (let y = 0; y < PH; y++) for (let x = 0; x < PW; x++) {
      const s = (Math.floor(y * H / PH) * W + Math.floor(x * W / PW)) * 3, o = (y * PW + x) * 4;
      out.data[o] = src[s]; out.data[o + 1] = src[s + 1]; out.data[o + 2] = src[s + 2]; out.data[o + 3] = 255;
    }
    box(out.data, PW, cellBox(S.query, grid, PH, PW), [255, 40, 40], 2);
    ctx.putImageData(out, 0, 0);
  }
  function tileSize(n, grid) {
    if (n === 1) return [PH, PW];
    const cols = Math.ceil(Math.sqrt(n));
    const side = Math.max(Math.floor(D.panel / cols), Math.max(grid[0], grid[1]));
    const r = side / Math.max(PH, PW);
    return [Math.max(1, Math.round(PH * r)), Math.max(1, Math.round(PW * r))];
  }
  function drawTiles(m) {
    const grid = m.layer.grid, n = grid[0] * grid[1], q = S.query[0] * grid[1] + S.query[1];
    const heads = S.head === -1 ? [...Array(m.comp.heads).keys()] : [S.head];
    const [th, tw] = tileSize(heads.length, grid), lut = luts[m.scale.cmap], src = pictures[S.image_index];
    const tiles = $("ucx-tiles");
    tiles.innerHTML = "";
    tiles.style.gridTemplateColumns = `repeat(${Math.ceil(Math.sqrt(heads.length))}, ${tw}px)`;
    let sum = 0;
    for (const h of heads) {
      const div = document.createElement("div"); div.className = "ucx-tile";
      const cap = document.createElement("span"); cap.textContent = `${m.layer.unit} ${h}`;
      const cv = document.createElement("canvas"); cv.width = tw; cv.height = th;
      cv.className = "ucx-map"; cv.dataset.head = h;
      const ctx = cv.getContext("2d"), out = ctx.createImageData(tw, th), base = (h * n + q) * n;
      for (let i = 0; i < n; i++) sum += m.data[base + i];
      for (let y = 0; y < th; y++) for (let x = 0; x < tw; x++) {
        const s = (Math.floor(y * H / th) * W + Math.floor(x * W / tw)) * 3;
        const grey = (src[s] + src[s + 1] + src[s + 2]) / 3;
        const u = m.data[base + Math.floor(y * grid[0] / th) * grid[1] + Math.floor(x * grid[1] / tw)];
        const k = m.scale.signed ? Math.round(((u - 128) / 254 + 0.5) * 255) : u;
        const o = (y * tw + x) * 4;
        for (let ch = 0; ch < 3; ch++) {
          out.data[o + ch] = Math.round((1 - D.alpha) * grey + D.alpha * lut[k * 3 + ch]);
        }
        out.data[o + 3] = 255;
      }
      box(out.data, tw, cellBox(S.query, grid, th, tw), [255, 40, 40], 1);
      ctx.putImageData(out, 0, 0);
      div.append(cap, cv); tiles.append(div);
    }
    return sum;
  }
  function drawBar(sc, height, barId = "ucx-bar", labelsId = "ucx-bar-labels") {
    const cv = $(barId); cv.height = height;
    const ctx = cv.getContext("2d"), lut = luts[sc.cmap];
    for (let y = 0; y < height; y++) {
      const k = Math.round((1 - y / (height - 1)) * 255);
      ctx.fillStyle = `rgb(${lut[k * 3]},${lut[k * 3 + 1]},${lut[k * 3 + 2]})`; ctx.fillRect(0, y, 14, 1);
    }
    const labels = $(labelsId); labels.style.height = height + "px"; labels.innerHTML = "";
    const at = (v) => (1 - (v - sc.vmin) / (sc.vmax - sc.vmin)) * (height - 1);
    const marks = [[sc.vmax, sc.vmax.toPrecision(3)], [sc.vmin, sc.vmin.toPrecision(3)]];
    if (sc.signed) marks.push([0, "0"]);
    if (sc.uniform !== null) {
      marks.push([sc.uniform, `uniform 1/${sc.keys}`, "ucx-uniform"]);
      ctx.fillStyle = "cyan"; ctx.fillRect(0, Math.round(at(sc.uniform)) - 1, 14, 2);
    }
    const near = (v) => sc.uniform !== null && Math.abs(at(v) - at(sc.uniform)) < 12;
    for (const [v, text, cls] of marks) {
      if (!cls && near(v)) continue;  // a number too close to the uniform mark would collide with it
      const span = document.createElement("span"); span.textContent = text; span.style.top = at(v) + "px";
      if (cls) span.className = cls;
      labels.append(span);
    }
  }
  const g3 = (v) => String(Number(v.toPrecision(3)));
  async function depthOf() {
    const l = layerInfo(S.model_name, S.layer), d = l.depth[S.depth];
    if (!d) return null;
    const entry = d.maps[S.image_index];
    const key = ["depth", S.model_name, S.layer, S.depth, S.image_index].join("|");
    if (!cache.has(key)) cache.set(key, gunzip(bytes(entry.data)));
    const n = d.input[0] * d.input[1], q = S.query[0] * l.grid[1] + S.query[1], vmax = entry.vmax[q];
    const scale = { cmap: D.depth_cmap, vmin: 0, vmax: vmax, signed: false, uniform: 1 / n, keys: n,
      text: `0 to ${g3(vmax)} (${D.depth_cmap}); uniform 1/${n} = ${g3(1 / n)}` };
    return { input: d.input, offset: q * n, scale: scale, data: await cache.get(key) };
  }
  function drawDepth(t, grid) {
    const [ih, iw] = t.input, cv = $("ucx-depth-map"), lut = luts[t.scale.cmap];
    const src = pictures[S.image_index];
    cv.width = PW; cv.height = PH;
    const ctx = cv.getContext("2d"), out = ctx.createImageData(PW, PH);
    let sum = 0;
    for (let i = 0; i < ih * iw; i++) sum += t.data[t.offset + i];
    for (let y = 0; y < PH; y++) for (let x = 0; x < PW; x++) {
      const s = (Math.floor(y * H / PH) * W + Math.floor(x * W / PW)) * 3;
      const grey = (src[s] + src[s + 1] + src[s + 2]) / 3;
      const k = t.data[t.offset + Math.floor(y * ih / PH) * iw + Math.floor(x * iw / PW)];
      const o = (y * PW + x) * 4;
      for (let ch = 0; ch < 3; ch++) {
        out.data[o + ch] = Math.round((1 - D.alpha) * grey + D.alpha * lut[k * 3 + ch]);
      }
      out.data[o + 3] = 255;
    }
    box(out.data, PW, cellBox(S.query, grid, PH, PW), [255, 40, 40], 1);
    ctx.putImageData(out, 0, 0);
    $("ucx-depth-title").textContent = S.depth === "rollout" ? "rollout up to this layer" :
      "effective receptive field";
    return sum;
  }
  function fillSelect(sel, options, value) {
    const html = options.map(([label, v]) => `<option value="${v}">${label}</option>`).join("");
    if (sel.dataset.html !== html) { sel.innerHTML = html; sel.dataset.html = html; }
    sel.value = String(value);
  }
  function status(m, t) {
    const g = m.layer.grid, heads = m.comp.heads, f = [];
    if (D.models.length > 1) f.push(["model", S.model_name]);
    if (pictures.length > 1) f.push(["image", `${S.image_index} of ${pictures.length}`]);
    f.push(["layer", `${S.layer} (${g[0]}x${g[1]} grid)`]);
    const u = m.layer.unit;
    f.push(["head", S.head === -1 ? `all ${u}s (${heads})` : `${u} ${S.head} of ${heads}`]);
    f.push(["component", S.component]);
    f.push(["query", `(${S.query[0]}, ${S.query[1]}) on a ${g[0]}x${g[1]} grid`]);
    f.push(["kind", m.layer.kind]);
    f.push(["affinity", m.layer.description]);
    f.push(["scale", m.scale.text + `, shared by every ${u} and query of this layer`]);
    if (S.depth !== "off" && !t) f.push(["depth", `${S.depth} unavailable for this model`]);
    if (t) {
      const what = S.depth === "rollout" ? "rollout up to this layer" :
        "effective receptive field |d y / d x| of this layer's output";
      const on = `on the ${t.input[0]}x${t.input[1]} input pixels`;
      f.push(["depth", `${what}, query (${S.query[0]}, ${S.query[1]}), ${on}`]);
      f.push(["depth scale", t.scale.text + ", this query's map alone (sums to 1)"]);
    }
    $("ucx-status").innerHTML = f.map(([k, v]) =>
      `<dt>${k}</dt><dd class="ucx-field-${k.replace(" ", "-")}">${v}</dd>`)
      .join("");
  }
  let drawing = Promise.resolve();
  function draw() {
    drawing = drawing.then(async () => {
      const m = await mapsOf();
      fillSelect($("ucx-model"), D.models.map((n) => [n, n]), S.model_name);
      fillSelect($("ucx-image-index"), pictures.map((_, i) => [String(i), i]), S.image_index);
      const layerLabel = (l) => `${l.name} [${l.kind}, ${l.grid[0]}x${l.grid[1]}]`;
      fillSelect($("ucx-layer"), layers(S.model_name).map((l) => [layerLabel(l), l.name]), S.layer);
      const headOptions = [...Array(m.comp.heads).keys()].map((h) => [`head ${h}`, h]);
      fillSelect($("ucx-head"), [["all heads", -1], ...headOptions], S.head);
      fillSelect($("ucx-component"), m.layer.components.map((c) => [c.name, c.name]), S.component);
      fillSelect($("ucx-depth"), ["off", ...D.depth_modes].map((d) => [d, d]), S.depth);
      const t = S.depth === "off" ? null : await depthOf();
      drawImage(m.layer.grid);
      const sum = drawTiles(m);
      drawBar(m.scale, Math.max(96, $("ucx-tiles").offsetHeight - 16));
      const depthSum = t ? drawDepth(t, m.layer.grid) : "";
      $("ucx-depth-panel").style.display = $("ucx-depth-barbox").style.display = t ? "" : "none";
      if (t) drawBar(t.scale, PH, "ucx-depth-bar", "ucx-depth-bar-labels");
      status(m, t);
      Object.assign(root.dataset, { query: S.query.join(","), layer: S.layer, component: S.component,
        head: String(S.head), model: S.model_name, depth: S.depth, mapSum: String(sum),
        depthSum: String(depthSum), ready: "1" });
    });
    return drawing;
  }
  $("ucx-model-box").style.display = D.models.length > 1 ? "" : "none";
  $("ucx-image-box").style.display = pictures.length > 1 ? "" : "none";
  $("ucx-depth-box").style.display = D.depth_modes.length ? "" : "none";
  if (S.depth === undefined) S.depth = "off";
  const selectors = [["ucx-model", "model_name"], ["ucx-image-index", "image_index"], ["ucx-layer", "layer"],
                     ["ucx-head", "head"], ["ucx-component", "component"], ["ucx-depth", "depth"]];
  for (const [id, name] of selectors) {
    $(id).addEventListener("change", (e) => { set[name](e.target.value); draw(); });
  }
  $("ucx-image").addEventListener("click", (e) => {
    const rect = e.target.getBoundingClientRect(), g = layerInfo(S.model_name, S.layer).grid;
    const x = (e.clientX - rect.left) * PW / rect.width, y = (e.clientY - rect.top) * PH / rect.height;
    set.query([Math.min(g[0] - 1, Math.max(0, Math.floor(y * g[0] / PH))),
               Math.min(g[1] - 1, Math.max(0, Math.floor(x * g[1] / PW)))]);
    draw();
  });
  window.ucxExplorer = { state: S, set, draw };
  draw();
})();
</script>
</body>
</html>
"""
