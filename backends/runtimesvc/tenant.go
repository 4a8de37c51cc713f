package runtimesvc

import (
	"encoding/base64"
	"net/http"
)

// headerTenant carries the caller's tenant, set from the gateway's signed
// token by the backends' authentication, which refuses calls naming no
// tenant: there is no shared tenant for callers without one.
const headerTenant = "X-Flowgate-Tenant"

// tenantOf scopes every read and write: another tenant's rows are invisible.
func tenantOf(h http.Header) string { return h.Get(headerTenant) }

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
