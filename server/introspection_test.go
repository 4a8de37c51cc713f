package server

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/encoding/protowire"
)

func TestReflectionListsServices(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, version := range []string{"v1", "v1alpha"} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			names := listServices(t, url, version)
			for _, want := range []string{"workflow.agent.v1.WorkflowAgentService", "workflow.runtime.v1.WorkflowRuntimeService", "workflow.engine.v1.WorkflowEngineService", "grpc.health.v1.Health"} {
				if !slices.Contains(names, want) {
					t.Errorf("reflection lacks %s: %v", want, names)
				}
			}
		})
	}
}

func listServices(t *testing.T, url, version string) []string {
	t.Helper()
	const listServicesField, listServicesResponseField, serviceField, nameField = 7, 6, 1, 1
	req := protowire.AppendTag(nil, listServicesField, protowire.BytesType)
	req = protowire.AppendString(req, "*")
	pkg := "grpc.reflection." + version
	client := connect.NewClient[frame, frame](h2cClient(t), url+"/"+pkg+".ServerReflection/ServerReflectionInfo", connect.WithGRPC(), connect.WithCodec(passthroughCodec{}))
	stream := client.CallBidiStream(t.Context())
	if err := stream.Send(&frame{data: req}); err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseRequest()
	res, err := stream.Receive()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseResponse()
	var names []string
	for _, list := range wireFields(t, res.data, listServicesResponseField) {
		for _, svc := range wireFields(t, list, serviceField) {
			for _, name := range wireFields(t, svc, nameField) {
				names = append(names, string(name))
			}
		}
	}
	return names
}

func wireFields(t *testing.T, msg []byte, num protowire.Number) [][]byte {
	t.Helper()
	var out [][]byte
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			t.Fatal(protowire.ParseError(l))
		}
		msg = msg[l:]
		if typ == protowire.BytesType && n == num {
			v, l := protowire.ConsumeBytes(msg)
			if l < 0 {
				t.Fatal(protowire.ParseError(l))
			}
			out = append(out, v)
			msg = msg[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(n, typ, msg)
		if l < 0 {
			t.Fatal(protowire.ParseError(l))
		}
		msg = msg[l:]
	}
	return out
}

func TestHealth(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, path := range []string{"/health", "/api/v1/health"} {
		res, body := restCall(t, http.MethodGet, url+path, "", nil)
		if res.StatusCode != 200 {
			t.Fatalf("%s: status %d", path, res.StatusCode)
		}
		// The test backends serve no health service, so the upstreams are
		// unknown and the gateway reports itself degraded.
		if body["service"] != "flowgate" || body["status"] != "degraded" {
			t.Errorf("%s: body = %v", path, body)
		}
		if _, err := time.Parse(time.RFC3339, body["timestamp"].(string)); err != nil {
			t.Errorf("%s: timestamp: %v", path, err)
		}
		if _, ok := body["version"]; !ok {
			t.Errorf("%s: no version", path)
		}
	}
	res, err := grpchealth.NewClient(h2cClient(t), url, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The gateway itself serves although its upstreams do not: one backend
	// down must not take every gateway out of a load balancer.
	if res.Status != grpchealth.StatusServing {
		t.Errorf("overall status = %v with unhealthy upstreams", res.Status)
	}
	res, err = grpchealth.NewClient(h2cClient(t), url, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{Service: "workflow.engine.v1.WorkflowEngineService"})
	if err != nil || res.Status != grpchealth.StatusNotServing {
		t.Errorf("engine status = %v, %v with an unhealthy engine", res, err)
	}
}
