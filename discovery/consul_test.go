package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// consulPropagation is the most a change may take from Consul to the Runner.
const consulPropagation = time.Second

func TestConsulValidate(t *testing.T) {
	ok := Consul{Host: "127.0.0.1:8500", ServiceName: "web"}
	for _, tt := range []struct {
		name    string
		edit    func(c *Consul)
		mention string // "" = valid
	}{
		{"minimal", func(*Consul) {}, ""},
		{"http scheme", func(c *Consul) { c.Host = "http://127.0.0.1:8500" }, ""},
		{"https scheme", func(c *Consul) { c.Host = "https://consul.internal:8501" }, ""},
		{"path prefix", func(c *Consul) { c.Host = "http://127.0.0.1:8080/consul" }, ""},
		{"unix socket", func(c *Consul) { c.Host = "unix:///run/consul.sock" }, ""},
		{"ipv6", func(c *Consul) { c.Host = "[::1]:8500" }, ""},
		{"no host", func(c *Consul) { c.Host = "" }, "consul_host: required"},
		{"no port", func(c *Consul) { c.Host = "127.0.0.1" }, "consul_host"},
		{"port 0", func(c *Consul) { c.Host = "127.0.0.1:0" }, "port"},
		{"bad port", func(c *Consul) { c.Host = "127.0.0.1:http" }, "port"},
		{"empty host part", func(c *Consul) { c.Host = ":8500" }, "consul_host"},
		{"unknown scheme", func(c *Consul) { c.Host = "ftp://127.0.0.1:21" }, "scheme"},
		{"unix without path", func(c *Consul) { c.Host = "unix://" }, "socket path"},
		{"http with tls", func(c *Consul) { c.Host = "http://127.0.0.1:8500"; c.TLSEnabled = true }, "consul_tls_enabled"},
		{"unix with tls", func(c *Consul) { c.Host = "unix:///run/consul.sock"; c.TLSEnabled = true }, "consul_tls_enabled"},
		{"no service", func(c *Consul) { c.ServiceName = "" }, "consul_service_name"},
		{"cert without key", func(c *Consul) { c.TLSEnabled = true; c.TLSCertPath = "c.pem" }, "consul_tls_key_path"},
		{"key without cert", func(c *Consul) { c.TLSEnabled = true; c.TLSKeyPath = "k.pem" }, "consul_tls_cert_path"},
		{"bad failpolicy", func(c *Consul) { c.FailPolicy = "drop" }, "failpolicy"},
		{"negative timeout", func(c *Consul) { c.Timeout = -1 }, "timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			err := c.Validate()
			if tt.mention == "" {
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Provision(caddy.Context{}); err != nil {
					t.Fatalf("Provision: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tt.mention)
			}
			if err := c.Provision(caddy.Context{}); err == nil {
				t.Fatal("Provision accepted what Validate rejects")
			}
		})
	}
}

func TestConsulJSON(t *testing.T) {
	// gobetween's field names, as a gobetween config carries them
	in := `{"consul_host":"localhost:8500","consul_service_name":"web","consul_service_tag":"prod",
		"consul_service_passing_only":true,"consul_datacenter":"dc2",
		"consul_auth_username":"u","consul_auth_password":"p","consul_acl_token":"t",
		"consul_tls_enabled":true,"consul_tls_cert_path":"c.pem","consul_tls_key_path":"k.pem",
		"consul_tls_cacert_path":"ca.pem","interval":"10s","timeout":"2s","failpolicy":"setempty"}`
	var c Consul
	dec := json.NewDecoder(strings.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	want := Consul{Host: "localhost:8500", ServiceName: "web", ServiceTag: "prod", ServicePassingOnly: true,
		Datacenter: "dc2", AuthUsername: "u", AuthPassword: "p", ACLToken: "t", TLSEnabled: true,
		TLSCertPath: "c.pem", TLSKeyPath: "k.pem", TLSCACertPath: "ca.pem",
		Common: Common{Interval: caddy.Duration(10 * time.Second), Timeout: caddy.Duration(2 * time.Second), FailPolicy: "setempty"}}
	if !sameConsulConfig(c, want) {
		t.Fatalf("decoded %+v\nwant    %+v", c, want)
	}
	out, err := json.Marshal(Consul{Host: "127.0.0.1:8500", ServiceName: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"consul_host":"127.0.0.1:8500","consul_service_name":"web"}` {
		t.Fatalf("defaults marshal to %s", out)
	}
}

// sameConsulConfig compares the config fields of two sources.
func sameConsulConfig(a, b Consul) bool {
	a.client, a.logger, a.seen = nil, nil, nil
	b.client, b.logger, b.seen = nil, nil, nil
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestConsulCaddyfile(t *testing.T) {
	runCaddyfileCases(t, []caddyfileCase[Consul]{
		{"all fields", `consul {
				host https://127.0.0.1:8501
				service_name web
				service_tag prod
				service_passing_only
				datacenter dc2
				auth_username u
				auth_password "p w"
				acl_token 0f4c
				tls_enabled true
				tls_cert_path /c.pem
				tls_key_path /k.pem
				tls_cacert_path /ca.pem
				interval 30s
				timeout 2s
				failpolicy setempty
			}`,
			Consul{Host: "https://127.0.0.1:8501", ServiceName: "web", ServiceTag: "prod", ServicePassingOnly: true,
				Datacenter: "dc2", AuthUsername: "u", AuthPassword: "p w", ACLToken: "0f4c", TLSEnabled: true,
				TLSCertPath: "/c.pem", TLSKeyPath: "/k.pem", TLSCACertPath: "/ca.pem",
				Common: Common{Interval: caddy.Duration(30 * time.Second), Timeout: caddy.Duration(2 * time.Second), FailPolicy: "setempty"}}, ""},
		{"gobetween names", `consul {
				consul_host 127.0.0.1:8500
				consul_service_name web
				consul_service_passing_only false
				consul_tls_enabled false
			}`,
			Consul{Host: "127.0.0.1:8500", ServiceName: "web"}, ""},
		{"argument after kind", "consul 127.0.0.1:8500", Consul{}, "argument"},
		{"host without value", "consul {\n host\n}", Consul{}, "argument"},
		{"two values", "consul {\n service_name a b\n}", Consul{}, "argument"},
		{"bad flag", "consul {\n service_passing_only yes-please\n}", Consul{}, "service_passing_only"},
		{"flag with two values", "consul {\n tls_enabled true false\n}", Consul{}, "argument"},
		{"unknown", "consul {\n colour red\n}", Consul{}, "colour"},
		{"bad interval", "consul {\n interval soon\n}", Consul{}, "interval"},
	}, func(got, want *Consul) bool {
		return sameConsulConfig(*got, *want)
	})
}

// How Consul's entries become backends, without an agent.
func TestConsulBackends(t *testing.T) {
	node := &api.Node{Node: "n1", Address: "10.0.0.9"}
	warning := api.HealthChecks{{Status: api.HealthPassing}, {Status: api.HealthWarning}}
	for _, tt := range []struct {
		name    string
		entry   api.ServiceEntry
		want    string // backend line; "" = skipped
		skipLog bool
	}{
		{"service address", api.ServiceEntry{Node: node, Service: &api.AgentService{Address: "10.0.0.1", Port: 80}}, "10.0.0.1:80", false},
		{"node address", api.ServiceEntry{Node: node, Service: &api.AgentService{Port: 81}}, "10.0.0.9:81", false},
		{"ipv6", api.ServiceEntry{Node: node, Service: &api.AgentService{Address: "fd00::1", Port: 82}}, "[fd00::1]:82", false},
		{"sni tag", api.ServiceEntry{Node: node, Service: &api.AgentService{Address: "10.0.0.1", Port: 80,
			Tags: []string{"prod", "sni=a.example", "x=y"}}}, "10.0.0.1:80 sni=a.example", false},
		{"last sni tag wins", api.ServiceEntry{Node: node, Service: &api.AgentService{Address: "10.0.0.1", Port: 80,
			Tags: []string{"sni=a.example", "sni=b.example"}}}, "10.0.0.1:80 sni=b.example", false},
		{"tag sni without =", api.ServiceEntry{Node: node, Service: &api.AgentService{Address: "10.0.0.1", Port: 80,
			Tags: []string{"sni", "snix=1"}}}, "10.0.0.1:80", false},
		{"passing weight", api.ServiceEntry{Node: node, Service: &api.AgentService{Address: "10.0.0.1", Port: 80,
			Weights: api.AgentWeights{Passing: 5, Warning: 2}}}, "10.0.0.1:80 weight=5", false},
		{"warning weight", api.ServiceEntry{Node: node, Checks: warning, Service: &api.AgentService{Address: "10.0.0.1", Port: 80,
			Weights: api.AgentWeights{Passing: 5, Warning: 2}}}, "10.0.0.1:80 weight=2", false},
		{"warning weight 0", api.ServiceEntry{Node: node, Checks: warning, Service: &api.AgentService{Address: "10.0.0.1", Port: 80,
			Weights: api.AgentWeights{Passing: 5}}}, "10.0.0.1:80 weight=0", false},
		{"no weights", api.ServiceEntry{Node: node, Checks: warning, Service: &api.AgentService{Address: "10.0.0.1", Port: 80}}, "10.0.0.1:80", false},
		{"port 0", api.ServiceEntry{Node: node, Service: &api.AgentService{ID: "p0", Address: "10.0.0.1"}}, "", true},
		{"no address anywhere", api.ServiceEntry{Node: &api.Node{Node: "n2"}, Service: &api.AgentService{ID: "noaddr", Port: 80}}, "", true},
		{"no node", api.ServiceEntry{Service: &api.AgentService{ID: "nonode", Port: 80}}, "", true},
		{"port too large", api.ServiceEntry{Node: node, Service: &api.AgentService{ID: "big", Port: 70000}}, "", true},
		{"no service", api.ServiceEntry{Node: node}, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.WarnLevel)
			c := &Consul{logger: zap.New(core)}
			got := c.backends([]*api.ServiceEntry{&tt.entry})
			switch {
			case tt.want == "" && len(got) != 0:
				t.Fatalf("backends = %v, want the entry skipped", got)
			case tt.want != "" && (len(got) != 1 || got[0].String() != tt.want):
				t.Fatalf("backends = %v, want [%s]", got, tt.want)
			}
			if skipped := logs.FilterMessageSnippet("skipping").Len() == 1; skipped != tt.skipLog {
				t.Fatalf("skip logged = %v, want %v (%v)", skipped, tt.skipLog, logs.All())
			}
			if tt.skipLog && logs.FilterField(zap.String("id", tt.entry.Service.ID)).Len() != 1 {
				t.Fatalf("the skip log does not name the instance: %v", logs.All())
			}
		})
	}
}

func TestConsulProvisionTLSFiles(t *testing.T) {
	pki := newTestPKI(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		edit    func(c *Consul)
		mention string
	}{
		{"all files", func(c *Consul) {}, ""},
		{"missing ca", func(c *Consul) { c.TLSCACertPath = filepath.Join(dir, "nope.pem") }, "consul_tls_cacert_path"},
		{"ca without certificate", func(c *Consul) { c.TLSCACertPath = garbage }, "consul_tls_cacert_path"},
		{"missing cert", func(c *Consul) { c.TLSCertPath = filepath.Join(dir, "nope.pem") }, "consul_tls_cert_path"},
		{"key of another cert", func(c *Consul) { c.TLSKeyPath = pki.serverKey }, "consul_tls_key_path"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &Consul{Host: "127.0.0.1:8501", ServiceName: "web", TLSEnabled: true,
				TLSCertPath: pki.clientCert, TLSKeyPath: pki.clientKey, TLSCACertPath: pki.ca}
			tt.edit(c)
			wantErrNaming(t, "Provision()", c.Provision(caddy.Context{}), tt.mention)
		})
	}
}

// TestConsulAgent runs the source against a real Consul agent (-dev) with an
// HTTPS port whose clients must show a certificate.
func TestConsulAgent(t *testing.T) {
	pki := newTestPKI(t)
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{CA: pki.ca, Cert: pki.serverCert, Key: pki.serverKey})

	t.Run("fetch", func(t *testing.T) {
		svc := "fetch"
		agent.Register(t, &api.AgentServiceRegistration{ID: "f1", Name: svc, Address: "10.0.0.1", Port: 8001,
			Tags: []string{"sni=one.example", "prod"}, Weights: &api.AgentWeights{Passing: 3, Warning: 1}})
		agent.Register(t, &api.AgentServiceRegistration{ID: "f2", Name: svc, Port: 8002}) // node address
		agent.Register(t, &api.AgentServiceRegistration{ID: "f3", Name: svc, Address: "10.0.0.3", Port: 8003, Tags: []string{"canary"}})
		agent.Register(t, &api.AgentServiceRegistration{ID: "f4", Name: svc, Address: "10.0.0.4"}) // no port: skipped
		for _, tt := range []struct {
			name, tag string
			want      []string
		}{
			{"all", "", []string{"10.0.0.1:8001 weight=3 sni=one.example", "10.0.0.3:8003", "127.0.0.1:8002"}},
			{"tag", "canary", []string{"10.0.0.3:8003"}},
			{"unknown tag", "nope", nil},
		} {
			t.Run(tt.name, func(t *testing.T) {
				c := consulSource(t, agent, Consul{ServiceName: svc, ServiceTag: tt.tag})
				core, logs := observer.New(zapcore.WarnLevel)
				c.logger = zap.New(core)
				got, err := c.Fetch(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(sortedLines(got), tt.want) {
					t.Fatalf("Fetch = %q, want %q", sortedLines(got), tt.want)
				}
				if tt.tag == "" && logs.FilterField(zap.String("id", "f4")).Len() != 1 {
					t.Fatalf("the instance without a port was not logged as skipped: %v", logs.All())
				}
			})
		}
		t.Run("unknown service", func(t *testing.T) {
			got, err := consulSource(t, agent, Consul{ServiceName: "nothing-here"}).Fetch(context.Background())
			if err != nil || len(got) != 0 {
				t.Fatalf("Fetch = %v, %v; want an empty list", got, err)
			}
		})
	})

	t.Run("watch", func(t *testing.T) {
		svc := "watched"
		c := consulSource(t, agent, Consul{ServiceName: svc})
		rec := newRecord()
		ctx, cancel := context.WithCancel(context.Background())
		done := rec.run(t, ctx, c)
		defer func() { cancel(); recv(t, done, 2*time.Second, "Run return") }()
		if got := recv(t, rec.updates, 5*time.Second, "first list"); len(got) != 0 {
			t.Fatalf("first list = %v, want empty (nothing registered)", got)
		}
		for _, step := range []struct {
			what   string
			change func()
			want   []string
		}{
			{"register", func() {
				agent.Register(t, &api.AgentServiceRegistration{ID: "w1", Name: svc, Address: "10.1.0.1", Port: 9001})
			}, []string{"10.1.0.1:9001"}},
			{"second instance", func() {
				agent.Register(t, &api.AgentServiceRegistration{ID: "w2", Name: svc, Address: "10.1.0.2", Port: 9002})
			}, []string{"10.1.0.1:9001", "10.1.0.2:9002"}},
			{"tag", func() {
				agent.Register(t, &api.AgentServiceRegistration{ID: "w1", Name: svc, Address: "10.1.0.1", Port: 9001, Tags: []string{"sni=w.example"}})
			}, []string{"10.1.0.1:9001 sni=w.example", "10.1.0.2:9002"}},
			{"address", func() {
				agent.Register(t, &api.AgentServiceRegistration{ID: "w1", Name: svc, Address: "10.1.0.11", Port: 9001, Tags: []string{"sni=w.example"}})
			}, []string{"10.1.0.11:9001 sni=w.example", "10.1.0.2:9002"}},
			{"port", func() {
				agent.Register(t, &api.AgentServiceRegistration{ID: "w2", Name: svc, Address: "10.1.0.2", Port: 9012})
			}, []string{"10.1.0.11:9001 sni=w.example", "10.1.0.2:9012"}},
			{"weight", func() {
				agent.Register(t, &api.AgentServiceRegistration{ID: "w2", Name: svc, Address: "10.1.0.2", Port: 9012, Weights: &api.AgentWeights{Passing: 4, Warning: 1}})
			}, []string{"10.1.0.11:9001 sni=w.example", "10.1.0.2:9012 weight=4"}},
			{"deregister", func() { agent.Deregister(t, "w1") }, []string{"10.1.0.2:9012 weight=4"}},
			{"deregister last", func() { agent.Deregister(t, "w2") }, nil},
		} {
			start := time.Now()
			step.change()
			waitList(t, rec.updates, asSortedLines, strings.Join(step.want, " | "), consulPropagation, step.what)
			t.Logf("%s: the Runner had the new list %v after the change", step.what, time.Since(start).Round(time.Millisecond))
		}
		select {
		case err := <-rec.errs:
			t.Fatalf("the watch reported an error: %v", err)
		default:
		}
	})

	t.Run("passing only", func(t *testing.T) {
		svc := "checked"
		agent.Register(t, &api.AgentServiceRegistration{ID: "c1", Name: svc, Address: "10.2.0.1", Port: 7001,
			Weights: &api.AgentWeights{Passing: 5, Warning: 2}, Check: &api.AgentServiceCheck{CheckID: "c1-ttl", TTL: "10m"}})
		agent.Register(t, &api.AgentServiceRegistration{ID: "c2", Name: svc, Address: "10.2.0.2", Port: 7002})
		passing := consulSource(t, agent, Consul{ServiceName: svc, ServicePassingOnly: true})
		all := consulSource(t, agent, Consul{ServiceName: svc})
		recPassing, recAll := newRecord(), newRecord()
		ctx, cancel := context.WithCancel(context.Background())
		donePassing, doneAll := recPassing.run(t, ctx, passing), recAll.run(t, ctx, all)
		defer func() {
			cancel()
			recv(t, donePassing, 2*time.Second, "Run return")
			recv(t, doneAll, 2*time.Second, "Run return")
		}()
		// a TTL check starts critical
		waitList(t, recPassing.updates, asSortedLines, "10.2.0.2:7002", 5*time.Second, "critical instance left out")
		waitList(t, recAll.updates, asSortedLines, "10.2.0.1:7001 weight=5 | 10.2.0.2:7002", 5*time.Second, "every instance without passing_only")
		for _, step := range []struct {
			status            string
			wantPass, wantAll []string
		}{
			{api.HealthPassing, []string{"10.2.0.1:7001 weight=5", "10.2.0.2:7002"}, nil},
			{api.HealthWarning, []string{"10.2.0.2:7002"}, []string{"10.2.0.1:7001 weight=2", "10.2.0.2:7002"}},
			{api.HealthPassing, []string{"10.2.0.1:7001 weight=5", "10.2.0.2:7002"}, []string{"10.2.0.1:7001 weight=5", "10.2.0.2:7002"}},
			{api.HealthCritical, []string{"10.2.0.2:7002"}, nil},
		} {
			start := time.Now()
			if err := agent.API.Agent().UpdateTTL("c1-ttl", "test", step.status); err != nil {
				t.Fatal(err)
			}
			waitList(t, recPassing.updates, asSortedLines, strings.Join(step.wantPass, " | "), consulPropagation, "passing only after "+step.status)
			if step.wantAll != nil {
				waitList(t, recAll.updates, asSortedLines, strings.Join(step.wantAll, " | "), consulPropagation, "all after "+step.status)
			}
			t.Logf("check %s: lists updated after %v", step.status, time.Since(start).Round(time.Millisecond))
		}
	})

	t.Run("datacenter", func(t *testing.T) {
		agent.Register(t, &api.AgentServiceRegistration{ID: "d1", Name: "dc", Address: "10.3.0.1", Port: 6001})
		got, err := consulSource(t, agent, Consul{ServiceName: "dc", Datacenter: "dc1"}).Fetch(context.Background())
		if err != nil || !slices.Equal(sortedLines(got), []string{"10.3.0.1:6001"}) {
			t.Fatalf("Fetch in dc1 = %v, %v", got, err)
		}
		_, err = consulSource(t, agent, Consul{ServiceName: "dc", Datacenter: "elsewhere"}).Fetch(context.Background())
		if err == nil || !strings.Contains(err.Error(), "datacenter") || !strings.Contains(err.Error(), `consul: service "dc" at `+agent.HTTP) {
			t.Fatalf("Fetch in an unknown datacenter: %v, want an error naming the service, the agent and the datacenter", err)
		}
		t.Logf("error: %v", err)
	})

	t.Run("unix socket", func(t *testing.T) {
		agent.Register(t, &api.AgentServiceRegistration{ID: "u1", Name: "local", Address: "10.8.0.1", Port: 1001})
		got, err := consulSource(t, agent, Consul{Host: "unix://" + agent.Unix, ServiceName: "local"}).Fetch(context.Background())
		if err != nil || !slices.Equal(sortedLines(got), []string{"10.8.0.1:1001"}) {
			t.Fatalf("Fetch over the unix socket = %v, %v", got, err)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		addr := consulClosedAddr(t)
		c := &Consul{Host: addr, ServiceName: "web"}
		if err := c.Provision(caddy.Context{}); err != nil {
			t.Fatal(err)
		}
		_, err := c.Fetch(context.Background())
		if err == nil || !strings.Contains(err.Error(), "consul: ") || !strings.Contains(err.Error(), addr) ||
			!strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("Fetch from a closed port: %v, want a consul error naming %s and the refusal", err, addr)
		}
	})

	t.Run("fetch honours ctx", func(t *testing.T) {
		// a listener that accepts and never answers
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c := &Consul{Host: ln.Addr().String(), ServiceName: "web"}
		if err := c.Provision(caddy.Context{}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := c.Fetch(ctx); err == nil {
			t.Fatal("Fetch from a silent server succeeded")
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Fetch took %v with a 200ms context", took)
		}
	})

	t.Run("basic auth", func(t *testing.T) {
		proxy := consulAuthProxy(t, agent.HTTP, "between", "s3cret", "/consul")
		agent.Register(t, &api.AgentServiceRegistration{ID: "b1", Name: "behind", Address: "10.4.0.1", Port: 5001})
		for _, tt := range []struct {
			name, host, user, pass string
			mention                []string // "" = works
		}{
			{"right credentials", "http://" + proxy + "/consul", "between", "s3cret", nil},
			{"wrong password", "http://" + proxy + "/consul", "between", "guess", []string{"401", "consul_auth_username", "consul_auth_password"}},
			{"no credentials", "http://" + proxy + "/consul", "", "", []string{"401", "consul_auth_username"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				c := &Consul{Host: tt.host, ServiceName: "behind", AuthUsername: tt.user, AuthPassword: tt.pass}
				if err := c.Provision(caddy.Context{}); err != nil {
					t.Fatal(err)
				}
				got, err := c.Fetch(context.Background())
				if tt.mention == nil {
					if err != nil || !slices.Equal(sortedLines(got), []string{"10.4.0.1:5001"}) {
						t.Fatalf("Fetch through the proxy = %v, %v", got, err)
					}
					return
				}
				if err == nil {
					t.Fatalf("Fetch = %v, want an error", got)
				}
				t.Logf("error: %v", err)
				wantErrParts(t, err, tt.mention...)
			})
		}
		t.Run("watch through the proxy", func(t *testing.T) {
			c := &Consul{Host: "http://" + proxy + "/consul", ServiceName: "behind", AuthUsername: "between", AuthPassword: "s3cret"}
			if err := c.Provision(caddy.Context{}); err != nil {
				t.Fatal(err)
			}
			rec := newRecord()
			ctx, cancel := context.WithCancel(context.Background())
			done := rec.run(t, ctx, c)
			defer func() { cancel(); recv(t, done, 2*time.Second, "Run return") }()
			waitList(t, rec.updates, asSortedLines, "10.4.0.1:5001", 5*time.Second, "first list")
			start := time.Now()
			agent.Register(t, &api.AgentServiceRegistration{ID: "b2", Name: "behind", Address: "10.4.0.2", Port: 5002})
			waitList(t, rec.updates, asSortedLines, "10.4.0.1:5001 | 10.4.0.2:5002", consulPropagation, "registration through the proxy")
			t.Logf("through the basic-auth proxy: new list after %v", time.Since(start).Round(time.Millisecond))
		})
	})

	t.Run("proxy goes away", func(t *testing.T) {
		// the Runner keeps the last list when Consul cannot be reached
		srv := consulAuthServer(t, agent.HTTP, "u", "p", "")
		agent.Register(t, &api.AgentServiceRegistration{ID: "g1", Name: "gone", Address: "10.5.0.1", Port: 4001})
		c := &Consul{Host: srv.Listener.Addr().String(), ServiceName: "gone", AuthUsername: "u", AuthPassword: "p"}
		if err := c.Provision(caddy.Context{}); err != nil {
			t.Fatal(err)
		}
		rec := newRecord()
		ctx, cancel := context.WithCancel(context.Background())
		done := rec.run(t, ctx, c)
		defer func() { cancel(); recv(t, done, 2*time.Second, "Run return") }()
		waitList(t, rec.updates, asSortedLines, "10.5.0.1:4001", 5*time.Second, "first list")
		srv.CloseClientConnections()
		srv.Close()
		for i := 0; i < 2; i++ { // the broken watch, then the fetch after it
			err := recv(t, rec.errs, 5*time.Second, "error report")
			if !strings.Contains(err.Error(), "consul: ") || !strings.Contains(err.Error(), srv.Listener.Addr().String()) {
				t.Fatalf("error %q does not name consul and the address", err)
			}
		}
		select {
		case l := <-rec.updates:
			t.Fatalf("the list changed to %v while Consul was unreachable (failpolicy keeplast)", l)
		default:
		}
	})

	t.Run("tls", func(t *testing.T) {
		agent.Register(t, &api.AgentServiceRegistration{ID: "t1", Name: "secure", Address: "10.6.0.1", Port: 3001})
		for _, tt := range []struct {
			name    string
			src     Consul
			mention string // "" = works
		}{
			{"ca and client certificate", Consul{Host: agent.HTTPS, TLSEnabled: true,
				TLSCACertPath: pki.ca, TLSCertPath: pki.clientCert, TLSKeyPath: pki.clientKey}, ""},
			{"https:// turns TLS on", Consul{Host: "https://" + agent.HTTPS,
				TLSCACertPath: pki.ca, TLSCertPath: pki.clientCert, TLSKeyPath: pki.clientKey}, ""},
			{"by name", Consul{Host: "localhost:" + consulPort(agent.HTTPS), TLSEnabled: true,
				TLSCACertPath: pki.ca, TLSCertPath: pki.clientCert, TLSKeyPath: pki.clientKey}, ""},
			{"unknown CA", Consul{Host: agent.HTTPS, TLSEnabled: true,
				TLSCertPath: pki.clientCert, TLSKeyPath: pki.clientKey}, "certificate"},
			{"no client certificate", Consul{Host: agent.HTTPS, TLSEnabled: true, TLSCACertPath: pki.ca}, "consul: "},
			{"plain HTTP to the TLS port", Consul{Host: agent.HTTPS}, "consul: "},
		} {
			t.Run(tt.name, func(t *testing.T) {
				c := tt.src
				c.ServiceName = "secure"
				if err := c.Provision(caddy.Context{}); err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				got, err := c.Fetch(ctx)
				if tt.mention == "" {
					if err != nil || !slices.Equal(sortedLines(got), []string{"10.6.0.1:3001"}) {
						t.Fatalf("Fetch over TLS = %v, %v", got, err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tt.mention) {
					t.Fatalf("Fetch = %v, %v; want an error mentioning %q", got, err, tt.mention)
				}
				t.Logf("error: %v", err)
			})
		}
	})
}

// TestConsulACL runs the source against an agent with ACLs on (default deny).
func TestConsulACL(t *testing.T) {
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{ACL: true})
	agent.Register(t, &api.AgentServiceRegistration{ID: "a1", Name: "web", Address: "10.7.0.1", Port: 2001})
	agent.Register(t, &api.AgentServiceRegistration{ID: "a2", Name: "web", Address: "10.7.0.2", Port: 2002})
	readToken := agent.Token(t, `service "web" { policy = "read" }
node_prefix "" { policy = "read" }`)
	serviceOnly := agent.Token(t, `service "web" { policy = "read" }`)
	otherService := agent.Token(t, `service "db" { policy = "read" }
node_prefix "" { policy = "read" }`)
	want := []string{"10.7.0.1:2001", "10.7.0.2:2002"}
	t.Setenv("BETWEEN_TEST_CONSUL_TOKEN", readToken)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(readToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name, token string
		mention     []string // nil = works
	}{
		{"read token", readToken, nil},
		{"management token", agent.Mgmt, nil},
		{"token from the environment", "{env.BETWEEN_TEST_CONSUL_TOKEN}", nil},
		{"token from a file", "{file." + tokenFile + "}", nil},
		{"no token", "", []string{"permission denied", `service "web"`, "consul_acl_token"}},
		{"unknown token", "9d7f3c4e-1111-2222-3333-444455556666", []string{"permission denied", "ACL not found", "consul_acl_token"}},
		{"no node:read", serviceOnly, []string{"permission denied", "node:read", "consul_acl_token"}},
		{"another service", otherService, []string{"permission denied", "service:read"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := consulSource(t, agent, Consul{ServiceName: "web", ACLToken: tt.token}).Fetch(context.Background())
			if tt.mention == nil {
				if err != nil || !slices.Equal(sortedLines(got), want) {
					t.Fatalf("Fetch = %v, %v; want %v", got, err, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Fetch = %v, want a permission error", got)
			}
			t.Logf("error: %v", err)
			wantErrParts(t, err, tt.mention...)
		})
	}

	t.Run("token revoked while watching", func(t *testing.T) {
		id, secret := agent.TokenWithID(t, `service "web" { policy = "read" }
node_prefix "" { policy = "read" }`)
		c := consulSource(t, agent, Consul{ServiceName: "web", ACLToken: secret})
		c.wait = time.Second // a query started after the revocation may wait this long
		rec := newRecord()
		ctx, cancel := context.WithCancel(context.Background())
		done := rec.run(t, ctx, c)
		defer func() { cancel(); recv(t, done, 2*time.Second, "Run return") }()
		waitList(t, rec.updates, asSortedLines, strings.Join(want, " | "), 5*time.Second, "first list")
		start := time.Now()
		agent.Register(t, &api.AgentServiceRegistration{ID: "a3", Name: "web", Address: "10.7.0.3", Port: 2003})
		waitList(t, rec.updates, asSortedLines, strings.Join(append(want, "10.7.0.3:2003"), " | "), consulPropagation, "registration seen with the token")
		t.Logf("with ACLs: new list after %v", time.Since(start).Round(time.Millisecond))
		if _, err := agent.API.ACL().TokenDelete(id, nil); err != nil {
			t.Fatal(err)
		}
		// a change wakes the blocking query, which now runs without a valid token
		agent.Deregister(t, "a3")
		revoked := time.Now()
		err := recv(t, rec.errs, 5*time.Second, "permission error")
		t.Logf("revoked token noticed after %v (wait 1s)", time.Since(revoked).Round(time.Millisecond))
		if !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("error after the token was deleted: %v", err)
		}
		select {
		case l := <-rec.updates:
			t.Fatalf("the list changed to %v after the token was revoked (failpolicy keeplast)", l)
		default:
		}
	})
}

// consulClosedAddr is a 127.0.0.1 address where nothing listens.
func consulClosedAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", testpeers.FreePort(t))
}

func consulPort(hostport string) string {
	_, port, _ := net.SplitHostPort(hostport)
	return port
}

// consulSource is a provisioned Consul source for this agent (its HTTP API) with
// the fields of c.
func consulSource(t *testing.T, a *testpeers.Consul, c Consul) *Consul {
	t.Helper()
	if c.Host == "" {
		c.Host = a.HTTP
	}
	src := &c
	if err := src.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	return src
}

// consulAuthServer is a reverse proxy to the agent at target that wants HTTP
// basic auth user:pass and serves Consul's API under prefix.
func consulAuthServer(t *testing.T, target, user, pass, prefix string) *httptest.Server {
	t.Helper()
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.FlushInterval = -1
	rp.ErrorLog = log.New(io.Discard, "", 0) // cancelled blocking queries are expected
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="consul"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		path, found := strings.CutPrefix(r.URL.Path, prefix)
		if !found {
			http.NotFound(w, r)
			return
		}
		r.URL.Path = path
		r.Header.Del("Authorization")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// consulAuthProxy is consulAuthServer's address.
func consulAuthProxy(t *testing.T, target, user, pass, prefix string) string {
	return consulAuthServer(t, target, user, pass, prefix).Listener.Addr().String()
}

// testPKI is a CA with a server certificate (127.0.0.1, localhost) and a
// client certificate, as PEM files.
type testPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{ca: filepath.Join(dir, "ca.pem"),
		serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client-key.pem")}
	ca := testpeers.NewCA(t, "between test CA")
	ca.WriteCA(t, p.ca)
	ca.Issue(t, "server", false, p.serverCert, p.serverKey, "server.dc1.consul")
	ca.Issue(t, "client", true, p.clientCert, p.clientKey)
	return p
}
