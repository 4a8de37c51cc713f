// The chat page: a conversation with the agent (a Connect server stream)
// beside the generation it starts, watched live through the gateway's SSE
// bridge with EventSource, drawn as a graph and deployable when complete.
import { fromJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import {
  type WatchGenerationResponse,
  WatchGenerationResponseSchema,
} from "../../gen/ts/workflow/agent/v1/agent_pb";
import { type WorkflowDefinition, WorkflowDefinitionSchema } from "../../gen/ts/workflow/engine/v1/engine_pb";
import type { Deployment } from "../../gen/ts/workflow/runtime/v1/runtime_pb";
import { agent, explain, runtime } from "./api";
import { h, replace, statusBadge } from "./dom";
import { deploymentEditor, webhookLine } from "./editor";
import { drawGraph } from "./graph";

interface Turn {
  role: "user" | "assistant" | "error";
  text: string;
}

// The conversation outlives the page's DOM, so that leaving for the
// deployments list and coming back keeps it, and a generation in progress
// keeps being watched.
const state = {
  sessionId: "",
  turns: [] as Turn[],
  events: [] as WatchGenerationResponse[],
  lastEventId: "",
  watch: undefined as EventSource | undefined,
  watchProblem: "",
  draft: undefined as { name: string; def: WorkflowDefinition } | undefined,
  deployment: undefined as Deployment | undefined,
  chatting: false,
};

let view: { log: HTMLElement; timeline: HTMLElement; status: HTMLElement; result: HTMLElement } | undefined;

export function chatPage(root: HTMLElement): () => void {
  const input = h("textarea", {
    name: "message", rows: 3, required: true, "aria-label": "message",
    placeholder: "When a webhook receives an order over 100, respond with 'big order', otherwise respond with 'small order'",
  });
  const send = h("button", { type: "submit", class: "primary", disabled: state.chatting }, "Send");
  const form = h("form", { class: "chat-form" }, input,
    h("div", { class: "actions" }, send,
      h("button", { type: "button", onclick: () => { reset(); chatPage(root); } }, "New conversation")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || state.chatting) return;
    input.value = "";
    void say(text, send);
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });
  view = {
    log: h("div", { class: "chat-log", "aria-live": "polite" }),
    timeline: h("ol", { class: "timeline" }),
    status: h("p", { class: "gen-status", id: "generation-status" }),
    result: h("div", { class: "gen-result" }),
  };
  replace(root,
    h("div", { class: "chat-page" },
      h("section", { class: "panel conversation" }, h("h2", {}, "Chat with the agent"),
        h("p", { class: "muted" }, "Describe a workflow: what starts it, what it checks, what it does."),
        view.log, form),
      h("section", { class: "panel generation" }, h("h2", {}, "Generation"), view.status, view.timeline, view.result)));
  renderAll();
  input.focus();
  return () => { view = undefined; };
}

// reset forgets the conversation (and stops watching its generation), as
// when the user starts afresh or signs out.
export function reset(): void {
  state.watch?.close();
  Object.assign(state, {
    sessionId: "", turns: [], events: [], lastEventId: "", watch: undefined, watchProblem: "",
    draft: undefined, deployment: undefined, chatting: false,
  });
}

async function say(text: string, send: HTMLButtonElement): Promise<void> {
  state.chatting = true;
  send.disabled = true;
  state.turns.push({ role: "user", text });
  const reply: Turn = { role: "assistant", text: "" };
  try {
    if (!state.sessionId) {
      state.sessionId = (await agent.createSession({ action: "create" })).sessionId;
    }
    if (!state.watch) watch();
    state.turns.push(reply);
    renderLog();
    for await (const piece of agent.chat({ sessionId: state.sessionId, userMessage: text })) {
      reply.text += piece.content;
      renderLog();
    }
  } catch (err) {
    state.turns.push({ role: "error", text: explain(err) });
  } finally {
    state.chatting = false;
    send.disabled = false;
    renderLog();
  }
}

// watch opens the generation stream, after the last event already seen
// when it was open before.
function watch(): void {
  const q = new URLSearchParams({ session_id: state.sessionId });
  if (state.lastEventId) q.set("after_event_id", state.lastEventId);
  const es = new EventSource(`/api/v1/workflow_generation?${q}`);
  state.watch = es;
  state.watchProblem = "";
  es.onmessage = (e: MessageEvent<string>) => {
    const ev = fromJson(WatchGenerationResponseSchema, JSON.parse(e.data) as JsonValue, { ignoreUnknownFields: true });
    state.lastEventId = ev.eventId || e.lastEventId;
    state.watchProblem = "";
    onEvent(ev);
  };
  es.addEventListener("end", () => {
    es.close();
    if (state.watch === es) state.watch = undefined;
    renderStatus();
  });
  es.addEventListener("error", (e) => {
    const data = (e as MessageEvent<string>).data;
    if (data) {
      state.watchProblem = explain(JSON.parse(data));
    } else if (es.readyState === EventSource.CLOSED) {
      // The gateway refused the stream outright (credentials, an unknown
      // session): EventSource gives no reason and does not retry.
      state.watchProblem = "The gateway refused the generation stream; sign in again or start a new conversation.";
      if (state.watch === es) state.watch = undefined;
    } else {
      state.watchProblem = "Lost the generation stream; reconnecting…";
    }
    renderStatus();
  });
  renderStatus();
}

function onEvent(ev: WatchGenerationResponse): void {
  state.events.push(ev);
  const data = (ev.data ?? {}) as JsonObject;
  if ((ev.type === "draft" || ev.type === "complete") && isObject(data.workflow_definition)) {
    state.draft = {
      name: String(data.name ?? ""),
      def: fromJson(WorkflowDefinitionSchema, data.workflow_definition, { ignoreUnknownFields: true }),
    };
  }
  if (ev.type === "complete" && ev.workflowId) {
    void runtime.getDeployment({ deploymentId: ev.workflowId }).then(
      (res) => { state.deployment = res.deployment; renderResult(); },
      (err) => { state.watchProblem = explain(err); renderStatus(); },
    );
  }
  renderAll();
}

function isObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function renderAll(): void {
  renderLog();
  renderTimeline();
  renderStatus();
  renderResult();
}

function renderLog(): void {
  if (!view) return;
  replace(view.log, ...state.turns.map((t) =>
    h("div", { class: `turn ${t.role}` }, h("span", { class: "who" }, t.role === "user" ? "You" : t.role === "assistant" ? "Agent" : "Error"),
      h("p", {}, t.text || "…"))));
  view.log.scrollTop = view.log.scrollHeight;
}

function renderTimeline(): void {
  if (!view) return;
  replace(view.timeline, ...state.events.map((ev) =>
    h("li", { class: `event event-${ev.type}` }, h("span", { class: "kind" }, ev.type), " ", describe(ev))));
}

function renderStatus(): void {
  if (!view) return;
  const last = state.events.at(-1);
  let text = state.sessionId ? "Waiting for the agent…" : "Nothing generated yet.";
  if (last?.type === "complete") text = "Generation complete: the workflow is deployed.";
  else if (last?.type === "error") text = "Generation failed.";
  else if (last) text = `Generation in progress (${last.type})…`;
  replace(view.status, text, state.watchProblem ? h("span", { class: "error" }, " ", state.watchProblem) : null);
}

function renderResult(): void {
  if (!view) return;
  const parts: Node[] = [];
  if (state.draft) {
    parts.push(h("h3", {}, state.draft.name || "Draft"), h("div", { class: "graph-wrap" }, drawGraph(state.draft.def)));
  }
  const d = state.deployment;
  if (d) {
    parts.push(deployedLine(d), h("h3", {}, "Name and triggers"),
      deploymentEditor(d, (next) => {
        state.deployment = next;
        view?.result.querySelector(".deployed")?.replaceWith(deployedLine(next));
      }));
  }
  replace(view.result, ...parts);
}

function deployedLine(d: Deployment): HTMLElement {
  return h("div", { class: "deployed" },
    h("p", {}, "Deployment ", h("a", { href: `#/deployments/${d.deploymentId}` }, h("code", {}, d.deploymentId)), " ", statusBadge(d.status)),
    h("p", {}, "Webhook: ", webhookLine(d.webhookUrl)));
}

// describe says in words what a generation event means.
function describe(ev: WatchGenerationResponse): string {
  const d = (ev.data ?? {}) as JsonObject;
  const problems = Array.isArray(d.problems)
    ? d.problems.map((p) => (isObject(p) ? `${String(p.field ?? "")}: ${String(p.reason ?? "")}` : String(p))).join("; ")
    : "";
  switch (ev.type) {
    case "waiting":
      return String(d.question ?? d.reason ?? "waiting for a description");
    case "start":
      return `started from “${String(d.request ?? "")}”`;
    case "draft":
      return `draft ${String(d.attempt ?? "")}: ${String(d.name ?? "")}`;
    case "debugging":
      if (d.stage === "validate") return `validation of draft ${String(d.attempt ?? "")} ${String(d.status ?? "")}${problems ? `: ${problems}` : ""}`;
      if (d.stage === "dry_run") return `dry run ${String(d.status ?? "")}${d.reason ? `: ${String(d.reason)}` : ""}${d.error ? `: ${String(d.error)}` : ""}`;
      return String(d.stage ?? "checking");
    case "complete":
      return `deployed “${String(d.name ?? "")}” (${String(d.status ?? "")})`;
    case "error":
      return `${String(d.reason ?? "the generation failed")}${problems ? `: ${problems}` : ""}`;
    default:
      return "";
  }
}
