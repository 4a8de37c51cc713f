// The console's one way to the gateway: Connect clients generated from the
// contract (gen/ts), on the page's own origin, carrying the signed-in
// credential. Credentials live in memory; the SSE cookie mirrors them only
// because EventSource cannot send headers.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { WorkflowAgentService } from "../../gen/ts/workflow/agent/v1/agent_pb";
import { WorkflowRuntimeService } from "../../gen/ts/workflow/runtime/v1/runtime_pb";

export type CredentialKind = "token" | "key";

interface Credential {
  kind: CredentialKind;
  value: string;
}

let credential: Credential | undefined;
let onSignedOut: (reason: string) => void = () => {};

// cookieName is the gateway's SSE cookie, which the page it serves names.
function cookieName(): string {
  return document.querySelector<HTMLMetaElement>('meta[name="flowgate-sse-cookie"]')?.content || "flowgate_token";
}

function writeCookie(value: string, maxAge?: number): void {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  const age = maxAge === undefined ? "" : `; Max-Age=${maxAge}`;
  document.cookie = `${cookieName()}=${value}; Path=/api/v1/; SameSite=Strict${secure}${age}`;
}

// cookieSafe: a credential with characters a cookie cannot carry cannot
// reach EventSource either.
const cookieSafe = /^[A-Za-z0-9._~+/=-]+$/;

export function signIn(kind: CredentialKind, value: string): void {
  value = value.trim();
  credential = { kind, value };
  if (cookieSafe.test(value)) {
    writeCookie(value);
  }
}

export function signOut(reason = ""): void {
  const had = credential !== undefined;
  credential = undefined;
  writeCookie("", 0);
  if (had) onSignedOut(reason);
}

export function signedIn(): boolean {
  return credential !== undefined;
}

export function whenSignedOut(fn: (reason: string) => void): void {
  onSignedOut = fn;
}

const authenticate: Interceptor = (next) => async (req) => {
  if (credential?.kind === "token") {
    req.header.set("Authorization", `Bearer ${credential.value}`);
  } else if (credential?.kind === "key") {
    req.header.set("X-API-Key", credential.value);
  }
  try {
    return await next(req);
  } catch (err) {
    if (credential && ConnectError.from(err).code === Code.Unauthenticated) {
      signOut(explain(err));
    }
    throw err;
  }
};

const transport = createConnectTransport({
  baseUrl: location.origin,
  useBinaryFormat: true,
  interceptors: [authenticate],
});

export const agent = createClient(WorkflowAgentService, transport);
export const runtime = createClient(WorkflowRuntimeService, transport);

// authRequired asks the gateway whether calls need credentials: a call
// without any is refused as unauthenticated only when authentication is on.
export async function authRequired(): Promise<boolean> {
  try {
    await runtime.listDeployments({ page: 1, pageSize: 1 });
    return false;
  } catch (err) {
    const code = ConnectError.from(err).code;
    if (code === Code.Unauthenticated) return true;
    if (code === Code.PermissionDenied) return false;
    throw err;
  }
}

const words: Partial<Record<Code, string>> = {
  [Code.Canceled]: "The request was cancelled.",
  [Code.InvalidArgument]: "The gateway did not accept what was sent.",
  [Code.DeadlineExceeded]: "The request took too long and was given up.",
  [Code.NotFound]: "That does not exist (any more).",
  [Code.AlreadyExists]: "That already exists.",
  [Code.PermissionDenied]: "Your credentials do not allow this.",
  [Code.ResourceExhausted]: "Too many requests, or too large; wait a moment and try again.",
  [Code.FailedPrecondition]: "This cannot be done in the current state.",
  [Code.Unimplemented]: "The gateway does not offer this.",
  [Code.Internal]: "The service failed.",
  [Code.Unavailable]: "The service is unreachable right now; try again shortly.",
  [Code.Unauthenticated]: "You are not signed in, or your credentials were not accepted.",
};

// restWords are the contract's REST error codes, which SSE errors carry.
const restWords: Record<string, Code> = {
  VALIDATION_ERROR: Code.InvalidArgument,
  UNAUTHORIZED: Code.Unauthenticated,
  FORBIDDEN: Code.PermissionDenied,
  NOT_FOUND: Code.NotFound,
  CONFLICT: Code.AlreadyExists,
  PAYLOAD_TOO_LARGE: Code.ResourceExhausted,
  RATE_LIMITED: Code.ResourceExhausted,
  INTERNAL_ERROR: Code.Internal,
  BAD_GATEWAY: Code.Unavailable,
  SERVICE_UNAVAILABLE: Code.Unavailable,
  GATEWAY_TIMEOUT: Code.DeadlineExceeded,
};

// explain turns an error (a Connect error, or the contract's
// {error: {code, message}} from an SSE stream) into a sentence a person
// can act on, followed by the gateway's own words.
export function explain(err: unknown): string {
  const shaped = (err as { error?: { code?: string; message?: string } })?.error;
  if (shaped && typeof shaped.code === "string") {
    const code = restWords[shaped.code];
    return join(code === undefined ? "Something went wrong." : words[code], shaped.message);
  }
  const ce = ConnectError.from(err);
  return join(words[ce.code] ?? "Something went wrong.", ce.rawMessage);
}

function join(sentence: string | undefined, detail: string | undefined): string {
  detail = detail?.trim();
  if (!detail || detail === sentence) return sentence ?? "";
  return `${sentence} (${detail})`;
}
