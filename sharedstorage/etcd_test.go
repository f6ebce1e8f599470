package sharedstorage

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddyserver/certmagic"
)

func etcdEngine(t *testing.T, peer *testpeers.Etcd, extra map[string]any) engine {
	config := func(prefix string, lockTTL time.Duration) map[string]any {
		cfg := map[string]any{"endpoints": []string{peer.URL}, "prefix": prefix}
		if lockTTL != 0 {
			cfg["lock_ttl"] = lockTTL.String()
		}
		for k, v := range extra {
			cfg[k] = v
		}
		return cfg
	}
	return engine{
		name:   "etcd",
		config: config,
		open: func(t *testing.T, prefix string, lockTTL time.Duration) certmagic.Storage {
			e := new(Etcd)
			provision(t, e, config(prefix, lockTTL))
			return e
		},
		limit:  etcdMaxValue,
		ttl:    4 * time.Second,
		expiry: 4 * time.Second,
	}
}

// TestEtcd runs certmagic's storage semantics, the value limit and the
// locks against a real etcd.
func TestEtcd(t *testing.T) {
	peer := testpeers.StartEtcd(t, nil)
	testStorage(t, etcdEngine(t, peer, nil))
}

// TestEtcdLockProcesses: a lock held by another process, released and
// killed.
func TestEtcdLockProcesses(t *testing.T) {
	peer := testpeers.StartEtcd(t, nil)
	testLockProcesses(t, etcdEngine(t, peer, nil))
}

// TestEtcdTLSAndAuth: client certificates and user/password against an
// etcd that requires both; wrong settings fail with an error that names
// etcd.
func TestEtcdTLSAndAuth(t *testing.T) {
	peer := testpeers.StartEtcd(t, &testpeers.EtcdTLS{ClientAuth: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli := peer.Client()
	defer cli.Close()
	for _, step := range []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	tlsBlock := map[string]any{
		"cacert_path": filepath.Join(peer.CertDir, "ca.pem"),
		"cert_path":   filepath.Join(peer.CertDir, "client.pem"),
		"key_path":    filepath.Join(peer.CertDir, "client-key.pem"),
	}
	good := etcdEngine(t, peer, map[string]any{"tls": tlsBlock, "username": "root", "password": "rootpw", "timeout": "3s"})
	s := good.open(t, uniquePrefix("etcd-tls"), 0)
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Store over TLS with a user: %v", err)
	}
	if v, err := s.Load(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Load over TLS with a user: %q, %v", v, err)
	}
	if err := s.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := s.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	wrongPassword := etcdEngine(t, peer, map[string]any{"tls": tlsBlock, "username": "root", "password": "nope", "timeout": "3s"})
	if err := wrongPassword.open(t, uniquePrefix("etcd-tls"), 0).Store(ctx, "k", []byte("v")); err == nil || !strings.Contains(err.Error(), "etcd storage") {
		t.Errorf("a wrong password: %v", err)
	}
	noClientCert := etcdEngine(t, peer, map[string]any{"tls": map[string]any{"cacert_path": tlsBlock["cacert_path"]}, "username": "root", "password": "rootpw", "timeout": "3s"})
	if err := noClientCert.open(t, uniquePrefix("etcd-tls"), 0).Store(ctx, "k", []byte("v")); err == nil {
		t.Error("no client certificate: Store succeeded")
	}
}

// TestEtcdValidate: every wrong setting is an error naming its field.
func TestEtcdValidate(t *testing.T) {
	for _, tc := range []struct {
		e    Etcd
		want string
	}{
		{Etcd{}, "endpoints"},
		{Etcd{Endpoints: []string{"ftp://x:1"}}, "endpoints[0]"},
		{Etcd{Endpoints: []string{"x"}}, "endpoints[0]"},
		{Etcd{Endpoints: []string{"http://x:1"}, TLS: &TLS{}}, "http://"},
		{Etcd{Endpoints: []string{"x:1"}, Username: "u"}, "password"},
		{Etcd{Endpoints: []string{"x:1"}, Prefix: "//"}, "prefix"},
		{Etcd{Endpoints: []string{"x:1"}, LockTTL: caddyDuration(time.Second)}, "lock_ttl"},
		{Etcd{Endpoints: []string{"x:1"}, TLS: &TLS{CertPath: "c"}}, "tls.cert_path"},
	} {
		err := tc.e.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", tc.e, err, tc.want)
		}
	}
	ok := Etcd{Endpoints: []string{"127.0.0.1:2379", "https://h:2379"}}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}
