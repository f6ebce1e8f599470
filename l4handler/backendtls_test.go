package l4handler

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// testPEM writes a self-signed certificate and its key and returns the paths.
func testPEM(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

func TestBackendsTLSProvision(t *testing.T) {
	cert, key := testPEM(t)
	notPEM := filepath.Join(t.TempDir(), "x")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	off := false
	tests := []struct {
		name    string
		in      *BackendsTLS
		wantErr string
		check   func(*testing.T, *tls.Config)
	}{
		{name: "defaults", check: func(t *testing.T, c *tls.Config) {
			if c.MinVersion != tls.VersionTLS12 || c.MaxVersion != 0 || c.InsecureSkipVerify || c.RootCAs != nil ||
				c.ClientSessionCache == nil || c.SessionTicketsDisabled || len(c.Certificates) != 0 {
				t.Errorf("defaults: %+v", c)
			}
		}},
		{name: "everything", in: &BackendsTLS{IgnoreVerify: true, RootCACertPath: cert, CertPath: cert, KeyPath: key,
			MinVersion: "1.2", MaxVersion: "1.3", Ciphers: []string{"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}},
			check: func(t *testing.T, c *tls.Config) {
				if !c.InsecureSkipVerify || c.RootCAs == nil || len(c.Certificates) != 1 || c.MaxVersion != tls.VersionTLS13 ||
					len(c.CipherSuites) != 1 || c.CipherSuites[0] != tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 {
					t.Errorf("config: %+v", c)
				}
			}},
		{name: "tickets off", in: &BackendsTLS{SessionTickets: &off}, check: func(t *testing.T, c *tls.Config) {
			if !c.SessionTicketsDisabled || c.ClientSessionCache != nil {
				t.Errorf("session_tickets off: %+v", c)
			}
		}},
		{name: "min 1.3", in: &BackendsTLS{MinVersion: "1.3"}, check: func(t *testing.T, c *tls.Config) {
			if c.MinVersion != tls.VersionTLS13 {
				t.Errorf("min_version: %x", c.MinVersion)
			}
		}},
		{name: "missing root", in: &BackendsTLS{RootCACertPath: "/nonexistent/ca.pem"}, wantErr: "backends_tls.root_ca_cert_path"},
		{name: "root not PEM", in: &BackendsTLS{RootCACertPath: notPEM}, wantErr: "no PEM certificate"},
		{name: "cert without key", in: &BackendsTLS{CertPath: cert}, wantErr: "backends_tls.cert_path: needs key_path"},
		{name: "key without cert", in: &BackendsTLS{KeyPath: key}, wantErr: "backends_tls.key_path: needs cert_path"},
		{name: "bad pair", in: &BackendsTLS{CertPath: cert, KeyPath: notPEM}, wantErr: "backends_tls.cert_path/key_path"},
		{name: "bad min", in: &BackendsTLS{MinVersion: "1.1"}, wantErr: `backends_tls.min_version "1.1"`},
		{name: "bad max", in: &BackendsTLS{MaxVersion: "tls1.3"}, wantErr: `backends_tls.max_version "tls1.3"`},
		{name: "max below min", in: &BackendsTLS{MinVersion: "1.3", MaxVersion: "1.2"}, wantErr: "below min_version"},
		{name: "unknown cipher", in: &BackendsTLS{Ciphers: []string{"TLS_NOPE"}}, wantErr: `unknown cipher suite "TLS_NOPE"`},
		{name: "TLS 1.3 suite", in: &BackendsTLS{Ciphers: []string{"TLS_AES_128_GCM_SHA256"}}, wantErr: `unknown cipher suite "TLS_AES_128_GCM_SHA256"`},
		{name: "ciphers with min 1.3", in: &BackendsTLS{MinVersion: "1.3", Ciphers: []string{"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}}, wantErr: "TLS 1.2 only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bt := tt.in
			if bt == nil {
				bt = new(BackendsTLS)
			}
			err := bt.provision(0)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if bt.timeout != defaultHandshakeTimeout {
				t.Errorf("handshake timeout %v", bt.timeout)
			}
			tt.check(t, bt.base)
		})
	}
}

func TestBackendsTLSServerName(t *testing.T) {
	tests := []struct {
		fixed, sni, host, want string
	}{
		{"", "", "10.0.0.1", "10.0.0.1"},
		{"", "db.test", "10.0.0.1", "db.test"},
		{"", "", "db.internal", "db.internal"},
		{"fixed.test", "db.test", "10.0.0.1", "fixed.test"},
	}
	for _, tt := range tests {
		bt := &BackendsTLS{ServerName: tt.fixed}
		if err := bt.provision(time.Second); err != nil {
			t.Fatal(err)
		}
		b := &backend.Backend{Host: tt.host, Port: "443", SNI: tt.sni}
		name := bt.serverName(b)
		if name != tt.want {
			t.Errorf("serverName(%+v, server_name %q) = %q, want %q", b, tt.fixed, name, tt.want)
		}
		c := bt.config(name)
		if c.ServerName != tt.want || c.ClientSessionCache != bt.base.ClientSessionCache {
			t.Errorf("config for %q: ServerName %q, shared cache %v", name, c.ServerName, c.ClientSessionCache == bt.base.ClientSessionCache)
		}
		if bt.config(name) != c {
			t.Errorf("config for %q is not reused", name)
		}
	}
}

func TestParseBackendsTLS(t *testing.T) {
	tests := []struct {
		in      string
		want    func(*BackendsTLS) bool
		wantErr string
	}{
		{in: "backends_tls {\n ignore_verify\n root_ca_cert_path /ca.pem\n cert_path /c.pem\n key_path /k.pem\n min_version 1.2\n max_version 1.3\n ciphers A B\n session_tickets off\n server_name db.test\n}",
			want: func(b *BackendsTLS) bool {
				return b.IgnoreVerify && b.RootCACertPath == "/ca.pem" && b.CertPath == "/c.pem" && b.KeyPath == "/k.pem" &&
					b.MinVersion == "1.2" && b.MaxVersion == "1.3" && len(b.Ciphers) == 2 && b.SessionTickets != nil &&
					!*b.SessionTickets && b.ServerName == "db.test"
			}},
		{in: "backends_tls", want: func(b *BackendsTLS) bool {
			return !b.IgnoreVerify && b.RootCACertPath == "" && b.Ciphers == nil && b.SessionTickets == nil
		}},
		{in: "backends_tls {\n session_tickets maybe\n}", wantErr: "session_tickets"},
		{in: "backends_tls {\n ignore_verify yes\n}", wantErr: "ignore_verify takes no argument"},
		{in: "backends_tls {\n nope\n}", wantErr: `unknown subdirective "nope"`},
		{in: "backends_tls {\n ciphers\n}", wantErr: "ciphers needs"},
		{in: "backends_tls extra", wantErr: "argument"},
	}
	for _, tt := range tests {
		d := caddyfile.NewTestDispenser(tt.in)
		d.Next()
		got, err := parseBackendsTLS(d)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !tt.want(got) {
			t.Errorf("%q: %+v, %v", tt.in, got, err)
		}
	}
}
