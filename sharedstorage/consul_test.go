package sharedstorage

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

func consulEngine(t *testing.T, address string, extra map[string]any) engine {
	config := func(prefix string, lockTTL time.Duration) map[string]any {
		cfg := map[string]any{"address": address, "prefix": prefix}
		if lockTTL != 0 {
			cfg["lock_ttl"] = lockTTL.String()
		}
		for k, v := range extra {
			cfg[k] = v
		}
		return cfg
	}
	return engine{
		name:   "consul",
		config: config,
		open: func(t *testing.T, prefix string, lockTTL time.Duration) certmagic.Storage {
			c := new(Consul)
			provision(t, c, config(prefix, lockTTL))
			return c
		},
		limit:  consulMaxValue,
		ttl:    10 * time.Second,
		expiry: 20 * time.Second, // Consul ends a session between one and two TTLs
	}
}

// TestConsul runs certmagic's storage semantics, the value limit and the
// locks against a real Consul agent.
func TestConsul(t *testing.T) {
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{})
	testStorage(t, consulEngine(t, agent.HTTP, nil))
}

// TestConsulLockProcesses: a lock held by another process, released and
// killed.
func TestConsulLockProcesses(t *testing.T) {
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{})
	testLockProcesses(t, consulEngine(t, agent.HTTP, nil))
}

// TestConsulTLSAndACL: HTTPS with a client certificate and an ACL token
// limited to the prefix; without the token Consul refuses.
func TestConsulTLSAndACL(t *testing.T) {
	dir := t.TempDir()
	ca := testpeers.NewCA(t, "consul test CA")
	ca.WriteCA(t, filepath.Join(dir, "ca.pem"))
	ca.Issue(t, "server", false, filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	ca.Issue(t, "client", true, filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{ACL: true, CA: filepath.Join(dir, "ca.pem"),
		Cert: filepath.Join(dir, "server.pem"), Key: filepath.Join(dir, "server-key.pem")})
	prefix := uniquePrefix("consul-acl")
	token := agent.Token(t, `key_prefix "`+strings.TrimSuffix(prefix, "/")+`" { policy = "write" }
session_prefix "" { policy = "write" }`)
	tlsBlock := map[string]any{
		"cacert_path": filepath.Join(dir, "ca.pem"),
		"cert_path":   filepath.Join(dir, "client.pem"),
		"key_path":    filepath.Join(dir, "client-key.pem"),
	}
	ctx := context.Background()
	s := consulEngine(t, agent.HTTPS, map[string]any{"tls": tlsBlock, "token": token}).open(t, prefix, 0)
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Store over HTTPS with a token: %v", err)
	}
	if v, err := s.Load(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Load: %q, %v", v, err)
	}
	if err := s.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := s.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	noToken := consulEngine(t, agent.HTTPS, map[string]any{"tls": tlsBlock}).open(t, prefix, 0)
	if err := noToken.Store(ctx, "k", []byte("v")); err == nil || !strings.Contains(err.Error(), "consul storage") {
		t.Errorf("Store without a token: %v", err)
	}
	if err := noToken.Lock(ctx, "l"); err == nil {
		t.Error("Lock without a token succeeded")
	}
	otherPrefix := consulEngine(t, agent.HTTPS, map[string]any{"tls": tlsBlock, "token": token}).open(t, "elsewhere/", 0)
	if err := otherPrefix.Store(ctx, "k", []byte("v")); err == nil {
		t.Error("Store outside the token's prefix succeeded")
	}
}

// TestConsulValidate: every wrong setting is an error naming its field.
func TestConsulValidate(t *testing.T) {
	for _, tc := range []struct {
		c    Consul
		want string
	}{
		{Consul{Address: "http://x:1"}, "address"},
		{Consul{Address: "x"}, "address"},
		{Consul{Scheme: "ftp"}, "scheme"},
		{Consul{Scheme: "http", TLS: &TLS{}}, "scheme"},
		{Consul{Address: "unix:///s", TLS: &TLS{}}, "tls"},
		{Consul{LockTTL: caddyDuration(5 * time.Second)}, "lock_ttl"},
		{Consul{TLS: &TLS{KeyPath: "k"}}, "tls.cert_path"},
	} {
		err := tc.c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", tc.c, err, tc.want)
		}
	}
}
