// Deployments: a paginated list with pause/resume and webhook URLs, and
// one deployment's graph and editor.
import type { Deployment } from "../../gen/ts/workflow/runtime/v1/runtime_pb";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { explain, runtime } from "./api";
import { h, replace, statusBadge, when } from "./dom";
import { deploymentEditor, setStatus, webhookLine } from "./editor";
import { drawGraph } from "./graph";
import { pager } from "./pager";

const pageSize = 10;

export function deploymentsPage(root: HTMLElement, params: URLSearchParams): void {
  const page = Math.max(1, Number(params.get("page")) || 1);
  const body = h("div", {}, h("p", { class: "muted" }, "Loading deployments…"));
  replace(root, h("section", { class: "panel" }, h("h2", {}, "Deployments"), body));
  runtime.listDeployments({ page, pageSize }).then((res) => {
    if (res.deployments.length === 0) {
      replace(body, h("p", { class: "muted" }, page > 1 ? "No deployments on this page." : "No deployments yet: chat with the agent to make one."));
    } else {
      replace(body, h("table", { class: "list deployments" },
        h("thead", {}, h("tr", {}, ...["Name", "Status", "Webhook URL", "Created", ""].map((c) => h("th", {}, c)))),
        h("tbody", {}, ...res.deployments.map(row))));
    }
    body.append(pager(page, pageSize, res.totalCount, (p) => `#/deployments?page=${p}`));
  }, (err) => replace(body, h("p", { class: "error" }, explain(err))));
}

function row(d: Deployment): HTMLElement {
  const status = h("td", {}, statusBadge(d.status));
  const toggle = h("button", { type: "button", class: "toggle" }, d.status === "paused" ? "Resume" : "Pause");
  const problem = h("span", { class: "error", role: "alert" });
  toggle.addEventListener("click", async () => {
    toggle.disabled = true;
    replace(problem);
    try {
      const next = await setStatus(d, d.status === "paused" ? "active" : "paused");
      if (next) {
        d = next;
        replace(status, statusBadge(d.status));
        toggle.textContent = d.status === "paused" ? "Resume" : "Pause";
      }
    } catch (err) {
      replace(problem, explain(err));
    } finally {
      toggle.disabled = false;
    }
  });
  return h("tr", { "data-deployment": d.deploymentId },
    h("td", {}, h("a", { href: `#/deployments/${d.deploymentId}` }, d.name || d.deploymentId)),
    status,
    h("td", {}, webhookLine(d.webhookUrl)),
    h("td", {}, when(d.createdAt && timestampDate(d.createdAt))),
    h("td", { class: "row-actions" }, toggle, " ",
      h("a", { href: `#/executions?deployment_id=${encodeURIComponent(d.deploymentId)}` }, "Executions"), " ", problem));
}

export function deploymentPage(root: HTMLElement, id: string): void {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading the deployment…"));
  replace(root, h("section", { class: "panel" }, h("h2", {}, "Deployment ", h("code", {}, id)), body));
  runtime.getDeployment({ deploymentId: id }).then((res) => {
    const d = res.deployment;
    if (!d) return;
    const header = h("div", {});
    const show = (d: Deployment) => replace(header,
      h("p", {}, h("strong", {}, d.name), " ", statusBadge(d.status), " · updated ", when(d.updatedAt && timestampDate(d.updatedAt))),
      d.description ? h("p", { class: "muted" }, d.description) : null,
      h("p", {}, "Webhook: ", webhookLine(d.webhookUrl)),
      h("p", {}, h("a", { href: `#/executions?deployment_id=${encodeURIComponent(d.deploymentId)}` }, "Executions of this deployment")));
    show(d);
    replace(body, header,
      d.workflowDefinition ? h("div", { class: "graph-wrap" }, drawGraph(d.workflowDefinition)) : null,
      h("h3", {}, "Name and triggers"), deploymentEditor(d, show));
  }, (err) => replace(body, h("p", { class: "error" }, explain(err))));
}
