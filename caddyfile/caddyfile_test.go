package caddyfile_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	cf "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	_ "github.com/caddy-between/between/balancers"
	_ "github.com/caddy-between/between/caddyfile"
	_ "github.com/caddy-between/between/discovery"
	"github.com/caddy-between/between/modules"
)

var update = flag.Bool("update", false, "rewrite the golden JSON files in testdata/")

// adapt runs the Caddyfile adapter in process, as `caddy adapt` does.
func adapt(t testing.TB, body []byte) ([]byte, []caddyconfig.Warning, error) {
	t.Helper()
	a := caddyconfig.GetAdapter("caddyfile")
	if a == nil {
		t.Fatal("caddyfile adapter not registered")
	}
	return a.Adapt(body, nil)
}

// pretty indents JSON with tabs, like `caddy adapt --pretty`.
func pretty(t testing.TB, compact []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Indent(&buf, compact, "", "\t"); err != nil {
		t.Fatalf("indenting adapted JSON: %v", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*.caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) == 0 {
		t.Fatal("no testdata/*.caddyfile")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".caddyfile")
		t.Run(name, func(t *testing.T) {
			body, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}

			// caddy fmt leaves every example unchanged
			if formatted := cf.Format(body); !bytes.Equal(bytes.TrimSpace(formatted), bytes.TrimSpace(body)) {
				t.Errorf("caddy fmt changes %s:\n%s", in, formatted)
			}

			out, warnings, err := adapt(t, body)
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s", w.String())
			}
			got := pretty(t, out)

			golden := strings.TrimSuffix(in, ".caddyfile") + ".json"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("adapted JSON differs from %s (run with -update to accept):\n--- got\n%s\n--- want\n%s", golden, got, want)
			}

			// the adapted app loads into the between app strictly
			var cfg struct {
				Apps map[string]json.RawMessage `json:"apps"`
			}
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			raw, ok := cfg.Apps["between"]
			if !ok {
				t.Fatalf("no apps.between in %s", out)
			}
			var app modules.App
			if err := json.Unmarshal(raw, &app); err != nil {
				t.Fatalf("apps.between does not load into modules.App: %v", err)
			}
			if len(app.Servers) == 0 {
				t.Error("apps.between has no servers")
			}

			// and provisions as `caddy validate` would (no socket is bound)
			ctx, err := caddy.ProvisionContext(&caddy.Config{
				Admin:   &caddy.AdminConfig{Disabled: true},
				AppsRaw: caddy.ModuleMap{"between": raw},
			})
			if err != nil {
				t.Fatalf("provisioning apps.between: %v", err)
			}
			if mod, err := ctx.App("between"); err == nil {
				mod.(caddy.CleanerUpper).Cleanup()
			}
		})
	}
}

// TestAdaptDetails checks a few values of the golden configs directly, so a
// wrong golden accepted with -update does not go unnoticed.
func TestAdaptDetails(t *testing.T) {
	servers := func(t *testing.T, file string) map[string]map[string]any {
		t.Helper()
		body, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := adapt(t, body)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Apps struct {
				Between struct {
					Servers map[string]map[string]any `json:"servers"`
				} `json:"between"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg.Apps.Between.Servers
	}

	t.Run("retries 0 is kept", func(t *testing.T) {
		s := servers(t, "two_servers.caddyfile")
		if r, ok := s["db"]["retries"]; !ok || r != float64(0) {
			t.Errorf("db retries = %v (present %v), want 0", r, ok)
		}
		if _, ok := s["cache"]["retries"]; ok {
			t.Errorf("cache: retries present without being set")
		}
	})
	t.Run("merge", func(t *testing.T) {
		s := servers(t, "merged.caddyfile")
		if len(s) != 2 || s["first"] == nil || s["second"] == nil {
			t.Errorf("servers = %v, want first and second", s)
		}
	})
	t.Run("full", func(t *testing.T) {
		s := servers(t, "full.caddyfile")["full"]
		listen, _ := s["listen"].([]any)
		if len(listen) != 4 {
			t.Errorf("listen = %v, want 4 addresses", listen)
		}
		access, _ := s["access"].(map[string]any)
		rules, _ := access["rules"].([]any)
		want := []any{"allow 10.0.0.0/8", "deny 10.1.2.3", "allow 127.0.0.1", "allow ::1", "deny 192.168.0.0/16"}
		if len(rules) != len(want) {
			t.Fatalf("access.rules = %v, want %v", rules, want)
		}
		for i := range want {
			if rules[i] != want[i] {
				t.Errorf("access.rules[%d] = %v, want %v", i, rules[i], want[i])
			}
		}
		disc, _ := s["discovery"].(map[string]any)
		list, _ := disc["static_list"].([]any)
		if disc["kind"] != "static" || len(list) != 3 || list[0] != "127.0.0.1:1 weight=2 priority=2" ||
			disc["interval"] != float64(10e9) || disc["timeout"] != float64(2e9) || disc["failpolicy"] != "setempty" {
			t.Errorf("discovery = %v, want kind static, 3 backends, interval 10s, timeout 2s, failpolicy setempty", disc)
		}
	})
}

func TestAdaptErrors(t *testing.T) {
	wrap := func(server string) string {
		return "{\n\tbetween {\n" + server + "\n\t}\n}\n"
	}
	for _, tc := range []struct {
		name, body string
		want       []string // every one must occur in the error
	}{
		{
			name: "unknown server subdirective",
			body: wrap("server a {\nlisten 127.0.0.1:1\nbogusdirective 1\n}"),
			want: []string{"bogusdirective"},
		},
		{
			name: "unknown policy",
			body: wrap("server a {\nlisten 127.0.0.1:1\nbalance nosuch\n}"),
			want: []string{"nosuch"},
		},
		{
			name: "unknown discovery kind",
			body: wrap("server a {\nlisten 127.0.0.1:1\ndiscovery nosuchkind 127.0.0.1:2\n}"),
			want: []string{"between.discovery.nosuchkind"},
		},
		{
			name: "bad duration",
			body: wrap("server a {\nclient_idle_timeout 5parsecs\n}"),
			want: []string{"client_idle_timeout", "5parsecs"},
		},
		{
			name: "bad duration in discovery",
			body: wrap("server a {\ndiscovery static {\ninterval fortnight\n}\n}"),
			want: []string{"interval", "fortnight"},
		},
		{
			name: "non-integer max_connections",
			body: wrap("server a {\nmax_connections lots\n}"),
			want: []string{"max_connections", "lots"},
		},
		{
			name: "non-integer retries",
			body: wrap("server a {\nretries 1.5\n}"),
			want: []string{"retries", "1.5"},
		},
		{
			name: "server without name",
			body: wrap("server {\nlisten 127.0.0.1:1\n}"),
			want: []string{"server", "name"},
		},
		{
			name: "server with empty name",
			body: wrap("server \"\" {\nlisten 127.0.0.1:1\n}"),
			want: []string{"server", "name"},
		},
		{
			name: "unknown access subdirective",
			body: wrap("server a {\naccess {\npermit 10.0.0.1\n}\n}"),
			want: []string{"access", "permit"},
		},
		{
			name: "unknown between subdirective",
			body: wrap("listener a {\n}"),
			want: []string{"listener"},
		},
		{
			name: "server defined twice",
			body: wrap("server a {\n}\nserver a {\n}"),
			want: []string{"\"a\"", "twice"},
		},
		{
			name: "server defined twice across between options",
			body: "{\n\tbetween {\n\t\tserver a {\n\t\t}\n\t}\n\tbetween {\n\t\tserver a {\n\t\t}\n\t}\n}\n",
			want: []string{"\"a\"", "twice"},
		},
		{
			name: "unknown passive_health subdirective",
			body: wrap("server a {\npassive_health {\nmax_failures 3\n}\n}"),
			want: []string{"max_failures"},
		},
		{
			name: "unknown sni subdirective",
			body: wrap("server a {\nsni {\nstrategy any\n}\n}"),
			want: []string{"strategy"},
		},
		{
			name: "listen without address",
			body: wrap("server a {\nlisten\n}"),
			want: []string{"argument"},
		},
		{
			name: "protocol with two arguments",
			body: wrap("server a {\nprotocol tcp udp\n}"),
			want: []string{"protocol"},
		},
		{
			name: "balance with options",
			body: wrap("server a {\nbalance weight extra\n}"),
			want: []string{"extra"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := adapt(t, []byte(tc.body))
			if err == nil {
				t.Fatalf("no error; adapted to %s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// FuzzAdapt feeds arbitrary text as the body of the `between` global option:
// the adapter must return an error or a config, never panic, and whatever it
// adapts must be JSON that the between app loads.
func FuzzAdapt(f *testing.F) {
	for _, s := range []string{
		"",
		"server a {\nlisten 127.0.0.1:1\ndiscovery static 127.0.0.1:2\n}",
		"server a {\nretries 0\nbalance roundrobin\naccess {\ndefault deny\nallow ::1\n}\n}",
		"server {\n}",
		"server a {\ndiscovery static {\nlist \"127.0.0.1:1 weight=2\"\ninterval 1s\n}\n}",
		"server a {\nsni {\nread_timeout 1s\n}\npassive_health {\nmax_fails 1\n}\n}",
		"server a {\nbalance\n}",
		"server a {\naccess\n}",
		"}\n}\n{\n",
	} {
		f.Add(s)
	}
	a := caddyconfig.GetAdapter("caddyfile")
	f.Fuzz(func(t *testing.T, inner string) {
		body := []byte("{\n\tbetween {\n" + inner + "\n\t}\n}\n")
		out, _, err := a.Adapt(body, nil)
		if err != nil {
			return
		}
		var cfg struct {
			Apps map[string]json.RawMessage `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("adapter produced invalid JSON for %q: %v\n%s", inner, err, out)
		}
		// what the adapter accepts, the app must load
		if raw, ok := cfg.Apps["between"]; ok {
			var app modules.App
			if err := json.Unmarshal(raw, &app); err != nil {
				t.Fatalf("adapted %q, but apps.between does not load: %v\n%s", inner, err, raw)
			}
		}
	})
}
