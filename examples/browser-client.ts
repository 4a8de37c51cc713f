// A browser client of Flowgate through the generated stubs in gen/ts:
// Connect protocol over fetch, JSON on the wire, and a server stream.
// Bundle it with any bundler; it is type-checked by `npx tsc`.
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { WorkflowAgentService } from "../gen/ts/workflow/agent/v1/agent_pb";
import { WorkflowRuntimeService } from "../gen/ts/workflow/runtime/v1/runtime_pb";

const transport = createConnectTransport({ baseUrl: "http://localhost:8080" });
const agent = createClient(WorkflowAgentService, transport);
const runtime = createClient(WorkflowRuntimeService, transport);

export async function describeAndWatch(request: string): Promise<string | undefined> {
  const { sessionId } = await agent.createSession({ action: "create" });
  for await (const piece of agent.chat({ sessionId, userMessage: request })) {
    console.log(piece.content);
  }
  for await (const event of agent.watchGeneration({ sessionId })) {
    console.log(event.type, event.data);
    if (event.type === "complete") {
      const { deployment } = await runtime.getDeployment({ deploymentId: event.workflowId });
      return deployment?.webhookUrl;
    }
    if (event.type === "error") {
      return undefined;
    }
  }
  return undefined;
}
