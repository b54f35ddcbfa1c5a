// The affinity explorer's one front end: an anywidget ES module (render({ model, el })).
//
// It draws, in the browser, from plain data that the kernel computed (explorer_payload.py):
// the image with the query marker, each shown head's map (row `query` of its affinity, sent as
// colour indices u: the colormap entry, so no scale rule lives here) laid over the grey image,
// the colorbar with its marks, the through-depth map and the controls. Traits read: `setup`
// (sizes, alpha, colormap names, the query marker's colour, a run's epochs, the colour scales
// offered), `pictures` and `luts` (bytes), `catalog` (layers, default layers, carry tables),
// `shown` (the state, written back on every change). What it has not got (one layer component
// for one image, epoch and colour scale: whole when the catalogue says its form is "whole", else
// the rows of the query shown; one query's depth map) it asks for with model.send; the
// answer comes as a custom message with one binary buffer, and is kept. A request the kernel
// refuses is answered with {kind: "error"}: the page shows it and stops waiting for that key.
// The same module runs in JupyterLab and in the exported page (there a stand-in model answers
// from the page's data), and draws the live view of a training run (renderLive, setup.live).
//
// Security: every text comes from models and users, so the DOM is built with createElement and
// textContent only.

const RING = [0, 0, 0];  // a thin dark ring inside the query marker: it stands out on pale maps too
const BAR_WIDTH = 14;
const LABEL_GAP = 12; // px: a plain colorbar number this close to the 1/N mark is left out
const PLAY_MS = 700;  // the play button shows one epoch this long
const SCALE_WORDS = { layer: "one per layer", map: "one per map", fixed: "one per layer, fixed over epochs" };

function make(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (/^(aria-|data-)/.test(key) || key === "role" || key === "tabindex") node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

const bytesOf = (view) => new Uint8Array(view.buffer, view.byteOffset, view.byteLength);

function fill(template, values) {
  return template.map((part, i) => (i % 2 ? String(values[part]) : part)).join("");
}

// Outline box = [top, left, bottom, right] (exclusive ends) in an RGBA image `w` pixels wide.
function outline(px, w, box, rgb, thickness) {
  const [top, left, bottom, right] = box;
  const t = Math.max(1, Math.min(thickness, Math.floor((bottom - top) / 2) || 1,
    Math.floor((right - left) / 2) || 1));
  for (let y = top; y < bottom; y++) {
    for (let x = left; x < right; x++) {
      if (y < top + t || y >= bottom - t || x < left + t || x >= right - t) {
        const o = (y * w + x) * 4;
        px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2];
      }
    }
  }
}

const cellBox = (q, grid, h, w) => [Math.floor(q[0] * h / grid[0]), Math.floor(q[1] * w / grid[1]),
  Math.floor((q[0] + 1) * h / grid[0]), Math.floor((q[1] + 1) * w / grid[1])];

// Nearest-neighbour index of each output pixel along one axis.
function nearest(out, src) {
  const idx = new Int32Array(out);
  for (let i = 0; i < out; i++) idx[i] = Math.floor(i * src / out);
  return idx;
}

// One map (`data[offset + r * gw + c]`, colour indices on a gh x gw grid) over the grey image.
function overlayMap(canvas, grey, size, data, offset, grid, lut, alpha) {
  const [h, w] = size;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(w, h), px = image.data;
  const rows = nearest(h, grid[0]), cols = nearest(w, grid[1]);
  for (let y = 0; y < h; y++) {
    const base = offset + rows[y] * grid[1];
    for (let x = 0; x < w; x++) {
      const k = data[base + cols[x]] * 3, g = (1 - alpha) * grey[y * w + x], o = (y * w + x) * 4;
      px[o] = Math.round(g + alpha * lut[k]);
      px[o + 1] = Math.round(g + alpha * lut[k + 1]);
      px[o + 2] = Math.round(g + alpha * lut[k + 2]);
      px[o + 3] = 255;
    }
  }
  return { ctx, image };
}

function tileSize(n, grid, panel, ph, pw) {
  if (n === 1) return [ph, pw];
  const side = Math.max(Math.floor(panel / Math.ceil(Math.sqrt(n))), Math.max(grid[0], grid[1]));
  const r = side / Math.max(ph, pw);
  return [Math.max(1, Math.round(ph * r)), Math.max(1, Math.round(pw * r))];
}

function drawBar(canvas, labels, lut, marks, height) {
  canvas.width = BAR_WIDTH; canvas.height = height;
  const ctx = canvas.getContext("2d");
  for (let y = 0; y < height; y++) {
    const k = Math.round((1 - y / (height - 1)) * 255) * 3;
    ctx.fillStyle = `rgb(${lut[k]},${lut[k + 1]},${lut[k + 2]})`;
    ctx.fillRect(0, y, BAR_WIDTH, 1);
  }
  labels.replaceChildren();
  labels.style.height = `${height}px`;
  const at = (pos) => (1 - pos) * (height - 1);
  const uniform = marks.find((m) => m[2]);
  if (uniform) { ctx.fillStyle = "cyan"; ctx.fillRect(0, Math.round(at(uniform[0])) - 1, BAR_WIDTH, 2); }
  for (const [pos, text, cls] of marks) {
    if (!cls && uniform && Math.abs(at(pos) - at(uniform[0])) < LABEL_GAP) continue;
    const span = make("span", { text, class: cls || "" });
    span.style.top = `${at(pos)}px`;
    labels.append(span);
  }
  // the labels are placed absolutely, so their column is as wide as its widest label (whole words,
  // never cut by the widget's edge); before layout (a hidden view) it is estimated from the text
  const widest = Math.max(...[...labels.children].map((s) => s.offsetWidth || 7 * s.textContent.length), 0);
  labels.style.width = `${Math.ceil(widest) + 2}px`;
}

// The grey version of image `index` at size (h, w): the colours' background (cached per image and size).
function greyImages(pictures, H, W) {
  const greys = new Map();
  return (index, h, w) => {
    const key = `${index}|${h}|${w}`;
    if (!greys.has(key)) {
      const out = new Float32Array(h * w), rows = nearest(h, H), cols = nearest(w, W), off = index * H * W * 3;
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const s = off + (rows[y] * W + cols[x]) * 3;
          out[y * w + x] = (pictures[s] + pictures[s + 1] + pictures[s + 2]) / 3;
        }
      }
      greys.set(key, out);
    }
    return greys.get(key);
  };
}

// Image `index` (uint8 RGB, H x W) on `canvas` at size (h, w), the query's cell outlined.
function drawPicture(canvas, pictures, index, [H, W], [h, w], query, grid, marker) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(w, h), px = image.data;
  const rows = nearest(h, H), cols = nearest(w, W), off = index * H * W * 3;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const s = off + (rows[y] * W + cols[x]) * 3, o = (y * w + x) * 4;
      px[o] = pictures[s]; px[o + 1] = pictures[s + 1]; px[o + 2] = pictures[s + 2]; px[o + 3] = 255;
    }
  }
  const [top, left, bottom, right] = cellBox(query, grid, h, w);
  if (bottom - top >= 8 && right - left >= 8) outline(px, w, [top + 2, left + 2, bottom - 2, right - 2], RING, 1);
  outline(px, w, [top, left, bottom, right], marker, 2);
  ctx.putImageData(image, 0, 0);
}

function fillSelect(select, options, value) {
  const signature = JSON.stringify(options);
  if (select.dataset.options !== signature) {
    select.replaceChildren(...options.map(([label, v]) => make("option", { value: String(v), text: label })));
    select.dataset.options = signature;
  }
  select.value = String(value);
}

function render({ model, el }) {
  const setup = model.get("setup");
  if (setup.live) return renderLive({ model, el });
  const H = setup.h, W = setup.w, alpha = setup.alpha, MARKER = setup.marker, EPOCHS = setup.epochs || [];
  const ratio = setup.panel / Math.max(H, W);
  const PH = Math.max(1, Math.round(H * ratio)), PW = Math.max(1, Math.round(W * ratio));
  const pictures = bytesOf(model.get("pictures"));
  const lutBytes = bytesOf(model.get("luts"));
  const luts = Object.fromEntries(setup.luts.map((name, i) => [name, lutBytes.subarray(i * 768, (i + 1) * 768)]));
  const cache = new Map(), waiting = new Map();
  let S = model.get("shown");

  // ------------------------------------------------------------------ data from the kernel
  function ask(request) {
    const key = JSON.stringify(request);
    if (!cache.has(key)) {
      cache.set(key, new Promise((resolve) => waiting.set(key, resolve)));
      model.send({ ...request, key });
      showBusy();
    }
    return cache.get(key);
  }
  // what the kernel refused (a bad request, a state it kept): shown until the next user action
  function showError(text) {
    error.textContent = text;
    error.hidden = false;
    root.dataset.error = text;
  }
  const onMessage = (msg, buffers) => {
    if (msg.kind === "refused" || (msg.kind === "error" && !waiting.has(msg.key))) {
      showError(msg.error);
      return;
    }
    const resolve = waiting.get(msg.key);
    if (!resolve) return;
    waiting.delete(msg.key);
    showBusy();
    if (msg.kind === "error") {
      cache.delete(msg.key);  // not kept: asking again asks the kernel again
      showError(msg.error);
    }
    resolve({ meta: msg, data: buffers && buffers.length ? bytesOf(buffers[0]) : new Uint8Array(0) });
  };

  const grey = greyImages(pictures, H, W);

  // ------------------------------------------------------------------ the state and its rules
  const catalog = () => model.get("catalog");
  const layerOf = (m, name) => catalog().models[m].layers.find((l) => l.name === name);
  const compOf = (l, c) => l.components.find((x) => x.name === c);
  const clampQuery = (q, grid) => [Math.min(Math.max(q[0], 0), grid[0] - 1), Math.min(Math.max(q[1], 0), grid[1] - 1)];
  function carry(q, from, to) {  // the kernel's carry table: the same place of the image
    if (!from || (from[0] === to[0] && from[1] === to[1])) return clampQuery(q, to);
    const cell = catalog().carry[`${from}>${to}`][q[0] * from[1] + q[1]];
    return [Math.floor(cell / to[1]), cell % to[1]];
  }
  function next(name, value) {
    const s = { ...S, query: [...S.query] }, old = layerOf(s.model_name, s.layer);
    if (name === "model_name") {
      s.model_name = value;
      if (!layerOf(value, s.layer)) s.layer = catalog().models[value].default_layer;
    } else {
      s[name] = value;
    }
    const l = layerOf(s.model_name, s.layer);
    if (name === "model_name" || name === "layer") s.query = carry(S.query, old && old.grid, l.grid);
    if (!compOf(l, s.component)) s.component = l.components[0].name;
    if (s.head >= compOf(l, s.component).heads) s.head = -1;
    return s;
  }
  function change(name, value) {
    started = performance.now();
    error.hidden = true;
    delete root.dataset.error;
    S = next(name, value);
    model.set("shown", { ...S });
    model.save_changes();
    draw();
  }

  // ------------------------------------------------------------------ the page
  const select = (label, name) => {
    const node = make("select", { class: `ucx-select ucx-${name}`, "aria-label": label });
    node.addEventListener("change", () => change(name, name === "head" || name === "image_index"
      ? Number(node.value) : node.value));
    const box = make("label", { class: "ucx-control" }, [make("span", { text: label }), node]);
    return { node, box };
  };
  const range = (label, axis) => {
    const node = make("input", { type: "range", min: "0", class: `ucx-range ucx-${axis}`, "aria-label": label });
    const readout = make("output", { class: "ucx-readout" });
    node.addEventListener("input", () => {
      const q = [...S.query];
      q[axis === "row" ? 0 : 1] = Number(node.value);
      change("query", q);
    });
    return { node, readout, box: make("label", { class: "ucx-control" }, [make("span", { text: label }), node, readout]) };
  };
  const controls = {
    model_name: select("model", "model_name"), image_index: select("image", "image_index"),
    layer: select("layer", "layer"), head: select("head", "head"), component: select("component", "component"),
    depth: select("through depth", "depth"), scale_mode: select("colour scale", "scale_mode"),
    row: range("query row", "row"), col: range("query col", "col"),
  };
  // a training run's epochs: a slider over the stored epochs and a play button
  const epochSlider = make("input", { type: "range", min: "0", max: String(Math.max(EPOCHS.length - 1, 0)),
    step: "1", class: "ucx-range ucx-epoch", "aria-label": "epoch" });
  const epochReadout = make("output", { class: "ucx-readout" });
  const play = make("button", { type: "button", class: "ucx-play", text: "\u25B6", "aria-label": "play the epochs" });
  let playing = null;
  function stop() {
    if (playing !== null) clearInterval(playing);
    playing = null;
    play.textContent = "\u25B6";
    play.setAttribute("aria-label", "play the epochs");
  }
  epochSlider.addEventListener("input", () => change("epoch", EPOCHS[Number(epochSlider.value)]));
  play.addEventListener("click", () => {
    if (playing !== null) { stop(); return; }
    if (EPOCHS.indexOf(S.epoch) === EPOCHS.length - 1) change("epoch", EPOCHS[0]);
    play.textContent = "\u23F8";
    play.setAttribute("aria-label", "pause");
    playing = setInterval(() => {
      const i = Math.min(EPOCHS.indexOf(S.epoch) + 1, EPOCHS.length - 1);
      change("epoch", EPOCHS[i]);
      if (i === EPOCHS.length - 1) stop();  // the last epoch: stay on it
    }, PLAY_MS);
  });
  controls.epoch = { node: epochSlider, box: make("span", { class: "ucx-control ucx-epochs" }, [
    make("label", { class: "ucx-control" }, [make("span", { text: "epoch" }), epochSlider, epochReadout]), play]) };
  // JupyterLab's own shortcuts (arrows move between cells) are suppressed on the focused image
  const picture = make("canvas", { class: "ucx-image", tabindex: "0", role: "img",
    "data-lm-suppress-shortcuts": "true" });
  const tiles = make("div", { class: "ucx-tiles" });
  const bar = make("canvas", { class: "ucx-bar-canvas" }), barLabels = make("div", { class: "ucx-bar-labels" });
  const depthTitle = make("span", { class: "ucx-depth-title" });
  const depthMap = make("canvas", { class: "ucx-depth-map", role: "img" });
  const depthBar = make("canvas", { class: "ucx-bar-canvas" }), depthLabels = make("div", { class: "ucx-bar-labels" });
  const depthPanel = make("div", { class: "ucx-depth-panel" }, [depthTitle, depthMap]);
  const depthBarBox = make("div", { class: "ucx-bar" }, [depthBar, depthLabels]);
  const depthGroup = make("div", { class: "ucx-group ucx-depth-group" }, [depthPanel, depthBarBox]);
  const status = make("dl", { class: "ucx-status", "aria-label": "what the maps show", "aria-live": "polite" });
  const warning = make("p", { class: "ucx-warning", role: "alert" });
  const error = make("p", { class: "ucx-error", role: "alert", hidden: true });
  const busy = make("p", { class: "ucx-busy", text: "asking the kernel\u2026", hidden: true });
  const showBusy = () => { busy.hidden = waiting.size === 0; root.dataset.waiting = String(waiting.size); };
  // the pictures wrap onto a new line where the page is narrow: each group keeps its colorbar
  const root = make("div", { class: "ucx-explorer", role: "group", "aria-label": "affinity explorer" }, [
    make("div", { class: "ucx-controls" }, Object.values(controls).map((c) => c.box)),
    status, warning, error, busy,
    make("div", { class: "ucx-pictures" }, [picture,
      make("div", { class: "ucx-group" }, [tiles, make("div", { class: "ucx-bar" }, [bar, barLabels])]),
      depthGroup]),
  ]);
  el.append(root);
  controls.model_name.box.hidden = setup.models.length < 2;
  controls.image_index.box.hidden = setup.n_images < 2;
  controls.depth.box.hidden = setup.depth_modes.length < 2;
  controls.scale_mode.box.hidden = setup.scale_modes.length < 2;
  controls.epoch.box.hidden = EPOCHS.length < 1;

  const pointToCell = (event) => {
    const rect = picture.getBoundingClientRect(), g = layerOf(S.model_name, S.layer).grid;
    return clampQuery([Math.floor((event.clientY - rect.top) * g[0] / rect.height),
      Math.floor((event.clientX - rect.left) * g[1] / rect.width)], g);
  };
  picture.addEventListener("click", (event) => change("query", pointToCell(event)));
  const MOVES = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  picture.addEventListener("keydown", (event) => {
    const move = MOVES[event.key];
    if (!move) return;
    event.preventDefault();
    change("query", clampQuery([S.query[0] + move[0], S.query[1] + move[1]], layerOf(S.model_name, S.layer).grid));
  });

  // ------------------------------------------------------------------ drawing
  const drawImage = (grid) => drawPicture(picture, pictures, S.image_index, [H, W], [PH, PW], S.query, grid, MARKER);

  // a map's own range (scale_mode "map"): "0 to 0.031" for row k of the affinity
  const rowRange = (rows, k) => `${rows.vmin[k]} to ${rows.vmax[k]}`;
  function rowMarks(rows, k) {
    const marks = [[1, rows.vmax[k], ""], [0, rows.vmin[k], ""]];
    if (rows.zero_at !== null) marks.push([rows.zero_at, "0", ""]);
    if (rows.uniform_at) marks.push([rows.uniform_at[k], rows.uniform, "ucx-uniform"]);
    return marks;
  }

  // the row of head h for the query shown: in a whole component (M, N, N) or in one query's rows (M, N)
  const rowOf = (maps, h, n, q) => (maps.meta.kind === "rows" ? h : h * n + q);

  function drawTiles(layer, maps) {
    const grid = layer.grid, n = grid[0] * grid[1], q = S.query[0] * grid[1] + S.query[1];
    const heads = S.head === -1 ? [...Array(maps.meta.heads).keys()] : [S.head];
    const rows = maps.meta.rows;
    const [th, tw] = tileSize(heads.length, grid, setup.panel, PH, PW);
    const background = grey(S.image_index, th, tw), lut = luts[maps.meta.scale.cmap];
    tiles.style.gridTemplateColumns = `repeat(${Math.ceil(Math.sqrt(heads.length))}, ${tw}px)`;
    while (tiles.children.length > heads.length) tiles.lastChild.remove();
    while (tiles.children.length < heads.length) {
      tiles.append(make("figure", { class: "ucx-tile" }, [make("figcaption"), make("canvas", { class: "ucx-map", role: "img" })]));
    }
    let sum = 0;
    heads.forEach((h, i) => {
      const tile = tiles.children[i], canvas = tile.lastChild, row = rowOf(maps, h, n, q), offset = row * n;
      tile.firstChild.textContent = heads.length > 1
        ? `${layer.unit} ${h}${rows ? `: ${rowRange(rows, row)}` : ""}` : "";
      canvas.dataset.head = String(h);
      canvas.setAttribute("aria-label", `${layer.unit} ${h}: row (${S.query[0]}, ${S.query[1]}) of the affinity`);
      for (let k = 0; k < n; k++) sum += maps.data[offset + k];
      const { ctx, image } = overlayMap(canvas, background, [th, tw], maps.data, offset, grid, lut, alpha);
      outline(image.data, tw, cellBox(S.query, grid, th, tw), MARKER, 1);
      ctx.putImageData(image, 0, 0);
    });
    return sum;
  }

  function drawDepth(depth, grid) {
    const { meta, data } = depth;
    const { ctx, image } = overlayMap(depthMap, grey(S.image_index, PH, PW), [PH, PW], data, 0, meta.input,
      luts[meta.cmap], alpha);
    outline(image.data, PW, cellBox(S.query, grid, PH, PW), MARKER, 1);
    ctx.putImageData(image, 0, 0);
    depthTitle.textContent = meta.title;
    depthMap.setAttribute("aria-label", `${meta.title}, query (${S.query[0]}, ${S.query[1]})`);
    drawBar(depthBar, depthLabels, luts[meta.cmap],
      [[1, meta.vmax[0], ""], [0, "0", ""], [meta.uniform_at[0], meta.uniform, "ucx-uniform"]], PH);
    let sum = 0;
    for (let k = 0; k < data.length; k++) sum += data[k];
    return sum;
  }

  function drawStatus(fields, values) {
    status.replaceChildren(...fields.flatMap(([name, template]) => {
      const chosen = Array.isArray(template[0]) ? template[S.head === -1 ? 0 : 1] : template;
      return [make("dt", { text: name }),
        make("dd", { class: `ucx-field ucx-field-${name.replace(" ", "-")}`, text: fill(chosen, values) })];
    }));
  }

  function drawControls(layer, heads) {
    fillSelect(controls.scale_mode.node, setup.scale_modes.map((m) => [
      m === "layer" && EPOCHS.length ? "one per layer, this epoch" : SCALE_WORDS[m], m]), S.scale_mode);
    if (EPOCHS.length) {
      const i = EPOCHS.indexOf(S.epoch);
      epochSlider.value = String(i);
      epochReadout.textContent = `${S.epoch} (${i + 1} of ${EPOCHS.length})`;
    }
    const models = setup.models;
    fillSelect(controls.model_name.node, models.map((m) => [m, m]), S.model_name);
    fillSelect(controls.image_index.node, [...Array(setup.n_images).keys()].map((i) => [String(i), i]), S.image_index);
    fillSelect(controls.layer.node, catalog().models[S.model_name].layers.map((l) => [l.label, l.name]), S.layer);
    fillSelect(controls.head.node, [[`all ${layer.unit}s`, -1],
      ...[...Array(heads).keys()].map((h) => [`${layer.unit} ${h}`, h])], S.head);
    fillSelect(controls.component.node, layer.components.map((c) => [c.name, c.name]), S.component);
    fillSelect(controls.depth.node, setup.depth_modes.map((d) => [d, d]), S.depth);
    ["row", "col"].forEach((axis, i) => {
      const c = controls[axis];
      c.node.max = String(layer.grid[i] - 1);
      c.node.value = String(S.query[i]);
      c.readout.textContent = String(S.query[i]);
    });
    picture.setAttribute("aria-label", `image ${S.image_index}: the query token is row ${S.query[0]}, col ` +
      `${S.query[1]} of ${layer.grid[0]}x${layer.grid[1]}; click or use the arrow keys to move it`);
  }

  let started = performance.now(), drawn = 0;
  async function draw() {
    const ticket = ++drawn, s = S;
    const layer = layerOf(s.model_name, s.layer), comp = compOf(layer, s.component);
    const byQuery = comp.form === "query";  // a big component: only the rows of the query shown
    const maps = await ask({ need: byQuery ? "rows" : "maps", model: s.model_name,
      image: comp.shared ? 0 : s.image_index, layer: s.layer, component: s.component, scale: s.scale_mode,
      epoch: s.epoch, ...(byQuery ? { query: s.query } : {}) });
    const depth = s.depth === "off" ? null : await ask({ need: "depth", model: s.model_name,
      image: s.image_index, layer: s.layer, mode: s.depth, query: s.query });
    if (ticket !== drawn) return;  // a newer state is being drawn
    if (maps.meta.kind === "error" || (depth && depth.meta.kind === "error")) {
      root.dataset.ready = "1";  // drawn as far as it goes: the error says why
      return;
    }
    drawControls(layer, maps.meta.heads);
    drawImage(layer.grid);
    const problem = maps.meta.warning || (depth && depth.meta.warning) || "";
    warning.textContent = problem;
    warning.hidden = !problem;
    tiles.hidden = Boolean(maps.meta.warning);
    const sum = maps.meta.warning ? 0 : drawTiles(layer, maps);
    const q = s.query[0] * layer.grid[1] + s.query[1], n = layer.grid[0] * layer.grid[1];
    const marks = maps.meta.rows && s.head !== -1 ? rowMarks(maps.meta.rows, rowOf(maps, s.head, n, q))
      : maps.meta.scale.marks;
    if (!maps.meta.warning) drawBar(bar, barLabels, luts[maps.meta.scale.cmap], marks, Math.max(96, tiles.offsetHeight - 16));
    const showDepth = Boolean(depth && !depth.meta.warning);
    const depthSum = showDepth ? drawDepth(depth, layer.grid) : "";
    depthPanel.hidden = depthBarBox.hidden = depthGroup.hidden = !showDepth;
    const values = { row: s.query[0], col: s.query[1], head: s.head, image: s.image_index,
      vmax: showDepth ? depth.meta.vmax[0] : "", epoch: s.epoch };
    drawStatus([...maps.meta.fields, ...(depth ? depth.meta.fields : [])], values);
    Object.assign(root.dataset, { query: s.query.join(","), layer: s.layer, component: s.component,
      head: String(s.head), model: s.model_name, image: String(s.image_index), depth: s.depth,
      scaleMode: s.scale_mode, epoch: String(s.epoch),
      mapSum: String(sum), depthSum: String(depthSum), redrawMs: (performance.now() - started).toFixed(2),
      asked: String(cache.size), ready: "1" });
  }

  const onShown = () => { started = performance.now(); S = model.get("shown"); draw(); };
  model.on("msg:custom", onMessage);
  model.on("change:shown", onShown);
  model.on("change:catalog", onShown);
  draw();
  return () => {
    stop();
    model.off("msg:custom", onMessage);
    model.off("change:shown", onShown);
    model.off("change:catalog", onShown);
  };
}

// ------------------------------------------------------------------ the live view (widgets/live.py)
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const CHART = { w: 250, h: 150, left: 44, right: 8, top: 18, bottom: 20 };
const fmt = (v) => (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(1) : String(+v.toPrecision(3)));

// One chart of the live view: every series of `panel` ({title, series: [{name, x, y}]}) as a line
// with its points, the axes' ends written; the legend is text beside it. Returns the points drawn.
function drawChart(canvas, legend, panel) {
  const { w, h, left, right, top, bottom } = CHART;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#222";
  ctx.fillText(panel.title, left, 12);
  const xs = panel.series.flatMap((s) => s.x), ys = panel.series.flatMap((s) => s.y);
  legend.replaceChildren();
  if (!xs.length) {
    ctx.fillStyle = "#777";
    ctx.fillText("nothing yet", left + 8, top + 30);
    return 0;
  }
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-12) { y0 -= Math.abs(y0) * 0.1 || 0.5; y1 += Math.abs(y1) * 0.1 || 0.5; }
  const x1 = Math.max(...xs, 1);
  const X = (x) => left + (x / x1) * (w - left - right), Y = (y) => top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom);
  ctx.strokeStyle = "#999";
  ctx.strokeRect(left, top, w - left - right, h - top - bottom);
  ctx.fillStyle = "#444";
  ctx.fillText(fmt(y1), 2, top + 8);
  ctx.fillText(fmt(y0), 2, h - bottom);
  ctx.fillText("0", left, h - 6);
  ctx.fillText(`epoch ${fmt(x1)}`, w - right - 56, h - 6);
  let drawn = 0;
  panel.series.forEach((series, i) => {
    const colour = PALETTE[i % PALETTE.length];
    ctx.strokeStyle = ctx.fillStyle = colour;
    ctx.beginPath();
    series.x.forEach((x, k) => (k ? ctx.lineTo(X(x), Y(series.y[k])) : ctx.moveTo(X(x), Y(series.y[k]))));
    ctx.stroke();
    series.x.forEach((x, k) => ctx.fillRect(X(x) - 1.5, Y(series.y[k]) - 1.5, 3, 3));
    drawn += series.x.length;
    const last = series.y[series.y.length - 1];
    const item = make("span", { class: "ucx-legend-item", text: `\u25A0 ${series.name}: ${fmt(last)}` });
    item.style.color = colour;
    legend.append(item);
  });
  return drawn;
}

function renderLive({ model, el }) {
  const setup = model.get("setup");
  const H = setup.h, W = setup.w, MARKER = setup.marker, B = setup.n_images;
  const ratio = setup.panel / Math.max(H, W);
  const TH = Math.max(1, Math.round(H * ratio)), TW = Math.max(1, Math.round(W * ratio));
  const pictures = bytesOf(model.get("pictures"));
  const lutBytes = bytesOf(model.get("luts"));
  const luts = Object.fromEntries(setup.luts.map((name, i) => [name, lutBytes.subarray(i * 768, (i + 1) * 768)]));
  const grey = greyImages(pictures, H, W);
  let S = { ...model.get("shown") };

  const select = (label, name) => {
    const node = make("select", { class: `ucx-select ucx-${name}`, "aria-label": label });
    node.addEventListener("change", () => choose(name, name === "head" ? Number(node.value) : node.value));
    return { node, box: make("label", { class: "ucx-control" }, [make("span", { text: label }), node]) };
  };
  const controls = { layer: select("layer", "layer"), component: select("component", "component"),
    head: select("head", "head"), scale_mode: select("colour scale", "scale_mode") };
  const status = make("p", { class: "ucx-live-status", "aria-live": "polite" });
  const waitNote = make("p", { class: "ucx-busy", hidden: true,
    text: "waiting for the kernel: it takes this choice when it is free (is a training cell running?)" });
  const error = make("p", { class: "ucx-error", role: "alert", hidden: true });
  const charts = [0, 1, 2].map(() => {
    const canvas = make("canvas", { class: "ucx-chart", role: "img" }), legend = make("div", { class: "ucx-legend" });
    return { canvas, legend, box: make("figure", { class: "ucx-chart-box" }, [canvas, legend]) };
  });
  const scaleNote = make("p", { class: "ucx-scale-note" });
  const strip = make("div", { class: "ucx-strip" });
  const bar = make("canvas", { class: "ucx-bar-canvas" }), barLabels = make("div", { class: "ucx-bar-labels" });
  const barBox = make("div", { class: "ucx-bar" }, [bar, barLabels]);
  const root = make("div", { class: "ucx-explorer ucx-live", role: "group", "aria-label": "live view of training" }, [
    make("div", { class: "ucx-controls" }, Object.values(controls).map((c) => c.box)),
    status, waitNote, error, make("div", { class: "ucx-charts" }, charts.map((c) => c.box)), scaleNote,
    make("div", { class: "ucx-group" }, [strip, barBox]),
  ]);
  el.append(root);

  const layerOf = (name) => model.get("catalog").layers.find((l) => l.name === name);
  // what the kernel computed the frames for, against what is chosen: layer, component and query
  const sameMaps = (f) => f && f.layer === S.layer && f.component === S.component && f.query[0] === S.query[0]
    && f.query[1] === S.query[1];
  function choose(name, value) {
    error.hidden = true;
    const s = { ...S, [name]: value };
    if (name === "layer") {
      const l = layerOf(value);
      s.component = l.components[0].name;
      s.query = [Math.floor(l.grid[0] / 2), Math.floor(l.grid[1] / 2)];
      s.head = 0;
    }
    S = s;
    model.set("shown", { ...S });
    model.save_changes();
    draw();
  }
  model.on("msg:custom", (msg) => { if (msg.kind === "refused") { error.textContent = msg.error; error.hidden = false; } });

  // the maps are drawn for the state the kernel computed them for (frames.for); the head and the
  // colour scale are the browser's own (every head and scale was sent)
  function drawStrip(frames, data) {
    const grid = frames.grid, n = grid[0] * grid[1], M = frames.heads, E = frames.epochs.length;
    const query = frames.for.query;
    const mode = frames.modes.indexOf(S.scale_mode), head = Math.min(S.head, M - 1);
    const shown = E <= setup.columns ? [...Array(E).keys()]
      : [0, ...Array.from({ length: setup.columns - 1 }, (_, k) => E - setup.columns + 1 + k)];
    strip.style.gridTemplateColumns = `repeat(${shown.length + 1}, ${TW}px)`;
    strip.replaceChildren();
    let sum = 0;
    for (let b = 0; b < B; b++) {
      const picture = make("canvas", { class: "ucx-image ucx-probe", tabindex: "0", role: "img", "data-image": String(b),
        "aria-label": `probe image ${b}: the query is row ${query[0]}, col ${query[1]}; click to move it` });
      drawPicture(picture, pictures, b, [H, W], [TH, TW], query, grid, MARKER);
      picture.addEventListener("click", (event) => {
        const rect = picture.getBoundingClientRect();
        choose("query", [Math.min(grid[0] - 1, Math.floor((event.clientY - rect.top) * grid[0] / rect.height)),
          Math.min(grid[1] - 1, Math.floor((event.clientX - rect.left) * grid[1] / rect.width))]);
      });
      strip.append(make("figure", { class: "ucx-tile" }, [make("figcaption", { text: `image ${b}` }), picture]));
      for (const e of shown) {
        const offset = (((mode * E + e) * B + b) * M + head) * n;
        const cmap = S.scale_mode === "fixed" ? frames.fixed.cmap : frames.layer.cmap[e];
        const canvas = make("canvas", { class: "ucx-map", role: "img", "data-epoch": String(frames.epochs[e]),
          "data-image": String(b), "aria-label": `image ${b}, epoch ${frames.epochs[e]}` });
        const { ctx, image } = overlayMap(canvas, grey(b, TH, TW), [TH, TW], data, offset, grid, luts[cmap], setup.alpha);
        outline(image.data, TW, cellBox(query, grid, TH, TW), MARKER, 1);
        ctx.putImageData(image, 0, 0);
        for (let k = 0; k < n; k++) sum += data[offset + k];
        const range = S.scale_mode === "layer" ? frames.layer.range[e]
          : S.scale_mode === "map" ? frames.map.range[e][b * M + head] : "";
        strip.append(make("figure", { class: "ucx-tile" }, [
          make("figcaption", { text: `epoch ${frames.epochs[e]}${range ? `: ${range}` : ""}` }), canvas]));
      }
    }
    return { sum, shown: shown.map((e) => frames.epochs[e]) };
  }

  function draw() {
    const frames = model.get("frames"), catalog = model.get("catalog"), curves = model.get("curves");
    const points = charts.map((c, i) => (curves.panels ? drawChart(c.canvas, c.legend, curves.panels[i]) : 0));
    const rows = curves.panels ? curves.panels.map((p) => p.series.length) : [];
    root.dataset.points = points.join(",");
    root.dataset.series = rows.join(",");
    if (!catalog.layers || !frames.epochs) {
      status.textContent = "waiting for the first snapshot";
      root.dataset.ready = "1";
      return;
    }
    const layer = layerOf(S.layer) || layerOf(frames.for.layer);
    fillSelect(controls.layer.node, catalog.layers.map((l) => [l.label, l.name]), S.layer);
    fillSelect(controls.component.node, layer.components.map((c) => [c.name, c.name]), S.component);
    fillSelect(controls.head.node, [...Array(frames.heads).keys()].map((h) => [`${frames.unit} ${h}`, h]), S.head);
    fillSelect(controls.scale_mode.node, frames.modes.map((m) => [
      m === "fixed" ? "one for the run so far" : m === "layer" ? "one per epoch" : "one per map", m]), S.scale_mode);
    const fresh = sameMaps(frames.for);
    waitNote.hidden = fresh;
    const epochs = frames.epochs;
    status.textContent = `${frames.for.layer} (${frames.description}), ${frames.for.component}, ` +
      `query (${frames.for.query[0]}, ${frames.for.query[1]}) outlined, ${frames.unit} ${S.head}; ` +
      `epochs drawn: ${epochs.length} (last ${epochs[epochs.length - 1]})`;
    scaleNote.textContent = frames[S.scale_mode].text;
    const { sum, shown } = drawStrip(frames, bytesOf(model.get("frame_data")));
    barBox.hidden = S.scale_mode !== "fixed";
    if (S.scale_mode === "fixed") drawBar(bar, barLabels, luts[frames.fixed.cmap], frames.fixed.marks, Math.max(96, TH * B));
    Object.assign(root.dataset, { layer: frames.for.layer, component: frames.for.component,
      query: frames.for.query.join(","), head: String(S.head), scaleMode: S.scale_mode, fresh: fresh ? "1" : "0",
      epochs: epochs.join(","), shownEpochs: shown.join(","), mapSum: String(sum), ready: "1" });
  }

  const onChange = () => draw();
  // the kernel's state (its first snapshot, a change made in Python, a choice it refused) wins
  const onShown = () => { S = { ...S, ...model.get("shown") }; draw(); };
  for (const name of ["frames", "frame_data", "curves", "catalog"]) model.on(`change:${name}`, onChange);
  model.on("change:shown", onShown);
  draw();
  return () => {
    for (const name of ["frames", "frame_data", "curves", "catalog"]) model.off(`change:${name}`, onChange);
    model.off("change:shown", onShown);
  };
}

export default { render };
