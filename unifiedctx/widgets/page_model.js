// The exported page's stand-in for the kernel: a model with anywidget's interface (get, set,
// save_changes, on, off, send) over the data embedded in the page. It answers the front end's
// requests (explorer.js) as the kernel does: one layer component's colour indices (for one image,
// colour scale and epoch), or one query's row of the stored through-depth maps, each as one
// binary buffer (gzip, inflated with the browser's DecompressionStream). What the page does not
// hold is answered as the kernel answers a bad request: {kind: "error"}, shown by the page.

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
    if (request.need === "maps") {
      const entry = dig(payload.maps, request.model, request.layer, request.component, request.scale,
        JSON.stringify(request.epoch), request.image);
      if (!entry) return missing(request);
      return [{ ...entry.meta, key: request.key }, entry.data ? [view(await inflate(entry.data))] : []];
    }
    const stored = dig(payload.depth, request.model, request.layer, request.mode);
    const entry = stored && stored[stored.length > 1 ? request.image : 0];
    const layer = dig(traits.catalog.models, request.model, "layers");
    const grid = layer && (layer.find((l) => l.name === request.layer) || {}).grid;
    const [row, col] = Array.isArray(request.query) ? request.query : [];
    if (!entry || !grid || !(row >= 0 && row < grid[0] && col >= 0 && col < grid[1])) return missing(request);
    if (!entry.data) return [{ ...entry.meta, key: request.key }, []];
    const q = row * grid[1] + col, n = entry.meta.input[0] * entry.meta.input[1];
    const rows = await inflate(entry.data);
    const meta = { ...entry.meta, vmax: [entry.meta.vmax[q]], uniform_at: [entry.meta.uniform_at[q]], key: request.key };
    return [meta, [view(rows.subarray(q * n, (q + 1) * n))]];
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
