// The cluster map: lists, then watches, nodes, pods, services and EndpointSlices through
// the dashboard's API proxy, and draws them as SVG. Counters come from the nodes'
// kubelet API (inspect, through the API server's node proxy) and usage from the
// metrics API, polled a few nodes at a time.
"use strict";

const state = {
  nodes: new Map(), pods: new Map(), services: new Map(), slices: new Map(),
  overlay: new Map(),   // node -> {at, peers: {peer: {bytes, rate}}}
  hits: new Map(),      // ns/svc -> {endpoint ip: connections}
  usage: new Map(),     // node or ns/pod -> {cpu, memory}
  drawn: false,
};
window.tinykube = state;

const key = (o) => (o.metadata.namespace ? o.metadata.namespace + "/" : "") + o.metadata.name;
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

// List, then watch from the list's resourceVersion; start again on any break.
// `listed` is called after each list is in the map, or has failed.
async function follow(url, map, kind, listed) {
  for (;;) {
    try {
      let list;
      try { list = await getJSON(url); } catch (e) { listed(); throw e; }
      map.clear();
      for (const o of list.items || []) map.set(key(o), o);
      listed();
      schedule();
      const rv = list.metadata.resourceVersion;
      const sep = url.includes("?") ? "&" : "?";
      const r = await fetch(url + sep + "watch=1&allowWatchBookmarks=true&resourceVersion=" + rv);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const ev = JSON.parse(line);
          if (ev.type === "BOOKMARK") continue;
          if (ev.type === "ERROR") throw new Error(kind + " watch: " + (ev.object && ev.object.message));
          if (ev.type === "DELETED") map.delete(key(ev.object));
          else map.set(key(ev.object), ev.object);
          schedule();
        }
      }
    } catch (e) {
      // The API server went away or the watch expired: list again shortly.
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

const hollow = (n) => (n.metadata.labels || {})["tinykube.io/hollow"] === "true";
const internalIP = (n) => ((n.status && n.status.addresses) || []).find((a) => a.type === "InternalIP")?.address || "";
function phase(p) {
  if (p.metadata.deletionTimestamp) return "Terminating";
  return (p.status && p.status.phase) || "Pending";
}
function owner(p) {
  const o = (p.metadata.ownerReferences || [])[0];
  if (!o) return p.metadata.name;
  // A ReplicaSet's pods belong to its Deployment: drop the template hash.
  const h = (p.metadata.labels || {})["pod-template-hash"];
  return o.kind === "ReplicaSet" && h && o.name.endsWith("-" + h) ? o.name.slice(0, -h.length - 1) : o.name;
}
function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

const POD = 12, GAP = 3, PER_ROW = 16, NODE_W = PER_ROW * (POD + GAP) + 16;
let podAt = new Map(); // ns/name -> [x, y]
let nodeAt = new Map(); // name -> [cx, cy]

function render() {
  // Nodes with a kubelet first (their overlay links arc above the first row), then
  // hollow ones; each by name.
  const nodes = [...state.nodes.values()].sort((a, b) =>
    (hollow(a) - hollow(b)) || a.metadata.name.localeCompare(b.metadata.name, undefined, { numeric: true }));
  const wired = nodes.filter((n) => !hollow(n)).length > 1;
  const byNode = new Map(nodes.map((n) => [n.metadata.name, []]));
  const unscheduled = [];
  for (const p of state.pods.values()) {
    const n = p.spec && p.spec.nodeName;
    (n && byNode.has(n) ? byNode.get(n) : unscheduled).push(p);
  }
  const columns = Math.max(1, Math.min(nodes.length, Math.floor((document.getElementById("map").clientWidth - 20) / (NODE_W + 20)) || 1));
  const parts = [];
  podAt = new Map(); nodeAt = new Map();
  const top = wired ? 60 : 10;
  let x = 10, y = top, rowH = 0, col = 0;
  const boxes = nodes.map((n) => [n.metadata.name, n, byNode.get(n.metadata.name)]);
  if (unscheduled.length) boxes.push(["(not scheduled)", null, unscheduled]);
  for (const [name, n, pods] of boxes) {
    const groups = new Map();
    for (const p of pods) {
      const g = owner(p);
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(p);
    }
    // Groups flow along rows: a small group (its name, then its pods) shares a row
    // with others; a big one starts a row of its own and fills whole rows.
    let inner = "", yy = 58, xx = 8;
    const ROW = POD + 5, RIGHT = NODE_W - 8;
    const newline = () => { if (xx > 8) { yy += ROW; xx = 8; } };
    for (const [g, ps] of [...groups.entries()].sort((a, b) => a[0].localeCompare(b[0], undefined, { numeric: true }))) {
      const label = `${g} (${ps.length})`;
      const labelW = 6.2 * label.length + 6;
      const podsW = ps.length * (POD + GAP);
      const inline = labelW + podsW <= RIGHT - 8;
      if (inline ? xx + labelW + podsW > RIGHT : true) newline();
      inner += `<text x="${xx}" y="${yy + 10}">${esc(label)}</text>`;
      let px0 = xx + labelW, py0 = yy;
      if (!inline) { yy += 14; px0 = 8; py0 = yy; }
      ps.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
      ps.forEach((p, i) => {
        const perRow = inline ? ps.length : PER_ROW;
        const px = px0 + (i % perRow) * (POD + GAP), py = py0 + Math.floor(i / perRow) * (POD + GAP);
        const k = key(p);
        podAt.set(k, [x + px + POD / 2, y + py + POD / 2]);
        inner += `<rect class="pod ${phase(p)}" data-kind="pod" data-name="${esc(k)}" data-phase="${phase(p)}" x="${px}" y="${py}" width="${POD}" height="${POD}" rx="2"><title>${esc(k)} ${esc(p.status && p.status.podIP || "")} ${phase(p)}${state.usage.has(k) ? " cpu " + state.usage.get(k).cpu + " memory " + state.usage.get(k).memory : ""}</title></rect>`;
      });
      if (inline) xx += labelW + podsW + 10;
      else { yy += Math.ceil(ps.length / PER_ROW) * (POD + GAP) + 4; xx = 8; }
    }
    if (xx > 8) yy += ROW;
    const h = Math.max(yy + 6, 80);
    const u = n && state.usage.get(name);
    const sub = n ? `${esc(internalIP(n))} &middot; pods ${esc(n.spec && n.spec.podCIDR || "no podCIDR")}` : "pods waiting for a node";
    const use = u ? `cpu ${u.cpu} &middot; memory ${u.memory}` : "";
    const ready = n ? ((n.status.conditions || []).find((c) => c.type === "Ready") || {}).status === "True" : true;
    parts.push(`<g class="node" data-kind="node" data-name="${esc(name)}" transform="translate(${x},${y})">
      <rect class="box clickable" width="${NODE_W}" height="${h}" rx="8" ${ready ? "" : 'style="stroke:#d64545"'}></rect>
      <text class="title" x="8" y="16">${esc(name)}${n && n.spec.unschedulable ? " (cordoned)" : ""}${ready ? "" : " NotReady"}</text>
      <text x="8" y="31">${sub}</text><text x="8" y="45">${use}</text>${inner}</g>`);
    nodeAt.set(name, [x + NODE_W / 2, y]);
    rowH = Math.max(rowH, h);
    col++;
    if (col >= columns) { col = 0; x = 10; y += rowH + 30; rowH = 0; } else x += NODE_W + 20;
  }
  if (col) { y += rowH + 30; }
  // Overlay links between the nodes whose counters were read, arcs above the boxes,
  // with the throughput both ways.
  const links = [], labels = [];
  for (const [a, info] of state.overlay) {
    for (const [b, peer] of Object.entries(info.peers)) {
      if (a < b || !state.overlay.has(b)) {
        const pa = nodeAt.get(a), pb = nodeAt.get(b);
        if (!pa || !pb) continue;
        const back = state.overlay.get(b)?.peers[a];
        const rate = (peer.rate || 0) + ((back && back.rate) || 0);
        // An arc from the top of one box to the top of the other, over the row.
        const mx = (pa[0] + pb[0]) / 2, my = Math.max(4, Math.min(pa[1], pb[1]) - 12 - Math.abs(pa[0] - pb[0]) / 12);
        links.push(`<path class="link" data-kind="link" data-name="${esc(a)}-${esc(b)}" d="M${pa[0]},${pa[1]} Q${mx},${my} ${pb[0]},${pb[1]}"></path>`);
        labels.push(`<text class="linklabel" x="${mx}" y="${(my + Math.min(pa[1], pb[1])) / 2}" text-anchor="middle">${esc(info.backend)} ${fmtBytes(rate)}/s</text>`);
      }
    }
  }
  // Services, each with arrows to its endpoints' pods.
  const svcs = [...state.services.values()].filter((s) => s.spec.type !== "ExternalName").sort((a, b) => key(a).localeCompare(key(b)));
  const svcParts = [];
  let sx = 10;
  const sy = y + 10;
  for (const s of svcs) {
    const k = key(s);
    const ports = (s.spec.ports || []).map((p) => p.port + (p.nodePort ? ":" + p.nodePort : "") + "/" + (p.protocol || "TCP")).join(" ");
    const w = Math.max(150, 7 * Math.max(k.length, ports.length + 4));
    svcParts.push(`<g class="svc" data-kind="service" data-name="${esc(k)}" transform="translate(${sx},${sy})">
      <rect width="${w}" height="40" rx="6"></rect><text x="6" y="15" font-weight="600">${esc(k)}</text>
      <text x="6" y="31">${esc(s.spec.clusterIP)} ${esc(ports)}</text></g>`);
    const from = [sx + w / 2, sy];
    const hits = state.hits.get(k) || {};
    for (const sl of state.slices.values()) {
      if (sl.metadata.namespace !== s.metadata.namespace || (sl.metadata.labels || {})["kubernetes.io/service-name"] !== s.metadata.name) continue;
      for (const e of sl.endpoints || []) {
        const ref = e.targetRef && e.targetRef.kind === "Pod" ? e.targetRef.namespace + "/" + e.targetRef.name : null;
        const to = ref && podAt.get(ref);
        if (!to) continue;
        const ip = (e.addresses || [])[0];
        const n = hits[ip];
        svcParts.push(`<path class="arrow" data-kind="endpoint" d="M${from[0]},${from[1]} C${from[0]},${from[1] - 60} ${to[0]},${to[1] + 60} ${to[0]},${to[1] + POD / 2}"></path>`);
        if (n !== undefined) svcParts.push(`<text class="hits" data-kind="hits" x="${to[0] + 4}" y="${to[1] + POD + 6}">${n}</text>`);
      }
    }
    sx += w + 12;
  }
  const svg = document.getElementById("svg");
  const width = Math.max(columns * (NODE_W + 20) + 20, sx + 10);
  svg.setAttribute("width", width);
  svg.setAttribute("height", sy + 60);
  svg.innerHTML = `<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#aab"></path></marker></defs>` + links.join("") + parts.join("") + labels.join("") + svcParts.join("");
  const running = [...state.pods.values()].filter((p) => phase(p) === "Running").length;
  document.getElementById("summary").textContent = `${nodes.length} nodes, ${state.pods.size} pods (${running} running), ${svcs.length} services`;
  if (!state.drawn && state.nodes.size && state.listed) {
    state.drawn = true;
    state.firstDrawMs = performance.now();
  }
}

// Clicks show what `tinykube ctl inspect` shows.
document.getElementById("svg").addEventListener("click", async (ev) => {
  const el = ev.target.closest("[data-kind]");
  if (!el) return;
  const kind = el.dataset.kind, name = el.dataset.name;
  const side = document.getElementById("side");
  let url;
  if (kind === "pod") {
    const p = state.pods.get(name);
    if (!p || !p.spec.nodeName || phase(p) !== "Running") {
      side.innerHTML = `<h2>pod ${esc(name)}</h2><pre>${esc(JSON.stringify(p && p.status, null, 2))}</pre>`;
      return;
    }
    url = `/api/v1/nodes/${p.spec.nodeName}/proxy/inspect/pods/${name}`;
  } else if (kind === "node") {
    const n = state.nodes.get(name);
    if (!n || hollow(n)) {
      side.innerHTML = `<h2>node ${esc(name)}</h2><pre>${esc(JSON.stringify(n && n.status, null, 2))}</pre>`;
      return;
    }
    url = `/api/v1/nodes/${name}/proxy/inspect/node`;
  } else if (kind === "service") {
    const [ns, svc] = name.split("/");
    const per = {};
    for (const n of [...state.nodes.values()].filter((n) => !hollow(n))) {
      try { per[n.metadata.name] = await getJSON(`/api/v1/nodes/${n.metadata.name}/proxy/inspect/services/${ns}/${svc}`); } catch (e) { per[n.metadata.name] = String(e); }
    }
    side.innerHTML = `<h2>service ${esc(name)}</h2><pre>${esc(JSON.stringify({ service: state.services.get(name).spec, nodes: per }, null, 2))}</pre>`;
    return;
  } else return;
  side.innerHTML = `<h2>${kind} ${esc(name)}</h2><p>reading&hellip;</p>`;
  try {
    const v = await getJSON(url);
    side.innerHTML = `<h2>${kind} ${esc(name)}</h2><pre>${esc(JSON.stringify(v, null, 2))}</pre>`;
  } catch (e) {
    side.innerHTML = `<h2>${kind} ${esc(name)}</h2><p>${esc(e.message)}</p>`;
  }
});

// Counters, a few nodes per tick (nodes without a kubelet, hollow ones, are skipped).
const POLL_NODES = 10;
async function pollCounters() {
  const real = [...state.nodes.values()].filter((n) => !hollow(n)).slice(0, POLL_NODES);
  const now = performance.now();
  await Promise.all(real.map(async (n) => {
    const name = n.metadata.name;
    try {
      const v = await getJSON(`/api/v1/nodes/${name}/proxy/inspect/node`);
      const old = state.overlay.get(name);
      const peers = {};
      for (const p of (v.overlay && v.overlay.peers) || []) {
        const bytes = (p.encapBytes || 0);
        const prev = old && old.peers[p.node];
        const rate = prev ? Math.max(0, (bytes - prev.bytes) / ((now - old.at) / 1000)) : 0;
        peers[p.node] = { bytes, rate };
      }
      state.overlay.set(name, { at: now, backend: v.overlay ? v.overlay.backend : "", peers });
    } catch (e) { /* the node is not answering now */ }
  }));
  const svcs = [...state.services.values()].filter((s) => s.spec.type !== "ExternalName" && s.spec.clusterIP !== "None").slice(0, 20);
  await Promise.all(svcs.map(async (s) => {
    const hits = {};
    for (const n of real) {
      try {
        const v = await getJSON(`/api/v1/nodes/${n.metadata.name}/proxy/inspect/services/${s.metadata.namespace}/${s.metadata.name}`);
        for (const e of v.endpoints || []) {
          const ip = (e.endpoint || "").split(":")[0];
          hits[ip] = (hits[ip] || 0) + (e.connections || 0);
        }
      } catch (e) { /* not answering now */ }
    }
    state.hits.set(key(s), hits);
  }));
  try {
    const m = await getJSON("/apis/metrics.k8s.io/v1beta1/nodes");
    for (const i of m.items || []) {
      const cpu = parseInt(i.usage.cpu, 10) / 1e6;
      state.usage.set(i.metadata.name, { cpu: Math.round(cpu) + "m", memory: fmtBytes(parseInt(i.usage.memory, 10) * 1024) });
    }
    const pm = await getJSON("/apis/metrics.k8s.io/v1beta1/pods");
    for (const i of pm.items || []) {
      let cpu = 0, mem = 0;
      for (const c of i.containers || []) { cpu += parseInt(c.usage.cpu, 10) / 1e6; mem += parseInt(c.usage.memory, 10) * 1024; }
      state.usage.set(key(i), { cpu: Math.round(cpu) + "m", memory: fmtBytes(mem) });
    }
  } catch (e) { /* no metrics yet */ }
  schedule();
  setTimeout(pollCounters, 2000);
}

(async function main() {
  const lists = [
    ["/api/v1/nodes", state.nodes, "nodes"],
    ["/api/v1/pods", state.pods, "pods"],
    ["/api/v1/services", state.services, "services"],
    ["/apis/discovery.k8s.io/v1/endpointslices", state.slices, "endpointslices"],
  ];
  // The first drawing waits for every first list, so it has everything.
  // (A promise resolves once: the later lists of a restarted watch change nothing.)
  await Promise.all(lists.map(([url, map, kind]) => new Promise((listed) => follow(url, map, kind, listed))));
  state.listed = true;
  render();
  setTimeout(pollCounters, 300);
})();
window.addEventListener("resize", schedule);
