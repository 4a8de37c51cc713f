package server

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// A REST read answers HEAD as GET without the content (RFC 9110, 9.3.2):
// the same status and headers, no body, on HTTP/1.1 and HTTP/2; a route
// without GET refuses it, and a 405 names HEAD where GET is allowed.
func TestRESTHead(t *testing.T) {
	t.Parallel()
	b := startReplica(t, nil)
	_, url := startGateway(t, Config{
		Engine: Upstream{Address: b.addr}, Runtime: Upstream{Address: b.addr}, Agent: Upstream{Address: b.addr},
	})
	const path = "/api/v1/workflow/deployments/d7"
	get, err := http1Client(t).Get(url + path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(get.Body)
	_ = get.Body.Close()
	if get.StatusCode != http.StatusOK || !strings.Contains(string(body), `"deployment_id":"d7"`) {
		t.Fatalf("GET: %d %s", get.StatusCode, body)
	}

	t.Run("http1", func(t *testing.T) {
		// A body after the HEAD answer would be read as the next answer.
		conn, br := dialH1(t, url)
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "HEAD "+path+" HTTP/1.1\r\nHost: gw\r\n\r\nGET /livez HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		head, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
		if err != nil {
			t.Fatal(err)
		}
		next, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the answer after HEAD's: %v", err)
		}
		rest, _ := io.ReadAll(next.Body)
		if next.StatusCode != http.StatusOK || !strings.Contains(string(rest), `"status"`) {
			t.Errorf("the answer after HEAD's: %d %q; HEAD sent a body", next.StatusCode, rest)
		}
		sameHeaders(t, head, get, len(body))
	})
	t.Run("h2c", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodHead, url+path, nil)
		head, err := h2cClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer head.Body.Close()
		if n, _ := io.Copy(io.Discard, head.Body); n != 0 {
			t.Errorf("HEAD sent %d bytes of body", n)
		}
		sameHeaders(t, head, get, len(body))
	})
	for method, tc := range map[string]struct{ path, allow string }{
		http.MethodHead: {"/api/v1/session", "POST"},                       // a route without GET
		http.MethodPut:  {"/api/v1/workflow/deployments", "GET,HEAD,POST"}, // a route with GET
	} {
		req, _ := http.NewRequestWithContext(t.Context(), method, url+tc.path, nil)
		res, err := http1Client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		// The transcoder lists the methods in no fixed order.
		allow := strings.Split(res.Header.Get("Allow"), ",")
		slices.Sort(allow)
		if res.StatusCode != http.StatusMethodNotAllowed || strings.Join(allow, ",") != tc.allow {
			t.Errorf("%s %s: %d, Allow %q; want 405 with Allow %q", method, tc.path, res.StatusCode, res.Header.Get("Allow"), tc.allow)
		}
	}
}

// sameHeaders checks that a HEAD answer says what the GET answer did.
func sameHeaders(t *testing.T, head, get *http.Response, length int) {
	t.Helper()
	if head.StatusCode != get.StatusCode {
		t.Errorf("HEAD %d, GET %d", head.StatusCode, get.StatusCode)
	}
	for _, name := range []string{"Content-Type", "Cache-Control"} {
		if head.Header.Get(name) != get.Header.Get(name) {
			t.Errorf("%s: HEAD %q, GET %q", name, head.Header.Get(name), get.Header.Get(name))
		}
	}
	if head.ContentLength != int64(length) {
		t.Errorf("HEAD Content-Length %d, GET's body %d bytes", head.ContentLength, length)
	}
	if head.Header.Get("X-Request-Id") == "" {
		t.Error("HEAD answer without a request id")
	}
}
