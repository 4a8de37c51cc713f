// The workflow drawn as a graph: nodes in columns by their distance from
// the trigger, connections as curves labelled with their branch.
import type { WorkflowDefinition } from "../../gen/ts/workflow/engine/v1/engine_pb";
import { s } from "./dom";

const nodeW = 168;
const nodeH = 52;
const gapX = 64;
const gapY = 24;
const pad = 16;

// layers gives every node a column: the longest path to it from a node
// nothing points at. Cycles (which the engine refuses) are cut where found.
function layers(def: WorkflowDefinition): Map<string, number> {
  const ids = def.nodes.map((n) => n.id);
  const incoming = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const c of def.connections) incoming.get(c.target)?.push(c.source);
  const column = new Map<string, number>();
  const visiting = new Set<string>();
  const visit = (id: string): number => {
    const known = column.get(id);
    if (known !== undefined) return known;
    if (visiting.has(id)) return 0;
    visiting.add(id);
    let col = 0;
    for (const src of incoming.get(id) ?? []) {
      if (incoming.has(src)) col = Math.max(col, visit(src) + 1);
    }
    visiting.delete(id);
    column.set(id, col);
    return col;
  };
  ids.forEach(visit);
  return column;
}

// drawGraph returns an SVG of def; status, when given, colours each node
// by its result.
export function drawGraph(def: WorkflowDefinition, status: Map<string, string> = new Map()): SVGElement {
  const column = layers(def);
  const rows = new Map<number, number>();
  const pos = new Map<string, { x: number; y: number }>();
  for (const n of def.nodes) {
    const col = column.get(n.id) ?? 0;
    const row = rows.get(col) ?? 0;
    rows.set(col, row + 1);
    pos.set(n.id, { x: pad + col * (nodeW + gapX), y: pad + row * (nodeH + gapY) });
  }
  const width = pad * 2 + (Math.max(0, ...column.values()) + 1) * (nodeW + gapX) - gapX;
  const height = pad * 2 + Math.max(1, ...rows.values()) * (nodeH + gapY) - gapY;
  const svg = s("svg", {
    class: "graph",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": `workflow graph: ${def.nodes.length} nodes, ${def.connections.length} connections`,
  });
  svg.append(
    s("defs", {},
      s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))),
  );
  for (const c of def.connections) {
    const a = pos.get(c.source);
    const b = pos.get(c.target);
    if (!a || !b) continue;
    const x1 = a.x + nodeW, y1 = a.y + nodeH / 2, x2 = b.x, y2 = b.y + nodeH / 2;
    const mid = (x1 + x2) / 2;
    const edge = s("g", { class: "edge", "data-source": c.source, "data-target": c.target },
      s("path", { d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)" }));
    if (c.branch) {
      edge.append(s("text", { x: mid, y: (y1 + y2) / 2 - 4, "text-anchor": "middle", class: "branch" }, c.branch));
    }
    svg.append(edge);
  }
  for (const n of def.nodes) {
    const p = pos.get(n.id)!;
    const st = status.get(n.id);
    const label = n.name || n.id;
    svg.append(
      s("g", { class: `node type-${n.type}${st ? ` status-${st}` : ""}`, "data-node": n.id, transform: `translate(${p.x} ${p.y})` },
        s("title", {}, `${n.id} (${n.type})${st ? `: ${st}` : ""}`),
        s("rect", { width: nodeW, height: nodeH, rx: 8 }),
        s("text", { x: 10, y: 21, class: "label" }, clip(label, 22)),
        s("text", { x: 10, y: 40, class: "type" }, clip(`${n.type} · ${n.id}`, 26)),
      ),
    );
  }
  return svg;
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
