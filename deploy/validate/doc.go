// Package validate holds the tests that check deploy/ and compose.yaml
// without a cluster or a container engine. It is a module of its own so
// that the Kubernetes and kustomize libraries stay out of the gateway's
// go.mod.
package validate
