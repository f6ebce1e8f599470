package discovery

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddyserver/caddy/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestEtcdValidate(t *testing.T) {
	ok := func(f func(e *Etcd)) Etcd {
		e := Etcd{Endpoints: []string{"127.0.0.1:2379"}, Prefix: "/svc"}
		if f != nil {
			f(&e)
		}
		return e
	}
	for _, tt := range []struct {
		name    string
		e       Etcd
		mention string // "" = valid
	}{
		{"minimal", ok(nil), ""},
		{"http endpoints", ok(func(e *Etcd) { e.Endpoints = []string{"http://127.0.0.1:2379", "http://[::1]:2379"} }), ""},
		{"https endpoint", ok(func(e *Etcd) { e.Endpoints = []string{"https://etcd.example.com:2379"} }), ""},
		{"auth", ok(func(e *Etcd) { e.Username, e.Password = "root", "secret" }), ""},
		{"tls on host:port", ok(func(e *Etcd) { e.TLSEnabled = true }), ""},
		{"no endpoints", ok(func(e *Etcd) { e.Endpoints = nil }), "etcd_endpoints"},
		{"endpoint without port", ok(func(e *Etcd) { e.Endpoints = []string{"127.0.0.1"} }), "etcd_endpoints[0]"},
		{"endpoint port 0", ok(func(e *Etcd) { e.Endpoints = []string{"127.0.0.1:0"} }), "etcd_endpoints[0]"},
		{"unix scheme", ok(func(e *Etcd) { e.Endpoints = []string{"unix:///run/etcd.sock"} }), "etcd_endpoints[0]"},
		{"endpoint with path", ok(func(e *Etcd) { e.Endpoints = []string{"http://127.0.0.1:2379/v3"} }), "etcd_endpoints[0]"},
		{"mixed schemes", ok(func(e *Etcd) { e.Endpoints = []string{"http://127.0.0.1:2379", "https://127.0.0.2:2379"} }), "etcd_endpoints[1]"},
		{"http with tls", ok(func(e *Etcd) { e.Endpoints = []string{"http://127.0.0.1:2379"}; e.TLSCACertPath = "/ca.pem" }), "http://"},
		{"no prefix", ok(func(e *Etcd) { e.Prefix = "" }), "etcd_prefix"},
		{"user without password", ok(func(e *Etcd) { e.Username = "root" }), "etcd_password"},
		{"password without user", ok(func(e *Etcd) { e.Password = "x" }), "etcd_username"},
		{"cert without key", ok(func(e *Etcd) { e.TLSCertPath = "/c.pem" }), "etcd_tls_key_path"},
		{"key without cert", ok(func(e *Etcd) { e.TLSKeyPath = "/k.pem" }), "etcd_tls_cert_path"},
		{"bad failpolicy", ok(func(e *Etcd) { e.FailPolicy = "drop" }), "failpolicy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantErrNaming(t, "Validate()", tt.e.Validate(), tt.mention)
		})
	}
}

func TestEtcdProvisionTLSFiles(t *testing.T) {
	dir := t.TempDir()
	ca := testpeers.NewCA(t, "ca")
	ca.WriteCA(t, filepath.Join(dir, "ca.pem"))
	ca.Issue(t, "client", true, filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	os.WriteFile(filepath.Join(dir, "junk.pem"), []byte("not a certificate"), 0o600)
	t.Setenv("BETWEEN_TEST_ETCD_DIR", dir)
	for _, tt := range []struct {
		name             string
		cert, key, cacrt string
		mention          string // "" = loads
	}{
		{"client cert and CA", "client.pem", "client-key.pem", "ca.pem", ""},
		{"CA only", "", "", "ca.pem", ""},
		{"placeholder in path", "{env.BETWEEN_TEST_ETCD_DIR}/client.pem", "{env.BETWEEN_TEST_ETCD_DIR}/client-key.pem", "", ""},
		{"missing CA file", "", "", "nope.pem", "etcd_tls_cacert_path"},
		{"CA file without PEM", "", "", "junk.pem", "etcd_tls_cacert_path"},
		{"key does not match", "client.pem", "ca.pem", "", "etcd_tls_key_path"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			abs := func(p string) string {
				if p == "" || strings.HasPrefix(p, "{") {
					return p
				}
				return filepath.Join(dir, p)
			}
			e := &Etcd{Endpoints: []string{"127.0.0.1:2379"}, Prefix: "/svc",
				TLSCertPath: abs(tt.cert), TLSKeyPath: abs(tt.key), TLSCACertPath: abs(tt.cacrt)}
			err := e.Provision(caddy.Context{})
			if tt.mention == "" {
				if err != nil {
					t.Fatal(err)
				}
				if e.tls == nil || (tt.cert != "") != (len(e.tls.Certificates) == 1) || (tt.cacrt != "") != (e.tls.RootCAs != nil) {
					t.Fatalf("tls config %+v does not match the paths", e.tls)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Provision() = %v, want an error naming %s", err, tt.mention)
			}
		})
	}
}

func TestEtcdJSON(t *testing.T) {
	in := `{"etcd_endpoints":["https://127.0.0.1:2379"],"etcd_prefix":"/svc/redis","etcd_username":"u","etcd_password":"p",
		"etcd_tls_enabled":true,"etcd_tls_cert_path":"c.pem","etcd_tls_key_path":"k.pem","etcd_tls_cacert_path":"ca.pem","timeout":"2s","interval":"3s"}`
	var e Etcd
	if err := json.Unmarshal([]byte(in), &e); err != nil {
		t.Fatal(err)
	}
	want := Etcd{Endpoints: []string{"https://127.0.0.1:2379"}, Prefix: "/svc/redis", Username: "u", Password: "p", TLSEnabled: true,
		TLSCertPath: "c.pem", TLSKeyPath: "k.pem", TLSCACertPath: "ca.pem",
		Common: Common{Timeout: caddy.Duration(2 * time.Second), Interval: caddy.Duration(3 * time.Second)}}
	if fmt.Sprint(e) != fmt.Sprint(want) {
		t.Fatalf("unmarshalled %+v, want %+v", e, want)
	}
	out, err := json.Marshal(Etcd{Endpoints: []string{"127.0.0.1:2379"}, Prefix: "/svc"})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"etcd_endpoints":["127.0.0.1:2379"],"etcd_prefix":"/svc"}` {
		t.Fatalf("defaults marshal to %s", out)
	}
}

func TestEtcdCaddyfile(t *testing.T) {
	runCaddyfileCases(t, []caddyfileCase[Etcd]{
		{"inline endpoints", "etcd 127.0.0.1:2379 127.0.0.2:2379 {\n prefix /svc\n}",
			Etcd{Endpoints: []string{"127.0.0.1:2379", "127.0.0.2:2379"}, Prefix: "/svc"}, ""},
		{"every field", `etcd {
				endpoints https://127.0.0.1:2379
				endpoints https://127.0.0.2:2379
				prefix /svc/redis
				username root
				password "{env.ETCD_PASSWORD}"
				tls_enabled
				tls_cert_path /c.pem
				tls_key_path /k.pem
				tls_cacert_path /ca.pem
				interval 2s
				timeout 1s
				failpolicy setempty
			}`,
			Etcd{Endpoints: []string{"https://127.0.0.1:2379", "https://127.0.0.2:2379"}, Prefix: "/svc/redis", Username: "root",
				Password: "{env.ETCD_PASSWORD}", TLSEnabled: true, TLSCertPath: "/c.pem", TLSKeyPath: "/k.pem", TLSCACertPath: "/ca.pem",
				Common: Common{Interval: caddy.Duration(2 * time.Second), Timeout: caddy.Duration(time.Second), FailPolicy: "setempty"}}, ""},
		{"json names", "etcd {\n etcd_endpoints 127.0.0.1:2379\n etcd_prefix /p\n etcd_tls_enabled false\n}",
			Etcd{Endpoints: []string{"127.0.0.1:2379"}, Prefix: "/p"}, ""},
		{"endpoints without args", "etcd {\n endpoints\n}", Etcd{}, "argument"},
		{"prefix twice on a line", "etcd {\n prefix /a /b\n}", Etcd{}, "argument"},
		{"password without arg", "etcd {\n password\n}", Etcd{}, "argument"},
		{"bad tls_enabled", "etcd {\n tls_enabled maybe\n}", Etcd{}, "tls_enabled"},
		{"bad timeout", "etcd {\n timeout soon\n}", Etcd{}, "timeout"},
		{"unknown", "etcd {\n lease 10\n}", Etcd{}, "lease"},
	}, func(got, want *Etcd) bool {
		return fmt.Sprint(*got) == fmt.Sprint(*want)
	})
}

// etcdObserved returns an Etcd source for prefix whose log is recorded.
func etcdObserved(t *testing.T, e *Etcd) *observer.ObservedLogs {
	t.Helper()
	if err := e.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	e.logger = zap.New(core)
	return logs
}

func TestEtcdKeys(t *testing.T) {
	for _, tt := range []struct {
		name    string
		prefix  string
		kvs     map[string]string
		want    string   // backend lines, in order, joined by "|"
		skipped []string // keys that must be logged as skipped
	}{
		{"empty", "/svc", nil, "", nil},
		{"defaults and attributes", "/svc", map[string]string{
			"/svc/10.0.0.2:80": "weight=2 sni=b.example.com",
			"/svc/10.0.0.1:80": "",
			"/svc/[::1]:81":    "  priority=2\n max_connections=10 ",
		}, "10.0.0.1:80|10.0.0.2:80 weight=2 sni=b.example.com|[::1]:81 priority=2 max_connections=10", nil},
		{"prefix with trailing slash", "/svc/", map[string]string{"/svc/db.internal:5432": ""}, "db.internal:5432", nil},
		{"bad keys and values skipped, the rest stays", "/svc", map[string]string{
			"/svc/10.0.0.1:80":      "",
			"/svc/10.0.0.2":         "",
			"/svc/10.0.0.3:0":       "",
			"/svc/":                 "",
			"/svc/a/b:80":           "",
			"/svc/10.0.0.4:80 x":    "",
			"/svc/::1:80":           "",
			"/svc/10.0.0.5:80":      "weight=heavy",
			"/svc/10.0.0.6:80":      "10.0.0.7:80",
			"/svc/10.0.0.8:80":      "colour=red",
			"/svc/10.0.0.9:80":      "weight=1 weight=2",
			"/svc/10.0.0.10:0080":   "", // sorts first (etcd's byte order), so it wins
			"/svc/10.0.0.10:80":     "weight=3",
			"/svc/host.example:443": "sni=host.example",
		}, "10.0.0.10:80|10.0.0.1:80|host.example:443 sni=host.example", []string{
			"/svc/10.0.0.2", "/svc/10.0.0.3:0", "/svc/", "/svc/a/b:80", "/svc/10.0.0.4:80 x", "/svc/::1:80",
			"/svc/10.0.0.5:80", "/svc/10.0.0.6:80", "/svc/10.0.0.8:80", "/svc/10.0.0.9:80", "/svc/10.0.0.10:80"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := &Etcd{Endpoints: []string{"127.0.0.1:2379"}, Prefix: tt.prefix}
			logs := etcdObserved(t, e)
			kvs := map[string]keyValue{}
			for k, v := range tt.kvs {
				kvs[k] = keyValue{value: v, rev: 7}
			}
			var got []string
			for _, b := range e.backends(kvs) {
				if b.Host == "" || b.Port == "" || b.Port == "0" {
					t.Errorf("backend without host or port: %+v", b)
				}
				got = append(got, b.String())
			}
			if strings.Join(got, "|") != tt.want {
				t.Errorf("backends = %q\nwant       %q", strings.Join(got, "|"), tt.want)
			}
			entries := logs.FilterMessage("etcd: skipping key").All()
			logged := map[string]string{}
			for _, en := range entries {
				logged[en.ContextMap()["key"].(string)] = fmt.Sprint(en.ContextMap()["error"])
			}
			for _, k := range tt.skipped {
				if _, ok := logged[k]; !ok {
					t.Errorf("key %q skipped without a log line naming it (logged: %v)", k, logged)
				}
			}
			if len(logged) != len(tt.skipped) {
				t.Errorf("logged %d skipped keys, want %d: %v", len(logged), len(tt.skipped), logged)
			}
		})
	}
}

func TestEtcdSkippedKeyLoggedOncePerRevision(t *testing.T) {
	e := &Etcd{Endpoints: []string{"127.0.0.1:2379"}, Prefix: "/svc"}
	logs := etcdObserved(t, e)
	bad := map[string]keyValue{"/svc/x": {value: "", rev: 5}, "/svc/10.0.0.1:80": {rev: 5}}
	for range 3 {
		e.backends(bad)
	}
	if n := logs.FilterMessage("etcd: skipping key").Len(); n != 1 {
		t.Fatalf("the same bad key was logged %d times, want once", n)
	}
	bad["/svc/x"] = keyValue{value: "", rev: 6}
	e.backends(bad)
	if n := logs.FilterMessage("etcd: skipping key").Len(); n != 2 {
		t.Fatalf("a new revision of the bad key was logged %d times in all, want 2", n)
	}
}

// --- real etcd ---

// newEtcdSource is a provisioned source for the server s.
func newEtcdSource(t *testing.T, s *testpeers.Etcd, prefix string, f func(*Etcd)) *Etcd {
	t.Helper()
	e := &Etcd{Endpoints: []string{s.URL}, Prefix: prefix}
	if f != nil {
		f(e)
	}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := e.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	e.logger = zap.NewNop()
	t.Cleanup(func() { e.Cleanup() })
	return e
}

func TestEtcd(t *testing.T) {
	srv := testpeers.StartEtcd(t, nil)
	cli := srv.Client()
	defer cli.Close()

	t.Run("fetch", func(t *testing.T) {
		testpeers.EtcdPut(t, cli, "/fetch/127.0.0.1:3001", "")
		testpeers.EtcdPut(t, cli, "/fetch/127.0.0.1:3002", "weight=2 sni=b")
		testpeers.EtcdPut(t, cli, "/fetchx/127.0.0.1:3003", "") // beside the prefix, not under it
		e := newEtcdSource(t, srv, "/fetch", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := e.Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if asLines(got) != "127.0.0.1:3001 | 127.0.0.1:3002 weight=2 sni=b" {
			t.Fatalf("Fetch = %q", asLines(got))
		}
	})

	t.Run("watch follows puts, changes and deletes", func(t *testing.T) {
		testpeers.EtcdPut(t, cli, "/watch/127.0.0.1:4001", "")
		e := newEtcdSource(t, srv, "/watch/", nil)
		ctx, cancel := context.WithCancel(context.Background())
		rec := newRecord()
		done := rec.run(t, ctx, e)
		defer func() { cancel(); recv(t, done, 5*time.Second, "Run return") }()
		waitList(t, rec.updates, nil, "127.0.0.1:4001", 5*time.Second, "etcd")
		var worst time.Duration
		var leaseID clientv3.LeaseID
		for _, step := range []struct {
			name  string
			do    func()
			want  string
			limit time.Duration
		}{
			{"add", func() { testpeers.EtcdPut(t, cli, "/watch/127.0.0.1:4002", "weight=3") }, "127.0.0.1:4001 | 127.0.0.1:4002 weight=3", time.Second},
			{"change", func() { testpeers.EtcdPut(t, cli, "/watch/127.0.0.1:4001", "priority=2 max_connections=5") },
				"127.0.0.1:4001 priority=2 max_connections=5 | 127.0.0.1:4002 weight=3", time.Second},
			{"bad value: key skipped, rest stays", func() { testpeers.EtcdPut(t, cli, "/watch/127.0.0.1:4001", "weight=-1") }, "127.0.0.1:4002 weight=3", time.Second},
			{"delete", func() { testpeers.EtcdDel(t, cli, "/watch/127.0.0.1:4002") }, "", time.Second},
			{"add again", func() { testpeers.EtcdPut(t, cli, "/watch/[::1]:4003", "") }, "[::1]:4003", time.Second},
			{"key with a lease", func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				lease, err := cli.Grant(ctx, 60)
				if err != nil {
					t.Fatal(err)
				}
				leaseID = lease.ID
				if _, err := cli.Put(ctx, "/watch/127.0.0.1:4004", "", clientv3.WithLease(lease.ID)); err != nil {
					t.Fatal(err)
				}
			}, "127.0.0.1:4004 | [::1]:4003", time.Second},
			{"lease revoked", func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := cli.Revoke(ctx, leaseID); err != nil {
					t.Fatal(err)
				}
			}, "[::1]:4003", time.Second},
		} {
			start := time.Now()
			step.do()
			waitList(t, rec.updates, nil, step.want, step.limit, "etcd")
			took := time.Since(start)
			t.Logf("%s: list followed in %v", step.name, took)
			worst = max(worst, took)
		}
		t.Logf("etcd watch propagation: worst %v over 7 changes", worst)
		nothing(t, rec.errs, 0, "error while etcd is up")
	})

	t.Run("compacted history ends the watch", func(t *testing.T) {
		first := testpeers.EtcdPut(t, cli, "/compact/127.0.0.1:5001", "")
		last := testpeers.EtcdPut(t, cli, "/compact/127.0.0.1:5001", "weight=2")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Compact(ctx, last); err != nil {
			t.Fatal(err)
		}
		e := newEtcdSource(t, srv, "/compact", nil)
		c, err := e.acquire()
		if err != nil {
			t.Fatal(err)
		}
		defer e.release()
		err = e.follow(ctx, c, map[string]keyValue{}, first, func([]backend.Backend) {})
		if err == nil || !strings.Contains(err.Error(), "compacted") || !strings.Contains(err.Error(), "/compact/") {
			t.Fatalf("follow from a compacted revision = %v, want an error about compaction naming the prefix", err)
		}
	})

	t.Run("no goroutine outlives the source", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			// cleanupFirst: Cleanup runs while the watch is still running (a
			// reload that keeps the server); the client must stay usable
			// until the watch ends.
			cleanupFirst bool
		}{{"cleanup after stop", false}, {"cleanup while watching", true}} {
			t.Run(tt.name, func(t *testing.T) {
				base := etcdSettledGoroutines()
				e := newEtcdSource(t, srv, "/leak", nil)
				ctx, cancel := context.WithCancel(context.Background())
				rec := newRecord()
				done := rec.run(t, ctx, e)
				testpeers.EtcdPut(t, cli, "/leak/127.0.0.1:6001", "")
				waitList(t, rec.updates, nil, "127.0.0.1:6001", 5*time.Second, "etcd")
				if tt.cleanupFirst {
					e.Cleanup()
					testpeers.EtcdPut(t, cli, "/leak/127.0.0.1:6002", "")
					waitList(t, rec.updates, nil, "127.0.0.1:6001 | 127.0.0.1:6002", time.Second, "etcd")
					testpeers.EtcdDel(t, cli, "/leak/127.0.0.1:6002")
					nothing(t, rec.errs, 0, "watch error after Cleanup while the watch runs")
				}
				if runtime.NumGoroutine() <= base {
					t.Fatalf("%d goroutines while watching, baseline %d: the test cannot see a leak", runtime.NumGoroutine(), base)
				}
				cancel()
				recv(t, done, 5*time.Second, "Run return")
				e.Cleanup()
				deadline := time.Now().Add(5 * time.Second)
				for runtime.NumGoroutine() > base {
					if time.Now().After(deadline) {
						buf := make([]byte, 1<<20)
						t.Fatalf("%d goroutines 5s after Cleanup, baseline %d:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
					}
					time.Sleep(20 * time.Millisecond)
				}
				if e.live.client != nil {
					t.Fatal("client still set after Cleanup and the watch's end")
				}
				testpeers.EtcdDel(t, cli, "/leak/127.0.0.1:6001")
			})
		}
	})
}

// etcdSettledGoroutines is the goroutine count once earlier tests' goroutines
// have wound down (it stops changing for 100 ms, within 2 s).
func etcdSettledGoroutines() int {
	n := runtime.NumGoroutine()
	for deadline, stable := time.Now().Add(2*time.Second), time.Now(); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		if m := runtime.NumGoroutine(); m != n {
			n, stable = m, time.Now()
		} else if time.Since(stable) > 100*time.Millisecond {
			break
		}
	}
	return n
}

func TestEtcdAuth(t *testing.T) {
	srv := testpeers.StartEtcd(t, nil)
	cli := srv.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		// reader may read /other/ only
		func() error { _, err := cli.UserAdd(ctx, "reader", "readerpw"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "other-reader"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "other-reader", "/other/", clientv3.GetPrefixRangeEnd("/other/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := cli.UserGrantRole(ctx, "reader", "other-reader"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cli.Close()
	root := srv.Client("root", "rootpw")
	defer root.Close()
	testpeers.EtcdPut(t, root, "/auth/127.0.0.1:7001", "")

	t.Setenv("BETWEEN_TEST_ETCD_PASSWORD", "rootpw")
	for _, tt := range []struct {
		name, user, password string
		want                 string   // list when it works
		mention              []string // error parts when it fails
	}{
		{"right password", "root", "rootpw", "127.0.0.1:7001", nil},
		{"password from a placeholder", "root", "{env.BETWEEN_TEST_ETCD_PASSWORD}", "127.0.0.1:7001", nil},
		{"wrong password", "root", "nope", "", []string{"etcd", "root", "authentication failed"}},
		{"unknown user", "mallory", "x", "", []string{"mallory", "authentication failed"}},
		{"no credentials", "", "", "", []string{"etcd", "user name"}},
		{"no read permission on the prefix", "reader", "readerpw", "", []string{"/auth/", "permission denied"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEtcdSource(t, srv, "/auth", func(e *Etcd) { e.Username, e.Password = tt.user, tt.password })
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			got, err := e.Fetch(ctx)
			if tt.mention == nil {
				if err != nil || asLines(got) != tt.want {
					t.Fatalf("Fetch = %q, %v; want %q", asLines(got), err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Fetch = %q, want an error", asLines(got))
			}
			wantErrParts(t, err, tt.mention...)
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("the error took %v; a refused login should be reported at once", took)
			}
			t.Logf("error: %v", err)
		})
	}
}

func TestEtcdTLS(t *testing.T) {
	srv := testpeers.StartEtcd(t, &testpeers.EtcdTLS{ClientAuth: true})
	admin := srv.Client()
	defer admin.Close()
	testpeers.EtcdPut(t, admin, "/tls/127.0.0.1:8001", "sni=a")
	other := testpeers.NewCA(t, "someone else")
	otherDir := t.TempDir()
	other.WriteCA(t, filepath.Join(otherDir, "ca.pem"))
	other.Issue(t, "intruder", true, filepath.Join(otherDir, "client.pem"), filepath.Join(otherDir, "client-key.pem"))
	hostport := strings.TrimPrefix(srv.URL, "https://")
	d := srv.CertDir
	plain := testpeers.StartEtcd(t, nil)
	for _, tt := range []struct {
		name    string
		f       func(*Etcd)
		mention string // "" = works
	}{
		{"https endpoint with client certificate", func(e *Etcd) {
			e.TLSCACertPath, e.TLSCertPath, e.TLSKeyPath = filepath.Join(d, "ca.pem"), filepath.Join(d, "client.pem"), filepath.Join(d, "client-key.pem")
		}, ""},
		{"host:port endpoint, TLS from the paths", func(e *Etcd) {
			e.Endpoints = []string{hostport}
			e.TLSCACertPath, e.TLSCertPath, e.TLSKeyPath = filepath.Join(d, "ca.pem"), filepath.Join(d, "client.pem"), filepath.Join(d, "client-key.pem")
		}, ""},
		{"no client certificate", func(e *Etcd) { e.TLSCACertPath = filepath.Join(d, "ca.pem") }, "TLS: remote error"},
		{"client certificate from another CA", func(e *Etcd) {
			e.TLSCACertPath, e.TLSCertPath, e.TLSKeyPath = filepath.Join(d, "ca.pem"), filepath.Join(otherDir, "client.pem"), filepath.Join(otherDir, "client-key.pem")
		}, "TLS: remote error"},
		{"server not trusted", func(e *Etcd) {
			e.TLSCACertPath, e.TLSCertPath, e.TLSKeyPath = filepath.Join(otherDir, "ca.pem"), filepath.Join(d, "client.pem"), filepath.Join(d, "client-key.pem")
		}, "certificate signed by unknown authority"},
		{"TLS to a plain endpoint", func(e *Etcd) {
			e.Endpoints = []string{plain.URL}
			e.TLSEnabled = true
			e.Endpoints[0] = strings.TrimPrefix(plain.URL, "http://")
		}, "TLS:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEtcdSource(t, srv, "/tls", func(e *Etcd) { e.Timeout = caddy.Duration(time.Second); tt.f(e) })
			ctx, cancel := context.WithTimeout(context.Background(), e.FetchTimeout())
			defer cancel()
			got, err := e.Fetch(ctx)
			if tt.mention == "" {
				if err != nil || asLines(got) != "127.0.0.1:8001 sni=a" {
					t.Fatalf("Fetch = %q, %v", asLines(got), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Fetch = %q, %v; want an error mentioning %q", asLines(got), err, tt.mention)
			}
			t.Logf("error: %v", err)
		})
	}
}

// etcd stops under a running watch: the watch reports an error, the list
// stays (no update), and after etcd restarts changes arrive again.
func TestEtcdOutage(t *testing.T) {
	srv := testpeers.StartEtcd(t, nil)
	cli := srv.Client()
	defer cli.Close()
	testpeers.EtcdPut(t, cli, "/out/127.0.0.1:9001", "")
	e := newEtcdSource(t, srv, "/out", func(e *Etcd) { e.Timeout = caddy.Duration(time.Second) })
	ctx, cancel := context.WithCancel(context.Background())
	rec := newRecord()
	done := rec.run(t, ctx, e)
	defer func() { cancel(); recv(t, done, 5*time.Second, "Run return") }()
	waitList(t, rec.updates, nil, "127.0.0.1:9001", 5*time.Second, "etcd")
	testpeers.EtcdPut(t, cli, "/out/127.0.0.1:9003", "") // arrives through the watch: it is up
	waitList(t, rec.updates, nil, "127.0.0.1:9001 | 127.0.0.1:9003", 5*time.Second, "etcd")
	testpeers.EtcdDel(t, cli, "/out/127.0.0.1:9003")
	waitList(t, rec.updates, nil, "127.0.0.1:9001", time.Second, "etcd")

	stopped := time.Now()
	srv.Stop()
	err := recv(t, rec.errs, 3*time.Second, "an error after etcd stopped")
	t.Logf("etcd stopped; error after %v: %v", time.Since(stopped), err)
	if !strings.Contains(err.Error(), "etcd") {
		t.Errorf("error %q does not say etcd", err)
	}
	// keeplast: errors, but no update while etcd is down
	err = recv(t, rec.errs, 5*time.Second, "the failed refetch")
	t.Logf("refetch while etcd is down: %v", err)
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q does not say why etcd did not answer", err)
	}
	nothing(t, rec.updates, 0, "update while etcd is down")

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	testpeers.EtcdPut(t, cli, "/out/127.0.0.1:9002", "")
	took := waitList(t, rec.updates, nil, "127.0.0.1:9001 | 127.0.0.1:9002", 10*time.Second, "etcd")
	t.Logf("etcd restarted; change after the restart arrived %v after it (etcdPut done %v after the restart)", time.Since(restarted), time.Since(restarted)-took)
	start := time.Now()
	testpeers.EtcdDel(t, cli, "/out/127.0.0.1:9001")
	waitList(t, rec.updates, nil, "127.0.0.1:9002", time.Second, "etcd")
	t.Logf("watching again: delete arrived in %v", time.Since(start))
}
