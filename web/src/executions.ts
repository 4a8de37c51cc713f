// Executions: a filtered, paginated history, and one execution's node by
// node results, polled while it runs.
import { toJsonString } from "@bufbuild/protobuf";
import { timestampDate, ValueSchema } from "@bufbuild/protobuf/wkt";
import type { Execution } from "../../gen/ts/workflow/runtime/v1/runtime_pb";
import type { NodeResult } from "../../gen/ts/workflow/engine/v1/engine_pb";
import { explain, runtime } from "./api";
import { duration, h, replace, statusBadge, when } from "./dom";
import { drawGraph } from "./graph";
import { pager } from "./pager";

const pageSize = 20;
const statuses = ["", "running", "succeeded", "failed", "timed_out", "canceled", "interrupted"];
const pollEvery = 1000;

const date = (t: Parameters<typeof timestampDate>[0] | undefined) => (t ? timestampDate(t) : undefined);

export function executionsPage(root: HTMLElement, params: URLSearchParams): () => void {
  const page = Math.max(1, Number(params.get("page")) || 1);
  const deploymentId = params.get("deployment_id") ?? "";
  const status = params.get("status") ?? "";
  const depInput = h("input", { name: "deployment_id", value: deploymentId, placeholder: "any deployment", "aria-label": "deployment id" });
  const statusSelect = h("select", { name: "status", "aria-label": "status" },
    ...statuses.map((s) => h("option", { value: s, selected: s === status }, s || "any status")));
  const filters = h("form", { class: "filters" }, h("label", {}, "Deployment", depInput), h("label", {}, "Status", statusSelect),
    h("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/executions?${query(depInput.value.trim(), statusSelect.value, 1)}`;
  });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading executions…"));
  replace(root, h("section", { class: "panel" }, h("h2", {}, "Executions"), filters, body));
  let timer = 0;
  let stopped = false;
  const load = () => runtime.listExecutions({ page, pageSize, deploymentId, status }).then((res) => {
    if (stopped) return;
    replace(body, res.executions.length === 0
      ? h("p", { class: "muted" }, "No executions match.")
      : h("table", { class: "list executions" },
        h("thead", {}, h("tr", {}, ...["Execution", "Deployment", "Status", "Trigger", "Started", "Took"].map((c) => h("th", {}, c)))),
        h("tbody", {}, ...res.executions.map(row))),
    pager(page, pageSize, res.totalCount, (p) => `#/executions?${query(deploymentId, status, p)}`));
    // A running execution's row changes soon: look again.
    if (res.executions.some((e) => e.status === "running")) timer = window.setTimeout(load, pollEvery * 2);
  }, (err) => { if (!stopped) replace(body, h("p", { class: "error" }, explain(err))); });
  void load();
  return () => { stopped = true; clearTimeout(timer); };
}

function query(deploymentId: string, status: string, page: number): string {
  const q = new URLSearchParams();
  if (deploymentId) q.set("deployment_id", deploymentId);
  if (status) q.set("status", status);
  q.set("page", String(page));
  return q.toString();
}

function row(e: Execution): HTMLElement {
  return h("tr", { "data-execution": e.executionId },
    h("td", {}, h("a", { href: `#/executions/${e.executionId}` }, h("code", {}, e.executionId))),
    h("td", {}, h("a", { href: `#/deployments/${e.deploymentId}` }, h("code", {}, e.deploymentId.slice(0, 8)))),
    h("td", {}, statusBadge(e.status)),
    h("td", {}, e.triggerType),
    h("td", {}, when(date(e.startedAt))),
    h("td", {}, duration(date(e.startedAt), date(e.finishedAt))));
}

export function executionPage(root: HTMLElement, id: string): () => void {
  const summary = h("div", { class: "summary" }, h("p", { class: "muted" }, "Loading the execution…"));
  const graph = h("div", { class: "graph-wrap" });
  const nodes = h("div", {});
  replace(root, h("section", { class: "panel" }, h("h2", {}, "Execution ", h("code", {}, id)), summary, graph, h("h3", {}, "Node results"), nodes));
  let timer = 0;
  let stopped = false;
  let definition: Promise<void> | undefined;
  let drawn: (status: Map<string, string>) => void = () => {};
  const load = async () => {
    try {
      const e = (await runtime.getExecution({ executionId: id })).execution;
      if (stopped || !e) return;
      definition ??= runtime.getDeployment({ deploymentId: e.deploymentId }).then((res) => {
        const def = res.deployment?.workflowDefinition;
        if (def) drawn = (status) => replace(graph, drawGraph(def, status));
      }, () => { /* a deleted deployment: the results still show */ });
      await definition;
      renderExecution(e, summary, nodes);
      drawn(new Map(e.nodeResults.map((n) => [n.nodeId, n.status])));
      if (e.status === "running") timer = window.setTimeout(load, pollEvery);
    } catch (err) {
      if (stopped) return;
      replace(summary, h("p", { class: "error" }, explain(err)));
      timer = window.setTimeout(load, pollEvery * 3);
    }
  };
  void load();
  return () => { stopped = true; clearTimeout(timer); };
}

function renderExecution(e: Execution, summary: HTMLElement, nodes: HTMLElement): void {
  const started = date(e.startedAt);
  const finished = date(e.finishedAt);
  replace(summary,
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", { id: "execution-status" }, statusBadge(e.status), e.status === "running" ? h("span", { class: "muted" }, " updating…") : null),
      h("dt", {}, "Deployment"), h("dd", {}, h("a", { href: `#/deployments/${e.deploymentId}` }, h("code", {}, e.deploymentId))),
      h("dt", {}, "Trigger"), h("dd", {}, e.triggerType),
      h("dt", {}, "Started"), h("dd", {}, when(started)),
      h("dt", {}, "Finished"), h("dd", {}, finished ? when(finished) : "—"),
      h("dt", {}, "Took"), h("dd", {}, duration(started, finished ?? (e.status === "running" ? new Date() : undefined)))),
    e.error ? h("p", { class: "error", role: "alert" }, "Error: ", e.error) : null,
    e.output ? h("details", {}, h("summary", {}, "Output"), h("pre", {}, pretty(toJsonString(ValueSchema, e.output)))) : null);
  replace(nodes, e.nodeResults.length === 0
    ? h("p", { class: "muted" }, "No node has run yet.")
    : h("table", { class: "list nodes" },
      h("thead", {}, h("tr", {}, ...["Node", "Type", "Status", "Started", "Took", "Error", "Output"].map((c) => h("th", {}, c)))),
      h("tbody", {}, ...e.nodeResults.map(nodeRow))));
}

function nodeRow(n: NodeResult): HTMLElement {
  const started = date(n.startedAt);
  return h("tr", { "data-node": n.nodeId, class: `status-${n.status}` },
    h("td", {}, h("code", {}, n.nodeId)),
    h("td", {}, n.type),
    h("td", {}, statusBadge(n.status)),
    h("td", {}, started ? started.toLocaleTimeString() : "—"),
    h("td", {}, duration(started, date(n.finishedAt))),
    h("td", { class: n.error ? "error" : "" }, n.error || ""),
    h("td", {}, n.output ? h("pre", { class: "output" }, pretty(toJsonString(ValueSchema, n.output))) : ""));
}

function pretty(json: string): string {
  try {
    const text = JSON.stringify(JSON.parse(json), null, 2);
    return text.length > 2000 ? `${text.slice(0, 2000)}…` : text;
  } catch {
    return json;
  }
}
