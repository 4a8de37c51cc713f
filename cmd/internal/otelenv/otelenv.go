// Package otelenv builds a binary's OpenTelemetry tracer provider from the
// standard OTEL_* environment variables, so that Flowgate is configured for
// tracing the way every other OpenTelemetry-instrumented process is.
package otelenv

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Usage is the usage text of the variables that configure tracing.
const Usage = `
Tracing (OpenTelemetry, off by default), from the standard environment:
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    	OTLP collector; setting either turns tracing on
  OTEL_TRACES_EXPORTER
    	otlp turns tracing on (collector at localhost:4318), none turns it off
  OTEL_EXPORTER_OTLP_PROTOCOL
    	http/protobuf (default) or grpc
  OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_SDK_DISABLED, ...
    	as the OpenTelemetry specification defines them
`

// TracerProvider returns the tracer provider the environment asks for, and
// a function that flushes the spans not yet exported and stops it; nil and
// a no-op when tracing is off.
//
// Tracing is off unless an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT
// or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER is otlp;
// OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true turn it off. getenv
// makes that decision; the exporter's settings (endpoint, headers, timeout,
// compression), the sampler (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG),
// the batching (OTEL_BSP_*) and the resource (OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES) are read from the process environment by the
// OpenTelemetry SDK itself. service and version name the process when
// OTEL_SERVICE_NAME does not. Export failures are logged to logger.
func TracerProvider(ctx context.Context, getenv func(string) string, service, version string, logger *slog.Logger) (trace.TracerProvider, func(context.Context) error, error) {
	off := func(context.Context) error { return nil }
	on, err := enabled(getenv)
	if err != nil || !on {
		return nil, off, err
	}
	exporter, err := newExporter(ctx, getenv)
	if err != nil {
		return nil, off, err
	}
	fromEnv, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, off, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", service)}
	if version != "" {
		attrs = append(attrs, attribute.String("service.version", version))
	}
	res, err := resource.Merge(resource.NewSchemaless(attrs...), fromEnv)
	if err != nil {
		return nil, off, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	// The SDK reports failed exports to a process-wide handler only.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("tracing", slog.Any("error", err))
	}))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// Flush runs stop (from [TracerProvider]) for at most timeout, even when
// ctx has ended (a signal that asked for the shutdown), so that the spans
// not yet exported are.
func Flush(ctx context.Context, stop func(context.Context) error, timeout time.Duration, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := stop(ctx); err != nil {
		logger.Warn("could not flush traces", slog.Any("error", err))
	}
}

func enabled(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch exporter := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exporter {
	case "":
		return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	case "otlp":
		return true, nil
	case "none":
		return false, nil
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER %q: want otlp or none", exporter)
	}
}

// newExporter is the OTLP exporter of the protocol asked for: HTTP with
// protobuf bodies by default, as the OpenTelemetry specification says, or
// gRPC.
func newExporter(ctx context.Context, getenv func(string) string) (sdktrace.SpanExporter, error) {
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var (
		exporter sdktrace.SpanExporter
		err      error
	)
	switch strings.TrimSpace(protocol) {
	case "", "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTLP protocol %q: want http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("could not build the OTLP trace exporter: %w", err)
	}
	return exporter, nil
}
