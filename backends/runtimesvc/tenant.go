package runtimesvc

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// headerTenant is set by the gateway from the authenticated caller.
const headerTenant = "X-Flowgate-Tenant"

const defaultTenant = "default"

// tenantOf scopes every read and write: another tenant's rows are invisible.
func tenantOf(h http.Header) string {
	if t := strings.TrimSpace(h.Get(headerTenant)); t != "" {
		return t
	}
	return defaultTenant
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
