package server

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	optionsv1 "github.com/flowgate/flowgate/gen/go/flowgate/options/v1"
)

// openAPI builds the OpenAPI 3.1 document of the REST surface from the
// services' descriptors and their google.api.http rules, so that the
// document cannot drift from what the transcoder actually routes.
func openAPI(version string, svcs []protoreflect.ServiceDescriptor) ([]byte, error) {
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{
			"title":       "Flowgate",
			"version":     version,
			"description": "REST surface of the Workflow Agent, Workflow Runtime and Workflow Engine services. Every operation is also reachable over Connect, gRPC and gRPC-Web at /<package>.<Service>/<Method>.",
		},
		"components": map[string]any{
			"securitySchemes": map[string]any{
				"bearer": map[string]any{"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
				"apiKey": map[string]any{"type": "apiKey", "in": "header", "name": "X-API-Key"},
			},
		},
		"security": []any{map[string]any{"bearer": []any{}}, map[string]any{"apiKey": []any{}}},
	}
	b := &openAPIBuilder{schemas: map[string]any{}, paths: map[string]map[string]any{}}
	for _, svc := range svcs {
		methods := svc.Methods()
		for i := range methods.Len() {
			if err := b.addMethod(svc, methods.Get(i)); err != nil {
				return nil, err
			}
		}
	}
	b.schemas["Error"] = errorSchema()
	b.addHealth()
	doc["paths"] = b.paths
	doc["components"].(map[string]any)["schemas"] = b.schemas
	return json.MarshalIndent(doc, "", "  ")
}

type openAPIBuilder struct {
	schemas map[string]any
	paths   map[string]map[string]any
}

var pathVar = regexp.MustCompile(`\{([a-z_.]+)(=[^}]*)?\}`)

func (b *openAPIBuilder) addMethod(svc protoreflect.ServiceDescriptor, md protoreflect.MethodDescriptor) error {
	rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
	if rule == nil {
		return nil
	}
	verb, path := httpRulePattern(rule)
	if verb == "" {
		return fmt.Errorf("method %s: unsupported http rule", md.FullName())
	}
	var pathFields []string
	path = pathVar.ReplaceAllStringFunc(path, func(m string) string {
		name := pathVar.FindStringSubmatch(m)[1]
		pathFields = append(pathFields, name)
		return "{" + name + "}"
	})
	op := map[string]any{
		"operationId": string(md.Name()),
		"tags":        []string{string(svc.Name())},
		"summary":     summary(string(md.Name())),
		"description": "RPC: `/" + string(svc.FullName()) + "/" + string(md.Name()) + "`",
	}
	if access, _ := proto.GetExtension(md.Options(), optionsv1.E_Access).(*optionsv1.AccessRule); access != nil {
		if access.GetPublic() {
			op["security"] = []any{}
		} else if access.GetScope() != "" {
			op["x-required-scope"] = access.GetScope()
		}
	}
	var params []any
	for _, name := range pathFields {
		params = append(params, map[string]any{"name": name, "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
	}
	in := md.Input()
	switch body := rule.GetBody(); body {
	case "":
		fields := in.Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			if f.Message() != nil || f.IsList() || f.IsMap() || slices.Contains(pathFields, string(f.Name())) {
				continue
			}
			params = append(params, map[string]any{"name": string(f.Name()), "in": "query", "schema": b.fieldSchema(f)})
		}
	case "*":
		op["requestBody"] = map[string]any{"required": true, "content": map[string]any{
			"application/json": map[string]any{"schema": b.messageRef(in)},
		}}
	default:
		f := in.Fields().ByName(protoreflect.Name(body))
		if f != nil && f.Message() != nil && f.Message().FullName() == "google.api.HttpBody" {
			op["requestBody"] = map[string]any{"required": false, "content": map[string]any{
				"*/*": map[string]any{"schema": map[string]any{"type": "string", "format": "binary"}},
			}}
		} else if f != nil {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				"application/json": map[string]any{"schema": b.fieldSchema(f)},
			}}
		}
	}
	if len(params) > 0 {
		op["parameters"] = params
	}
	op["responses"] = b.responses(md, rule)
	if b.paths[path] == nil {
		b.paths[path] = map[string]any{}
	}
	b.paths[path][verb] = op
	return nil
}

func (b *openAPIBuilder) responses(md protoreflect.MethodDescriptor, rule *annotations.HttpRule) map[string]any {
	out := md.Output()
	var schema any = b.messageRef(out)
	contentType := "application/json"
	if rb := rule.GetResponseBody(); rb != "" {
		if f := out.Fields().ByName(protoreflect.Name(rb)); f != nil {
			if f.Message() != nil && f.Message().FullName() == "google.api.HttpBody" {
				contentType, schema = "*/*", map[string]any{"type": "string", "format": "binary"}
			} else {
				schema = b.fieldSchema(f)
			}
		}
	}
	ok := map[string]any{"description": "OK", "content": map[string]any{contentType: map[string]any{"schema": schema}}}
	if md.IsStreamingServer() {
		ok = map[string]any{
			"description": "A stream of Server-Sent Events; each data line is one JSON object of the schema given.",
			"content":     map[string]any{"text/event-stream": map[string]any{"schema": schema}},
		}
	}
	errRef := map[string]any{"description": "An error in the contract's shape", "content": map[string]any{
		"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Error"}},
	}}
	return map[string]any{"200": ok, "default": errRef}
}

func (b *openAPIBuilder) messageRef(md protoreflect.MessageDescriptor) any {
	if s := wellKnownSchema(md.FullName()); s != nil {
		return s
	}
	name := string(md.FullName())
	if _, done := b.schemas[name]; !done {
		b.schemas[name] = nil // placeholder against recursion
		props := map[string]any{}
		fields := md.Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			props[string(f.Name())] = b.fieldSchema(f)
		}
		b.schemas[name] = map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	}
	return map[string]any{"$ref": "#/components/schemas/" + name}
}

func (b *openAPIBuilder) fieldSchema(f protoreflect.FieldDescriptor) any {
	if f.IsMap() {
		return map[string]any{"type": "object", "additionalProperties": b.singleSchema(f.MapValue())}
	}
	if f.IsList() {
		return map[string]any{"type": "array", "items": b.singleSchema(f)}
	}
	return b.singleSchema(f)
}

func (b *openAPIBuilder) singleSchema(f protoreflect.FieldDescriptor) any {
	switch f.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return b.messageRef(f.Message())
	case protoreflect.BoolKind:
		return map[string]any{"type": "boolean"}
	case protoreflect.StringKind:
		return map[string]any{"type": "string"}
	case protoreflect.BytesKind:
		return map[string]any{"type": "string", "format": "byte"}
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind, protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return map[string]any{"type": "integer", "format": "int32"}
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return map[string]any{"type": "string", "format": "int64"}
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return map[string]any{"type": "number"}
	case protoreflect.EnumKind:
		var names []string
		values := f.Enum().Values()
		for i := range values.Len() {
			names = append(names, string(values.Get(i).Name()))
		}
		return map[string]any{"type": "string", "enum": names}
	}
	return map[string]any{}
}

func wellKnownSchema(name protoreflect.FullName) any {
	switch name {
	case "google.protobuf.Timestamp":
		return map[string]any{"type": "string", "format": "date-time"}
	case "google.protobuf.Duration":
		return map[string]any{"type": "string", "description": "seconds with an s suffix, e.g. \"30s\"", "example": "30s"}
	case "google.protobuf.Struct":
		return map[string]any{"type": "object"}
	case "google.protobuf.Value":
		return map[string]any{}
	case "google.protobuf.ListValue":
		return map[string]any{"type": "array"}
	case "google.api.HttpBody":
		return map[string]any{"type": "string", "format": "binary"}
	}
	return nil
}

func errorSchema() any {
	return map[string]any{
		"type": "object",
		"properties": map[string]any{
			"error": map[string]any{
				"type":     "object",
				"required": []string{"code", "message"},
				"properties": map[string]any{
					"code": map[string]any{"type": "string", "enum": []string{
						"VALIDATION_ERROR", "UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "METHOD_NOT_ALLOWED", "CONFLICT",
						"PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "RATE_LIMITED", "INTERNAL_ERROR", "NOT_IMPLEMENTED",
						"BAD_GATEWAY", "GATEWAY_TIMEOUT",
					}},
					"message": map[string]any{"type": "string"},
					"details": map[string]any{"type": "object", "description": "for validation errors: field and reason"},
				},
			},
		},
	}
}

func (b *openAPIBuilder) addHealth() {
	op := func(id string) map[string]any {
		return map[string]any{
			"operationId": id, "tags": []string{"Gateway"}, "summary": "Gateway and upstream health", "security": []any{},
			"responses": map[string]any{"200": map[string]any{"description": "healthy or degraded", "content": map[string]any{
				"application/json": map[string]any{"schema": map[string]any{"type": "object", "properties": map[string]any{
					"status":    map[string]any{"type": "string", "enum": []string{"healthy", "degraded"}},
					"service":   map[string]any{"type": "string"},
					"timestamp": map[string]any{"type": "string", "format": "date-time"},
					"version":   map[string]any{"type": "string"},
					"upstreams": map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "string"}},
				}}},
			}}},
		}
	}
	b.paths["/health"] = map[string]any{"get": op("Health")}
	b.paths["/api/v1/health"] = map[string]any{"get": op("HealthV1")}
}

func httpRulePattern(rule *annotations.HttpRule) (string, string) {
	switch p := rule.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return "get", p.Get
	case *annotations.HttpRule_Post:
		return "post", p.Post
	case *annotations.HttpRule_Put:
		return "put", p.Put
	case *annotations.HttpRule_Delete:
		return "delete", p.Delete
	case *annotations.HttpRule_Patch:
		return "patch", p.Patch
	}
	return "", ""
}

// summary turns a method name into words: "CreateDeployment" → "Create deployment".
func summary(name string) string {
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
