// The exported page's stand-in for the kernel: a model with anywidget's interface (get, set,
// save_changes, on, off, send) over the data embedded in the page. It answers the front end's
// requests (explorer.js) as the kernel does: one layer component's colour indices (for one image,
// colour scale and epoch) whole, or one query's rows of it, or one query's row of the stored
// through-depth maps, each as one binary buffer (gzip, inflated with the browser's
// DecompressionStream). A query's rows come from the entry's stored form (explorer_payload.py's
// place_rows is the same rule): a kernel layer's taps for the query's border class placed around
// it, a windowed attention's row of the query's window placed on its tokens, or a lattice's stored
// query. What the page does not hold is answered as the kernel answers a bad request ({kind:
// "error"}), or, for a query the page keeps no map of, with a warning naming the queries it keeps.

function pageModel(payload) {
  const decode = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const view = (bytes) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const traits = { ...payload.traits, pictures: view(decode(payload.pictures)), luts: view(decode(payload.luts)) };
  const listeners = new Map(), blobs = new Map();
  function inflate(text) {
    if (!blobs.has(text)) {
      const stream = new Blob([decode(text)]).stream().pipeThrough(new DecompressionStream("gzip"));
      blobs.set(text, new Response(stream).arrayBuffer().then((b) => new Uint8Array(b)));
    }
    return blobs.get(text);
  }
  // payload[a][b]... or undefined where any step is missing (a request for what the page lacks)
  const dig = (value, ...keys) => keys.reduce((v, k) => (v && Object.hasOwn(v, k) ? v[k] : undefined), value);
  async function answer(request) {
    const layer = dig(traits.catalog.models, request.model, "layers");
    const grid = layer && (layer.find((l) => l.name === request.layer) || {}).grid;
    if (request.need === "maps" || request.need === "rows") {
      const entry = dig(payload.maps, request.model, request.layer, request.component, request.scale,
        JSON.stringify(request.epoch), request.image);
      if (!entry) return missing(request);
      if (request.need === "maps") {
        return [{ ...entry.meta, key: request.key }, entry.data ? [view(await inflate(entry.data))] : []];
      }
      if (!onGrid(request.query, grid)) return missing(request);
      const data = entry.data ? await inflate(entry.data) : null;
      const [meta, rows] = data ? placeRows(entry.meta, data, request.query, grid) : [entry.meta, null];
      return [{ ...meta, kind: "rows", query: request.query, key: request.key }, rows ? [view(rows)] : []];
    }
    const stored = dig(payload.depth, request.model, request.layer, request.mode);
    const entry = stored && stored[stored.length > 1 ? request.image : 0];
    if (!entry || !onGrid(request.query, grid)) return missing(request);
    if (!entry.data) return [{ ...entry.meta, key: request.key }, []];
    const q = request.query[0] * grid[1] + request.query[1], n = entry.meta.input[0] * entry.meta.input[1];
    const k = entry.meta.queries ? entry.meta.queries.indexOf(q) : q;
    if (k < 0) {
      return [{ ...entry.meta, vmax: [""], key: request.key, warning: `this page holds the ${entry.meta.mode} ` +
        `of this layer only for the queries on ${entry.meta.held}: choose one of those (the explorer in ` +
        "Python computes every query)" }, []];
    }
    const rows = await inflate(entry.data);
    const meta = { ...entry.meta, vmax: [entry.meta.vmax[k]], uniform_at: [entry.meta.uniform_at[k]], key: request.key };
    return [meta, [view(rows.subarray(k * n, (k + 1) * n))]];
  }
  const onGrid = (query, grid) => Array.isArray(query) && Boolean(grid) && query[0] >= 0 && query[0] < grid[0]
    && query[1] >= 0 && query[1] < grid[1];
  // A query's (M, N) colour indices from a stored entry, and its M rows' own ranges (colour scale "map")
  function placeRows(meta, data, [r, c], [h, w]) {
    const n = h * w, M = meta.heads, q = r * w + c, heads = [...Array(M).keys()];
    const pick = (at) => (meta.rows ? { ...meta.rows, vmin: heads.map((m) => meta.rows.vmin[at(m)]),
      vmax: heads.map((m) => meta.rows.vmax[at(m)]),
      uniform_at: meta.rows.uniform_at && heads.map((m) => meta.rows.uniform_at[at(m)]) } : null);
    if (!meta.form) {  // a whole component (M, N, N): the query's row of each head
      const out = new Uint8Array(M * n);
      for (let m = 0; m < M; m++) out.set(data.subarray((m * n + q) * n, (m * n + q + 1) * n), m * n);
      return [{ ...meta, rows: pick((m) => m * n + q) }, out];
    }
    if (meta.form === "lattice") {
      const k = meta.queries.indexOf(q);
      if (k < 0) {
        return [{ ...meta, rows: null, warning: `this page holds the maps of this layer only for the queries ` +
          `on ${meta.held}: choose one of those (the explorer in Python computes every query)` }, null];
      }
      return [{ ...meta, rows: pick((m) => k * M + m) }, data.subarray(k * M * n, (k + 1) * M * n)];
    }
    const out = new Uint8Array(M * n).fill(meta.zero);
    if (meta.form === "stencil") {
      const cls = meta.class_y[r] * meta.classes_x + meta.class_x[c], K = meta.offsets.length;
      meta.offsets.forEach(([dy, dx], t) => {
        const y = r + dy, x = c + dx;
        if (y < 0 || y >= h || x < 0 || x >= w) return;
        for (let m = 0; m < M; m++) out[m * n + y * w + x] = data[(cls * M + m) * K + t];
      });
      return [{ ...meta, rows: pick((m) => cls * M + m) }, out];
    }
    const size = meta.size, wq = meta.window[q], pq = meta.place[q];  // form "windows"
    for (let j = 0; j < n; j++) {
      if (meta.window[j] !== wq) continue;
      for (let m = 0; m < M; m++) out[m * n + j] = data[((wq * M + m) * size + pq) * size + meta.place[j]];
    }
    return [{ ...meta, rows: pick((m) => (wq * M + m) * size + pq) }, out];
  }
  function missing(request) {
    const { key, need, ...what } = request;
    return [{ kind: "error", key, error: `this page holds no ${need} for ${JSON.stringify(what)}` }, []];
  }
  const emit = (event, ...args) => (listeners.get(event) || []).forEach((callback) => callback(...args));
  return {
    get: (name) => traits[name],
    set: (name, value) => { traits[name] = value; },
    save_changes() {},
    on(event, callback) { listeners.set(event, [...(listeners.get(event) || []), callback]); },
    off(event, callback) { listeners.set(event, (listeners.get(event) || []).filter((c) => c !== callback)); },
    send(request) {
      answer(request).then(([meta, buffers]) => emit("msg:custom", meta, buffers),
        (error) => emit("msg:custom", { kind: "error", key: request.key, error: `the page failed: ${error}` }, []));
    },
  };
}

const payload = JSON.parse(document.getElementById("ucx-data").textContent);
render({ model: pageModel(payload), el: document.getElementById("ucx-root") });
