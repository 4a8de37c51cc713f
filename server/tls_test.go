package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// selfSigned writes a certificate for 127.0.0.1 and its key to dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "flowgate test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLSServesHTTP2ByALPNAndHTTP1(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	var pool *x509.CertPool
	cfg.TLSCertFile, cfg.TLSKeyFile, pool = selfSigned(t, t.TempDir())
	_, url := startGateway(t, cfg)
	url = "https" + url[len("http"):]

	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	res, err := engineClient(t, url, nil).ExecuteWorkflow(t.Context(), execute("plain"))
	if err == nil {
		t.Fatalf("a cleartext client reached a TLS gateway: %v", res)
	}
	grpcRes, err := enginev1Client(&http.Client{Transport: h2}, url, connect.WithGRPC()).ExecuteWorkflow(t.Context(), execute("over-tls"))
	if err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}
	if grpcRes.Msg.GetResult().GetOutput().GetStringValue() != "over-tls" {
		t.Errorf("gRPC over TLS: %v", grpcRes.Msg)
	}

	for _, tc := range []struct {
		name  string
		tr    *http.Transport
		major int
	}{
		{"http2 by ALPN", h2, 2},
		{"http1.1", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}, 1},
	} {
		res, err := (&http.Client{Transport: tc.tr}).Get(url + "/health")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK || res.ProtoMajor != tc.major {
			t.Errorf("%s: status %d over HTTP/%d", tc.name, res.StatusCode, res.ProtoMajor)
		}
		tc.tr.CloseIdleConnections()
	}
}

func TestTLSConfigErrors(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	cfg.TLSCertFile = filepath.Join(t.TempDir(), "missing.pem")
	if _, err := New(cfg); err == nil {
		t.Error("a certificate without a key was accepted")
	}
	cfg.TLSKeyFile = cfg.TLSCertFile
	if _, err := New(cfg); err == nil {
		t.Error("a missing certificate file was accepted")
	}
}
