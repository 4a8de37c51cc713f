package interceptors

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// minRSABits is the smallest RSA modulus accepted for signature checks.
const minRSABits = 2048

// verificationKey is one key with the algorithms it may verify. Binding the
// algorithm to the key (never taking it from the token alone) is what makes
// "alg: none" and HS/RS confusion impossible: an HMAC secret is only ever
// offered for HS256 and a public key only for its own family.
type verificationKey struct {
	kid  string
	algs []string
	key  any // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

func (k verificationKey) allows(alg string) bool { return slices.Contains(k.algs, alg) }

var rsaAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}

// algsForKey returns the algorithms a public key may verify; declared, when
// non-empty, is the alg a JWKS entry pins the key to.
func algsForKey(key any, declared string) ([]string, error) {
	var family []string
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits is too small (minimum %d)", k.N.BitLen(), minRSABits)
		}
		family = rsaAlgs
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			family = []string{"ES256"}
		case elliptic.P384():
			family = []string{"ES384"}
		case elliptic.P521():
			family = []string{"ES512"}
		default:
			return nil, errors.New("unsupported elliptic curve")
		}
	case ed25519.PublicKey:
		family = []string{"EdDSA"}
	default:
		return nil, fmt.Errorf("unsupported key type %T", key)
	}
	if declared == "" {
		return family, nil
	}
	if !slices.Contains(family, declared) {
		return nil, fmt.Errorf("alg %q does not match the key type", declared)
	}
	return []string{declared}, nil
}

// loadPEMKeys reads every public key of a PEM file. Their kid is the file's
// base name without extension.
func loadPEMKeys(path string) ([]verificationKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key file %q: %w", path, err)
	}
	kid := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	var keys []verificationKey
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		pub, err := parsePEMBlock(block)
		if err != nil {
			return nil, fmt.Errorf("public key file %q: %w", path, err)
		}
		algs, err := algsForKey(pub, "")
		if err != nil {
			return nil, fmt.Errorf("public key file %q: %w", path, err)
		}
		keys = append(keys, verificationKey{kid: kid, algs: algs, key: pub})
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("public key file %q holds no PEM public key", path)
	}
	return keys, nil
}

func parsePEMBlock(block *pem.Block) (any, error) {
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return cert.PublicKey, nil
	default:
		return nil, fmt.Errorf("PEM block %q is not a public key (private keys are refused)", block.Type)
	}
}

// jwk is the subset of RFC 7517 needed for signature verification keys.
type jwk struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Alg    string   `json:"alg"`
	Use    string   `json:"use"`
	KeyOps []string `json:"key_ops"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	Crv    string   `json:"crv"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
}

// parseJWKS decodes a key set. Entries that are not signature keys, are
// symmetric (a published "oct" key would let anyone forge tokens), or fail
// to parse are skipped and reported in skipped.
func parseJWKS(data []byte) (keys []verificationKey, skipped []error, err error) {
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("decode JWKS: %w", err)
	}
	for i, k := range doc.Keys {
		vk, err := k.verificationKey()
		if err != nil {
			skipped = append(skipped, fmt.Errorf("JWKS key %d (kid %q): %w", i, k.Kid, err))
			continue
		}
		keys = append(keys, vk)
	}
	return keys, skipped, nil
}

func (k jwk) verificationKey() (verificationKey, error) {
	if k.Use != "" && k.Use != "sig" {
		return verificationKey{}, fmt.Errorf("use %q is not sig", k.Use)
	}
	if len(k.KeyOps) > 0 && !slices.Contains(k.KeyOps, "verify") {
		return verificationKey{}, errors.New("key_ops does not include verify")
	}
	var pub any
	var err error
	switch k.Kty {
	case "RSA":
		pub, err = k.rsaKey()
	case "EC":
		pub, err = k.ecKey()
	case "OKP":
		pub, err = k.okpKey()
	default:
		return verificationKey{}, fmt.Errorf("key type %q is not accepted", k.Kty)
	}
	if err != nil {
		return verificationKey{}, err
	}
	algs, err := algsForKey(pub, k.Alg)
	if err != nil {
		return verificationKey{}, err
	}
	return verificationKey{kid: k.Kid, algs: algs, key: pub}, nil
}

func b64Int(field, s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("bad %q parameter", field)
	}
	return new(big.Int).SetBytes(b), nil
}

func (k jwk) rsaKey() (*rsa.PublicKey, error) {
	n, err := b64Int("n", k.N)
	if err != nil {
		return nil, err
	}
	e, err := b64Int("e", k.E)
	if err != nil {
		return nil, err
	}
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return nil, errors.New("bad RSA exponent")
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

func (k jwk) ecKey() (*ecdsa.PublicKey, error) {
	var curve elliptic.Curve
	switch k.Crv {
	case "P-256":
		curve = elliptic.P256()
	case "P-384":
		curve = elliptic.P384()
	case "P-521":
		curve = elliptic.P521()
	default:
		return nil, fmt.Errorf("curve %q is not accepted", k.Crv)
	}
	x, err := b64Int("x", k.X)
	if err != nil {
		return nil, err
	}
	y, err := b64Int("y", k.Y)
	if err != nil {
		return nil, err
	}
	size := (curve.Params().BitSize + 7) / 8
	if len(x.Bytes()) > size || len(y.Bytes()) > size {
		return nil, errors.New("EC coordinates too large")
	}
	point := make([]byte, 1+2*size)
	point[0] = 4 // uncompressed
	x.FillBytes(point[1 : 1+size])
	y.FillBytes(point[1+size:])
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("EC point: %w", err)
	}
	return pub, nil
}

func (k jwk) okpKey() (ed25519.PublicKey, error) {
	if k.Crv != "Ed25519" {
		return nil, fmt.Errorf("curve %q is not accepted", k.Crv)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.X, "="))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("bad Ed25519 x parameter")
	}
	return ed25519.PublicKey(b), nil
}
