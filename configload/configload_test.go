package configload

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		module caddy.Validator
		want   string // "" = valid; else a part of the error
	}{
		{"consul minimal", &Consul{Key: "between/config"}, ""},
		{"consul full", &Consul{Address: "10.0.0.1:8501", Scheme: "https", Datacenter: "dc2", Token: "{env.T}", Key: "k",
			TLS: &TLS{CACertPath: "/ca.pem", CertPath: "/c.pem", KeyPath: "/k.pem", ServerName: "consul"}, Adapter: "caddyfile", Wait: caddy.Duration(time.Minute)}, ""},
		{"consul unix", &Consul{Address: "unix:///run/consul.sock", Key: "k"}, ""},
		{"consul no key", &Consul{}, "key: required"},
		{"consul key with slash", &Consul{Key: "/between/config"}, "do not start with /"},
		{"consul bad scheme", &Consul{Key: "k", Scheme: "ftp"}, `scheme "ftp"`},
		{"consul http with tls", &Consul{Key: "k", Scheme: "http", TLS: &TLS{}}, "scheme http contradicts tls"},
		{"consul bad address", &Consul{Key: "k", Address: "consul"}, `address "consul"`},
		{"consul bad port", &Consul{Key: "k", Address: "h:99999"}, `port "99999"`},
		{"consul unix with tls", &Consul{Key: "k", Address: "unix:///s", TLS: &TLS{}}, "unix://"},
		{"consul unix without path", &Consul{Key: "k", Address: "unix://"}, "socket path"},
		{"consul negative wait", &Consul{Key: "k", Wait: -1}, "wait"},
		{"consul cert without key", &Consul{Key: "k", TLS: &TLS{CertPath: "/c.pem"}}, "tls.cert_path and tls.key_path"},
		{"consul unknown adapter", &Consul{Key: "k", Adapter: "yaml-of-doom"}, `adapter "yaml-of-doom"`},
		{"consul json adapter", &Consul{Key: "k", Adapter: "json"}, ""},

		{"etcd minimal", &Etcd{Key: "/between/config"}, ""},
		{"etcd full", &Etcd{Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}, Username: "u", Password: "p", Key: "/k",
			TLS: &TLS{CACertPath: "/ca.pem"}, Adapter: "caddyfile", DialTimeout: caddy.Duration(time.Second)}, ""},
		{"etcd host:port", &Etcd{Endpoints: []string{"127.0.0.1:2379"}, Key: "/k"}, ""},
		{"etcd no key", &Etcd{}, "key: required"},
		{"etcd mixed schemes", &Etcd{Endpoints: []string{"http://a:1", "https://b:2"}, Key: "/k"}, "endpoints[1]"},
		{"etcd bad scheme", &Etcd{Endpoints: []string{"grpc://a:1"}, Key: "/k"}, `scheme "grpc"`},
		{"etcd path", &Etcd{Endpoints: []string{"http://a:1/v3"}, Key: "/k"}, "host:port only"},
		{"etcd no port", &Etcd{Endpoints: []string{"etcd"}, Key: "/k"}, "endpoints[0]"},
		{"etcd http with tls", &Etcd{Endpoints: []string{"http://a:1"}, Key: "/k", TLS: &TLS{}}, "http:// endpoints with tls"},
		{"etcd user without password", &Etcd{Key: "/k", Username: "u"}, "username and password"},
		{"etcd negative timeout", &Etcd{Key: "/k", DialTimeout: -1}, "dial_timeout"},
		{"etcd key without cert", &Etcd{Key: "/k", TLS: &TLS{KeyPath: "/k.pem"}}, "tls.cert_path and tls.key_path"},
		{"etcd unknown adapter", &Etcd{Key: "/k", Adapter: "nope"}, `adapter "nope"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.module.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.want != "" && err == nil:
				t.Fatalf("Validate() = nil, want an error with %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("Validate() = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestSelfJSON(t *testing.T) {
	c := &Consul{Key: "between/config", Token: "{env.CONSUL_TOKEN}", Wait: caddy.Duration(time.Minute), TLS: &TLS{CACertPath: "/ca.pem"}}
	self, err := selfJSON(c.CaddyModule().ID, c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(self, &m); err != nil {
		t.Fatal(err)
	}
	if m["module"] != "between_consul" || m["key"] != "between/config" || m["token"] != "{env.CONSUL_TOKEN}" {
		t.Errorf("self JSON %s: want module between_consul, the key and the unreplaced token placeholder", self)
	}
	delete(m, "module")
	rest, _ := json.Marshal(m)
	var back Consul
	if err := caddy.StrictUnmarshalJSON(rest, &back); err != nil {
		t.Fatalf("self JSON without module does not decode strictly: %v", err)
	}
	if back.Key != c.Key || back.Wait != c.Wait || back.TLS == nil || back.TLS.CACertPath != "/ca.pem" {
		t.Errorf("round trip: got %+v", back)
	}
}

func TestInject(t *testing.T) {
	self := json.RawMessage(`{"module":"between_etcd","key":"/k"}`)
	tests := []struct {
		name string
		cfg  string
		want string // the admin section after injection; "" = an error is wanted
		err  string
	}{
		{"no admin", `{"apps":{"http":{}}}`,
			`{"config":{"load":{"module":"between_etcd","key":"/k"},"load_delay":"100ms"}}`, ""},
		{"null admin", `{"admin":null}`,
			`{"config":{"load":{"module":"between_etcd","key":"/k"},"load_delay":"100ms"}}`, ""},
		{"admin fields kept", `{"admin":{"listen":"{env.ADMIN}","origins":["a"],"config":{"persist":false}}}`,
			`{"config":{"load":{"module":"between_etcd","key":"/k"},"load_delay":"100ms","persist":false},"listen":"{env.ADMIN}","origins":["a"]}`, ""},
		{"disabled admin", `{"admin":{"disabled":true}}`,
			`{"config":{"load":{"module":"between_etcd","key":"/k"},"load_delay":"100ms"},"disabled":true}`, ""},
		{"own load_delay kept", `{"admin":{"config":{"load_delay":"2s"}}}`,
			`{"config":{"load":{"module":"between_etcd","key":"/k"},"load_delay":"2s"}}`, ""},
		{"own load_delay in nanoseconds kept", `{"admin":{"config":{"load_delay":3000000000}}}`,
			`{"config":{"load":{"module":"between_etcd","key":"/k"},"load_delay":3000000000}}`, ""},
		{"zero load_delay replaced", `{"admin":{"config":{"load_delay":0}}}`,
			`{"config":{"load":{"module":"between_etcd","key":"/k"},"load_delay":"100ms"}}`, ""},
		{"user's loader kept", `{"admin":{"config":{"load":{"module":"http","url":"http://x/"},"load_delay":"30s"}}}`,
			`{"config":{"load":{"module":"http","url":"http://x/"},"load_delay":"30s"}}`, ""},
		{"user's loader without delay kept as is", `{"admin":{"config":{"load":{"module":"http","url":"http://x/"}}}}`,
			`{"config":{"load":{"module":"http","url":"http://x/"}}}`, ""},
		{"not JSON", `listen :80`, "", "not a JSON config"},
		{"array", `[1]`, "", "not a JSON config"},
		{"null", `null`, "", "not a JSON config"},
		{"admin not an object", `{"admin":"x"}`, "", "admin: not a JSON object"},
		{"config not an object", `{"admin":{"config":[]}}`, "", "admin.config: not a JSON object"},
		{"bad load_delay", `{"admin":{"config":{"load_delay":"soon"}}}`, "", "admin.config.load_delay"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := inject([]byte(tc.cfg), self)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("inject = %s, %v; want an error with %q", out, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var doc map[string]json.RawMessage
			if err := json.Unmarshal(out, &doc); err != nil {
				t.Fatal(err)
			}
			if got := compact(t, doc["admin"]); got != compact(t, json.RawMessage(tc.want)) {
				t.Errorf("admin = %s\nwant    %s", got, tc.want)
			}
			// the rest of the config is untouched
			var in map[string]json.RawMessage
			json.Unmarshal([]byte(tc.cfg), &in)
			for k, v := range in {
				if k != "admin" && compact(t, doc[k]) != compact(t, v) {
					t.Errorf("%s changed: %s -> %s", k, v, doc[k])
				}
			}
			// Caddy accepts the result
			var cfg caddy.Config
			if err := caddy.StrictUnmarshalJSON(out, &cfg); err != nil {
				t.Errorf("Caddy does not decode the result: %v\n%s", err, out)
			}
		})
	}
}

// compact re-encodes JSON with sorted keys.
func compact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestAdapt(t *testing.T) {
	logger := zap.NewNop()
	tests := []struct {
		name, adapter, value string
		want                 string // a part of the result, or of the error
		err                  bool
	}{
		{"none", "", `{"apps":{}}`, `{"apps":{}}`, false},
		{"json", "json", `{"apps":{}}`, `{"apps":{}}`, false},
		{"caddyfile", "caddyfile", ":8080 {\n\trespond \"hi\"\n}\n", `"static_response"`, false},
		{"caddyfile error", "caddyfile", ":8080 {\n\tnosuchdirective\n}\n", "adapting with caddyfile", true},
		{"unknown adapter", "nope", `x`, `adapter "nope"`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := adapt(tc.adapter, "between/config", []byte(tc.value), logger)
			if tc.err {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("adapt = %s, %v; want an error with %q", out, err, tc.want)
				}
				return
			}
			if err != nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("adapt = %s, %v; want %q in it", out, err, tc.want)
			}
		})
	}
}

func TestRetryPause(t *testing.T) {
	for failures, want := range map[int]time.Duration{1: 250 * time.Millisecond, 2: 500 * time.Millisecond, 3: time.Second, 5: 4 * time.Second, 6: 5 * time.Second, 100: 5 * time.Second} {
		if got := retryPause(failures); got != want {
			t.Errorf("retryPause(%d) = %v, want %v", failures, got, want)
		}
	}
}

// TestConsulStore reads and follows a key of a real Consul agent.
func TestConsulStore(t *testing.T) {
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{})
	c := &Consul{Address: agent.HTTP, Key: "between/config", Wait: caddy.Duration(2 * time.Second)}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := c.newStore()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	put := func(v string) {
		if _, err := agent.API.KV().Put(&api.KVPair{Key: c.Key, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	testStore(t, s, put, func() {
		if _, err := agent.API.KV().Delete(c.Key, nil); err != nil {
			t.Fatal(err)
		}
	})
	agent.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.read(ctx); err == nil || !strings.Contains(err.Error(), `key "between/config"`) {
		t.Errorf("read with the agent down = %v, want an error naming the key", err)
	}
}

// TestEtcdStore reads and follows a key of a real etcd.
func TestEtcdStore(t *testing.T) {
	etcd := testpeers.StartEtcd(t, nil)
	e := &Etcd{Endpoints: []string{etcd.URL}, Key: "/between/config", DialTimeout: caddy.Duration(time.Second)}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := e.newStore()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	cli := etcd.Client()
	defer cli.Close()
	testStore(t, s, func(v string) { testpeers.EtcdPut(t, cli, e.Key, v) }, func() { testpeers.EtcdDel(t, cli, e.Key) })
	// etcd down: a watch ends with an error in bounded time
	r, err := s.read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.next(context.Background(), r.pos)
		done <- err
	}()
	etcd.Kill()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), `key "/between/config"`) {
			t.Errorf("watch with etcd down = %v, want an error naming the key", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the watch did not end within 15s of etcd going down")
	}
}

// testStore checks a store's read and next against put and del of its key.
func testStore(t *testing.T, s store, put func(string), del func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := s.read(ctx)
	if err != nil || r.found {
		t.Fatalf("read of a missing key = %+v, %v; want not found", r, err)
	}
	put("one")
	r, err = s.read(ctx)
	if err != nil || !r.found || string(r.value) != "one" {
		t.Fatalf("read = %+v, %v; want one", r, err)
	}
	// next blocks until the key changes
	type result struct {
		r   reading
		err error
	}
	got := make(chan result, 1)
	go func() {
		for {
			n, err := s.next(ctx, r.pos)
			if err != nil || string(n.value) != "one" {
				got <- result{n, err}
				return
			}
			r = n // woke up without a change: wait again
		}
	}()
	select {
	case res := <-got:
		t.Fatalf("next returned %+v, %v before any change", res.r, res.err)
	case <-time.After(300 * time.Millisecond):
	}
	written := time.Now()
	put("two")
	res := <-got
	if res.err != nil || !res.r.found || string(res.r.value) != "two" || res.r.pos <= r.pos {
		t.Fatalf("next after a put = %+v, %v; want two at a later position", res.r, res.err)
	}
	t.Logf("%s: put -> next returned in %v", s.where(), time.Since(written))
	// a change that happened before next is called is seen at once
	put("three")
	n, err := s.next(ctx, res.r.pos)
	if err != nil || string(n.value) != "three" {
		t.Fatalf("next after an earlier put = %+v, %v; want three", n, err)
	}
	del()
	n, err = s.next(ctx, n.pos)
	for err == nil && n.found {
		n, err = s.next(ctx, n.pos)
	}
	if err != nil || n.found {
		t.Fatalf("next after a delete = %+v, %v; want not found", n, err)
	}
}
