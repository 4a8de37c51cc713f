package interceptors

import (
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func benchVerify(b *testing.B, method jwt.SigningMethod, key any, kid string) {
	fx := newFixture(b)
	tok := mint(b, method, key, kid, claims(fx.now, nil))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := fx.v.Verify(b.Context(), tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyHS256(b *testing.B) {
	benchVerify(b, jwt.SigningMethodHS256, []byte(testSecret), "")
}

func BenchmarkVerifyRS256(b *testing.B) {
	benchVerify(b, jwt.SigningMethodRS256, testKeys().rsa, "rsa1")
}

func BenchmarkVerifyES256(b *testing.B) {
	benchVerify(b, jwt.SigningMethodES256, testKeys().ec, "ec1")
}

func BenchmarkAuthenticateAPIKey(b *testing.B) {
	keys, _ := ParseAPIKeys(HashAPIKey("bench-key") + ":svc:t:workflows:read")
	a, err := NewAuthenticator(b.Context(), AuthConfig{APIKeys: keys})
	if err != nil {
		b.Fatal(err)
	}
	h := http.Header{}
	h.Set(HeaderAPIKey, "bench-key")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(b.Context(), h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLocalLimiter(b *testing.B) {
	l := NewLocalLimiter(nil)
	limit := Limit{Rate: 1e9, Burst: 1 << 30}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Allow(b.Context(), "ip:203.0.113.9", limit)
		}
	})
	_ = time.Now
}
