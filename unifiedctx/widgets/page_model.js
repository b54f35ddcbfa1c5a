// The exported page's stand-in for the kernel: a model with anywidget's interface (get, set,
// save_changes, on, off, send) over the data embedded in the page. It answers the front end's
// requests (explorer.js) as the kernel does: one layer component's colour indices, or one
// query's row of the stored through-depth maps, each as one binary buffer (gzip, inflated with
// the browser's DecompressionStream).

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
  async function answer(request) {
    if (request.need === "maps") {
      const entry = payload.maps[request.model][request.layer][request.component][request.image];
      return [{ ...entry.meta, key: request.key }, entry.data ? [view(await inflate(entry.data))] : []];
    }
    const stored = (payload.depth[request.model][request.layer] || {})[request.mode];
    const entry = stored[stored.length > 1 ? request.image : 0];
    if (!entry.data) return [{ ...entry.meta, key: request.key }, []];
    const grid = traits.catalog.models[request.model].layers.find((l) => l.name === request.layer).grid;
    const q = request.query[0] * grid[1] + request.query[1], n = entry.meta.input[0] * entry.meta.input[1];
    const rows = await inflate(entry.data);
    const meta = { ...entry.meta, vmax: [entry.meta.vmax[q]], uniform_at: [entry.meta.uniform_at[q]], key: request.key };
    return [meta, [view(rows.subarray(q * n, (q + 1) * n))]];
  }
  const emit = (event, ...args) => (listeners.get(event) || []).forEach((callback) => callback(...args));
  return {
    get: (name) => traits[name],
    set: (name, value) => { traits[name] = value; },
    save_changes() {},
    on(event, callback) { listeners.set(event, [...(listeners.get(event) || []), callback]); },
    off(event, callback) { listeners.set(event, (listeners.get(event) || []).filter((c) => c !== callback)); },
    send(request) { answer(request).then(([meta, buffers]) => emit("msg:custom", meta, buffers)); },
  };
}

const payload = JSON.parse(document.getElementById("ucx-data").textContent);
render({ model: pageModel(payload), el: document.getElementById("ucx-root") });
