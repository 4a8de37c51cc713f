// The Flowgate console: a single page served by the gateway at "/", routed
// by the URL's fragment so that every page has a link of its own.
import "./style.css";
import { authRequired, explain, runtime, signedIn, signIn, signOut, whenSignedOut } from "./api";
import { chatPage, reset as resetChat } from "./chat";
import { deploymentPage, deploymentsPage } from "./deployments";
import { executionPage, executionsPage } from "./executions";
import { h, replace } from "./dom";
import { Code, ConnectError } from "@connectrpc/connect";

const main = document.getElementById("main")!;
const who = document.getElementById("who")!;
let authOn: boolean | undefined;
let signOutReason = "";
let cleanup: (() => void) | void;

function route(): void {
  if (cleanup) cleanup();
  cleanup = undefined;
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?", 2);
  const params = new URLSearchParams(query);
  const parts = (path || "/chat").split("/").filter(Boolean);
  document.querySelectorAll<HTMLAnchorElement>("header nav a").forEach((a) =>
    a.classList.toggle("current", a.getAttribute("href")?.slice(2) === parts[0]));
  renderWho();
  if (authOn && !signedIn()) {
    signInPage();
    return;
  }
  const id = parts[1] ? decodeURIComponent(parts[1]) : "";
  switch (parts[0]) {
    case "deployments":
      cleanup = id ? deploymentPage(main, id) : deploymentsPage(main, params);
      break;
    case "executions":
      cleanup = id ? executionPage(main, id) : executionsPage(main, params);
      break;
    default:
      cleanup = chatPage(main);
  }
}

function renderWho(): void {
  if (authOn === false) {
    replace(who, h("span", { class: "muted" }, "Authentication is off"));
  } else if (signedIn()) {
    replace(who, h("button", { type: "button", onclick: () => signOut() }, "Sign out"));
  } else {
    replace(who);
  }
}

function signInPage(): void {
  const kind = h("select", { name: "kind", "aria-label": "credential kind" },
    h("option", { value: "key" }, "API key"), h("option", { value: "token" }, "Bearer token (JWT)"));
  const secret = h("input", { name: "credential", type: "password", autocomplete: "off", required: true, "aria-label": "credential" });
  const problem = h("p", { class: "error", role: "alert" }, signOutReason);
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "signin" },
    h("label", {}, "Credential", kind), h("label", {}, "Value", secret), submit, problem);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    replace(problem);
    signIn(kind.value === "token" ? "token" : "key", secret.value);
    try {
      await runtime.listDeployments({ page: 1, pageSize: 1 });
    } catch (err) {
      // A key without workflows:read still chats; only a refused
      // credential keeps the user here.
      if (ConnectError.from(err).code !== Code.PermissionDenied) {
        // Signing out shows this page again, with the reason.
        signOut(explain(err));
        return;
      }
    }
    signOutReason = "";
    route();
  });
  replace(main, h("section", { class: "panel narrow" }, h("h2", {}, "Sign in"),
    h("p", {}, "This gateway requires credentials. They are kept in this page's memory (and a same-site cookie the event streams read) until you sign out or close the tab."),
    form));
  secret.focus();
}

whenSignedOut((reason) => {
  // The next user of this tab must not see this one's conversation.
  resetChat();
  signOutReason = reason;
  route();
});

window.addEventListener("hashchange", route);

authRequired().then((on) => {
  authOn = on;
  route();
}, (err) => {
  replace(main, h("section", { class: "panel" }, h("h2", {}, "The gateway is not answering"), h("p", { class: "error" }, explain(err))));
});
