package gobetween

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGolden adapts every config in testdata and compares the result with its
// golden file NAME.adapted.json.
func TestGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/*.toml")
	jsons, _ := filepath.Glob("testdata/*.json")
	for _, j := range jsons {
		if !strings.HasSuffix(j, ".adapted.json") {
			inputs = append(inputs, j)
		}
	}
	if len(inputs) < 4 {
		t.Fatalf("want at least 4 inputs, got %v", inputs)
	}
	for _, in := range inputs {
		t.Run(filepath.Base(in), func(t *testing.T) {
			body, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := Adapter{}.Adapt(body, map[string]any{"filename": in})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			golden := strings.TrimSuffix(in, filepath.Ext(in)) + ".adapted.json"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("adapted config differs from %s:\n%s", golden, got)
			}
			if !json.Valid(got) {
				t.Errorf("not JSON")
			}
		})
	}
}

// TestRegistered checks the adapter is known to Caddy by its name.
func TestRegistered(t *testing.T) {
	if caddyconfig.GetAdapter("gobetween") == nil {
		t.Fatal("adapter gobetween not registered")
	}
}

// TestSampleShape checks the key facts of gobetween's own sample config.
func TestSampleShape(t *testing.T) {
	body, err := os.ReadFile("testdata/sample.toml")
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := Adapter{}.Adapt(body, nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
		Apps struct {
			Layer4 struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
					Routes []struct {
						Handle []map[string]any `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"layer4"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.Listen != ":8888" {
		t.Errorf("admin listen = %q", cfg.Admin.Listen)
	}
	s := cfg.Apps.Layer4.Servers["sample"]
	if len(s.Listen) != 1 || s.Listen[0] != "between+tcp/localhost:3000" {
		t.Errorf("listen = %v", s.Listen)
	}
	h := s.Routes[0].Handle[0]
	if h["handler"] != "between" || h["name"] != "sample" {
		t.Errorf("handler = %v", h)
	}
	if _, ok := h["max_connections"]; ok {
		t.Errorf("max_connections = 0 (no limit) must be omitted: %v", h)
	}
}

// TestDefaultsMerge checks [defaults] reach every server and server keys win.
func TestDefaultsMerge(t *testing.T) {
	cfg := `
[defaults]
max_connections = 10
client_idle_timeout = "1m"
[servers.a]
bind = "127.0.0.1:1"
discovery = {kind = "static", static_list = ["127.0.0.1:2"]}
[servers.b]
bind = "127.0.0.1:3"
max_connections = 0
client_idle_timeout = "5s"
discovery = {kind = "static", static_list = ["127.0.0.1:4"]}
`
	out, _, err := Adapter{}.Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	handler := func(name string) map[string]any {
		s := got["apps"].(map[string]any)["layer4"].(map[string]any)["servers"].(map[string]any)[name].(map[string]any)
		return s["routes"].([]any)[0].(map[string]any)["handle"].([]any)[0].(map[string]any)
	}
	a, b := handler("a"), handler("b")
	if a["max_connections"] != float64(10) || a["client_idle_timeout"] != "1m" {
		t.Errorf("a did not get the defaults: %v", a)
	}
	if _, ok := b["max_connections"]; ok || b["client_idle_timeout"] != "5s" {
		t.Errorf("b's own keys must win: %v", b)
	}
}

// TestErrors checks that every key Between cannot honour is an error naming it.
func TestErrors(t *testing.T) {
	const srv = "[servers.s]\nbind = \"127.0.0.1:1\"\n"
	const disc = "[servers.s.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:2\"]\n"
	for _, tc := range []struct {
		name, cfg, want string
	}{
		{"udp without a limit", srv + "protocol = \"udp\"\n" + disc, `servers.s.udp: protocol = "udp" needs at least one of udp.max_requests, udp.max_responses, client_idle_timeout, backend_idle_timeout`},
		{"udp zero limits", srv + "protocol = \"udp\"\nclient_idle_timeout = \"0\"\n" + disc + "[servers.s.udp]\nmax_requests = 0\n", "servers.s.udp: protocol = \"udp\" needs"},
		{"udp section on tcp", srv + disc + "[servers.s.udp]\nmax_requests = 1\n", `servers.s.udp: only used with protocol = "udp"`},
		{"udp unknown key", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = 1\nreplies = 2\n", "servers.s.udp.replies: not a udp key"},
		{"udp negative", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = -1\n", "servers.s.udp.max_responses: must not be negative"},
		{"udp transparent not bool", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = 1\ntransparent = \"yes\"\n", "servers.s.udp.transparent: want true or false"},
		{"udp ping", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = 1\n[servers.s.healthcheck]\nkind = \"ping\"\ninterval = \"1s\"\n", `servers.s.healthcheck.kind: "ping" checks a backend with a TCP connect`},
		{"udp backends tls", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = 1\n[servers.s.backends_tls]\nignore_verify = true\n", `servers.s.backends_tls: not used with protocol = "udp"`},
		{"udp proxy protocol", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = 1\n[servers.s.proxy_protocol]\nversion = \"1\"\n", `servers.s.proxy_protocol: not used with protocol = "udp"`},
		{"udp sni", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = 1\n[servers.s.sni]\nread_timeout = \"1s\"\n", `servers.s.sni: not used with protocol = "udp"`},
		{"udp tls", srv + "protocol = \"udp\"\n" + disc + "[servers.s.udp]\nmax_responses = 1\n[servers.s.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n", `servers.s.tls: only used with protocol = "tls"`},
		{"unknown top section", "[nope]\nx = 1\n", "nope: not a gobetween section"},
		{"unknown server key", srv + "bogus = 1\n" + disc, "servers.s.bogus: not a server key"},
		{"unknown discovery key", srv + disc[:len(disc)-1] + "\nsrv_lookup_server = \"x:53\"\n", `servers.s.discovery.srv_lookup_server: not a key of discovery kind "static"`},
		{"bad discovery kind", srv + "[servers.s.discovery]\nkind = \"zk\"\n", `servers.s.discovery.kind: "zk" is not a discovery kind`},
		{"missing discovery", srv, "servers.s.discovery: required"},
		{"missing bind", "[servers.s]\n" + disc, "servers.s.bind: required"},
		{"bad balance", srv + "balance = \"random\"\n" + disc, `servers.s.balance: "random" is not one of`},
		{"sticky balance", srv + disc + "[servers.s.balance]\nkind = \"weight\"\niphash2SessionSize = 5\n", "servers.s.balance.iphash2SessionSize: not supported"},
		{"bad duration", srv + "client_idle_timeout = \"soon\"\n" + disc, `servers.s.client_idle_timeout: "soon" is not a duration`},
		{"api basic auth", "[api]\nenabled = true\nbind = \":8888\"\n[api.basic_auth]\nlogin = \"a\"\npassword = \"b\"\n", "api.basic_auth: Caddy's admin endpoint"},
		{"api tls", "[api]\nenabled = true\n[api.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n", "api.tls: Caddy's admin endpoint cannot serve HTTPS"},
		{"api cors", "[api]\nenabled = true\ncors = true\n", "api.cors:"},
		{"bad log level", "[logging]\nlevel = \"trace\"\n", `logging.level: "trace"`},
		{"tls without section", srv + "protocol = \"tls\"\n" + disc, "servers.s.tls: required"},
		{"tls on tcp", srv + disc + "[servers.s.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n", "servers.s.tls: only used with protocol"},
		{"acme hosts without acme", srv + "protocol = \"tls\"\n" + disc + "[servers.s.tls]\nacme_hosts = [\"x.org\"]\n", "servers.s.tls.acme_hosts: needs an [acme] section"},
		{"ssl3", srv + "protocol = \"tls\"\n" + disc + "[servers.s.tls]\ncert_path = \"c\"\nkey_path = \"k\"\nmin_version = \"ssl3\"\n", "servers.s.tls.min_version:"},
		{"bad healthcheck kind", srv + disc + "[servers.s.healthcheck]\nkind = \"icmp\"\n", `servers.s.healthcheck.kind: "icmp" is not a health check kind`},
		{"healthcheck foreign key", srv + disc + "[servers.s.healthcheck]\nkind = \"ping\"\nprobe_send = \"x\"\n", `servers.s.healthcheck.probe_send: not a key of health check kind "ping"`},
		{"backends tls tickets", srv + disc + "[servers.s.backends_tls]\nsession_tickets = true\n", "servers.s.backends_tls.session_tickets:"},
		{"defaults unknown", "[defaults]\nretries = 3\n", "defaults.retries: not a [defaults] key"},
		{"bad toml", "[servers\n", "reading TOML"},
		{"json unknown", `{"servers":{"s":{"bind":"127.0.0.1:1","weird":true,"discovery":{"kind":"static"}}}}`, "servers.s.weird: not a server key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Adapter{}.Adapt([]byte(tc.cfg), map[string]any{"filename": "x.toml"})
			if err == nil {
				t.Fatalf("no error; want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// TestWarnings checks that keys with no effect in Caddy are reported, not dropped.
func TestWarnings(t *testing.T) {
	cfg := "[metrics]\nenabled = true\nbind = \":9284\"\n[profiler]\nenabled = true\nbind = \":6060\"\n"
	_, warns, err := Adapter{}.Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 2 || !strings.Contains(warns[0].Message, "/metrics") || !strings.Contains(warns[1].Message, "/debug/pprof/") {
		t.Fatalf("warnings = %v", warns)
	}
}

// FuzzAdapt checks that no input makes the adapter panic.
func FuzzAdapt(f *testing.F) {
	for _, p := range []string{"testdata/sample.toml", "testdata/full.toml", "testdata/static.json", "testdata/udp.toml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		Adapter{}.Adapt(body, nil)
	})
}
