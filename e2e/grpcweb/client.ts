// Drives Google's official gRPC-Web client (the grpc-web npm package)
// against a Flowgate gateway, in the wire mode given on the command line
// ("text", the client's default, or "binary"), and prints what each call
// saw as one JSON line: the Go test in e2e/ checks the codes and messages.
//
// There is no protoc-gen-grpc-web here: the method descriptors are built
// by hand around the protobuf-es stubs in gen/ts. In Node the client needs
// an XMLHttpRequest, which xhr2 provides.
import { GrpcWebClientBase, MethodDescriptor, RpcError } from "grpc-web";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import XMLHttpRequestForNode from "xhr2";
import {
  ChatRequestSchema,
  ChatResponseSchema,
  CreateSessionRequestSchema,
  CreateSessionResponseSchema,
} from "../../gen/ts/workflow/agent/v1/agent_pb";
import { GetDeploymentRequestSchema, GetDeploymentResponseSchema } from "../../gen/ts/workflow/runtime/v1/runtime_pb";

declare const process: { argv: string[]; exitCode?: number };

(globalThis as { XMLHttpRequest?: unknown }).XMLHttpRequest = XMLHttpRequestForNode;

const [baseURL, format] = process.argv.slice(2);
const client = new GrpcWebClientBase({ format });

// Placeholder constructors: the client only calls the (de)serializers.
class Unused {}

function method<I extends DescMessage, O extends DescMessage>(
  path: string, kind: "unary" | "server_streaming", input: I, output: O,
): MethodDescriptor<MessageShape<I>, MessageShape<O>> {
  return new MethodDescriptor(path, kind, Unused, Unused,
    (msg: MessageShape<I>) => toBinary(input, msg),
    (bytes: Uint8Array) => fromBinary(output, bytes));
}

const createSession = method("/workflow.agent.v1.WorkflowAgentService/CreateSession", "unary",
  CreateSessionRequestSchema, CreateSessionResponseSchema);
const getDeployment = method("/workflow.runtime.v1.WorkflowRuntimeService/GetDeployment", "unary",
  GetDeploymentRequestSchema, GetDeploymentResponseSchema);
const chat = method("/workflow.agent.v1.WorkflowAgentService/Chat", "server_streaming",
  ChatRequestSchema, ChatResponseSchema);

// Outcome is what one call saw; code is the gRPC status code the client
// reported (0 for success).
interface Outcome {
  name: string;
  code: number;
  message: string;
  messages: string[];
  status?: number; // from the stream's "status" event
  ended: boolean; // the stream's "end" event fired
}

async function unary<Req, Res>(
  name: string, desc: MethodDescriptor<Req, Res>, req: Req, show: (res: Res) => string,
): Promise<Outcome> {
  try {
    const res = await client.unaryCall(baseURL + desc.getName(), req, {}, desc);
    return { name, code: 0, message: "", messages: [show(res)], ended: true };
  } catch (err) {
    const e = err as RpcError;
    return { name, code: e.code, message: e.message, messages: [], ended: false };
  }
}

function stream(name: string, init: MessageInitShape<typeof ChatRequestSchema>): Promise<Outcome> {
  return new Promise((resolve) => {
    const out: Outcome = { name, code: 0, message: "", messages: [], ended: false };
    const call = client.serverStreaming(baseURL + chat.getName(), create(ChatRequestSchema, init), {}, chat);
    // The client may report the status before or after "end" or "error":
    // settle once the current events have all run.
    const settle = () => setTimeout(() => resolve(out), 50);
    call.on("data", (msg) => out.messages.push(msg.content));
    call.on("status", (s) => { out.status = s.code; });
    call.on("error", (e) => { out.code = e.code; out.message = e.message; settle(); });
    call.on("end", () => { out.ended = true; settle(); });
  });
}

async function main(): Promise<void> {
  const created = await unary("create session", createSession,
    create(CreateSessionRequestSchema, { action: "create" }), (res) => res.sessionId);
  const sessionId = created.messages[0] ?? "";
  const outcomes = [
    created,
    await unary("invalid action", createSession,
      create(CreateSessionRequestSchema, { action: "explode" }), (res) => res.sessionId),
    await unary("missing deployment", getDeployment,
      create(GetDeploymentRequestSchema, { deploymentId: "no-such-deployment" }), (res) => res.deployment?.name ?? ""),
    await stream("chat", { sessionId, userMessage: "when a webhook receives an order, respond with 201" }),
    await stream("chat in a missing session", { sessionId: "no-such-session", userMessage: "hello" }),
  ];
  for (const o of outcomes) {
    console.log(JSON.stringify(o));
  }
}

main().catch((err) => {
  console.log(JSON.stringify({ name: "client", code: -1, message: String(err), messages: [], ended: false }));
  process.exitCode = 1;
});
