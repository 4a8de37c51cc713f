// The deployment editor: a workflow's name, description and triggers, and
// the Deploy button that sends them (with the workflow) to the runtime.
import type { Deployment, Trigger } from "../../gen/ts/workflow/runtime/v1/runtime_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { TriggerSchema } from "../../gen/ts/workflow/runtime/v1/runtime_pb";
import { explain, runtime } from "./api";
import { copyButton, h, replace, statusBadge } from "./dom";

type TriggerInit = MessageInitShape<typeof TriggerSchema>;

// webhookLine shows a deployment's webhook URL with a copy button.
export function webhookLine(url: string): HTMLElement {
  if (!url) return h("span", { class: "muted" }, "no webhook");
  return h("span", { class: "webhook" }, h("code", { class: "webhook-url" }, url), " ", copyButton(url));
}

// setStatus pauses or resumes a deployment; UpdateDeployment replaces the
// whole deployment, so everything else is sent back as it is (secrets,
// which are never returned, are kept by the runtime when omitted).
export async function setStatus(d: Deployment, status: "active" | "paused"): Promise<Deployment | undefined> {
  const res = await runtime.updateDeployment({
    deploymentId: d.deploymentId,
    workflowDefinition: d.workflowDefinition,
    triggers: d.triggers.map(strip),
    name: d.name,
    description: d.description,
    status,
  });
  return res.deployment;
}

function strip(t: Trigger): TriggerInit {
  return { type: t.type, path: t.path, responseMode: t.responseMode, responseTimeout: t.responseTimeout, cron: t.cron };
}

export function deploymentEditor(d: Deployment, onDeployed: (d: Deployment) => void): HTMLElement {
  const name = h("input", { name: "name", value: d.name, required: true, "aria-label": "name" });
  const description = h("textarea", { name: "description", rows: 2, "aria-label": "description" });
  description.value = d.description;
  const list = h("div", { class: "triggers" });
  const rows: Array<() => TriggerInit> = [];
  const addRow = (t: Partial<Trigger>) => {
    const row = triggerRow(t, () => {
      const i = rows.indexOf(read);
      if (i >= 0) rows.splice(i, 1);
      row.el.remove();
    });
    const read = row.read;
    rows.push(read);
    list.append(row.el);
  };
  d.triggers.forEach(addRow);
  const message = h("p", { class: "form-message", role: "status" });
  const deploy = h("button", { type: "submit", class: "primary" }, "Deploy");
  const form = h("form", { class: "editor" },
    h("p", { class: "muted" }, "Deploy sends this workflow with the name and triggers below and makes it active; its webhook URL stays the same unless you change the path."),
    h("label", {}, "Name", name),
    h("label", {}, "Description", description),
    h("fieldset", {}, h("legend", {}, "Triggers"), list,
      h("button", { type: "button", class: "add-trigger", onclick: () => addRow({ type: "manual" }) }, "Add trigger")),
    h("div", { class: "actions" }, deploy, message),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    deploy.disabled = true;
    replace(message, "Deploying…");
    message.className = "form-message";
    try {
      const res = await runtime.updateDeployment({
        deploymentId: d.deploymentId,
        workflowDefinition: d.workflowDefinition,
        triggers: rows.map((r) => r()),
        name: name.value,
        description: description.value,
        status: "active",
      });
      if (res.deployment) {
        d = res.deployment;
        replace(message, "Deployed: ", h("strong", {}, d.name), " is ", statusBadge(d.status));
        onDeployed(d);
      }
    } catch (err) {
      message.className = "form-message error";
      replace(message, explain(err));
    } finally {
      deploy.disabled = false;
    }
  });
  return form;
}

function triggerRow(t: Partial<Trigger>, remove: () => void): { el: HTMLElement; read: () => TriggerInit } {
  const type = select("type", ["webhook", "manual", "schedule"], t.type || "manual");
  const path = h("input", { name: "path", value: t.path ?? "", placeholder: "orders/new", "aria-label": "webhook path" });
  const mode = select("response_mode", ["async", "wait"], t.responseMode || "async");
  const secret = h("input", {
    name: "secret", type: "password", autocomplete: "off", "aria-label": "webhook secret",
    placeholder: t.hasSecret ? "set; leave empty to keep it" : "none (16+ characters to sign requests)",
  });
  const cron = h("input", { name: "cron", value: t.cron ?? "", placeholder: "*/15 * * * *", "aria-label": "schedule" });
  const webhookFields = h("span", { class: "webhook-fields" }, h("label", {}, "Path", path), h("label", {}, "Response", mode), h("label", {}, "Secret", secret));
  const cronFields = h("span", { class: "cron-fields" }, h("label", {}, "Cron", cron));
  const show = () => {
    webhookFields.hidden = type.value !== "webhook";
    cronFields.hidden = type.value !== "schedule";
  };
  type.addEventListener("change", show);
  show();
  const el = h("div", { class: "trigger" }, h("label", {}, "Type", type), webhookFields, cronFields,
    h("button", { type: "button", class: "remove", onclick: remove, "aria-label": "remove trigger" }, "Remove"));
  const read = (): TriggerInit => {
    switch (type.value) {
      case "webhook":
        return { type: "webhook", path: path.value.trim(), responseMode: mode.value, secret: secret.value, responseTimeout: t.responseTimeout };
      case "schedule":
        return { type: "schedule", cron: cron.value.trim() };
      default:
        return { type: type.value };
    }
  };
  return { el, read };
}

function select(name: string, options: string[], value: string): HTMLSelectElement {
  const el = h("select", { name, "aria-label": name });
  for (const o of options) el.append(h("option", { value: o, selected: o === value }, o));
  return el;
}
