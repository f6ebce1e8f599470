package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidateRejectsBadInput runs `caddy validate` on broken configs: each
// must fail with a message naming the server and the field, and never panic.
func TestValidateRejectsBadInput(t *testing.T) {
	const good = `"listen":["127.0.0.1:9"],"discovery":{"kind":"static","static_list":["127.0.0.1:10"]}`
	for _, tc := range []struct {
		name   string
		server string
		want   []string
	}{
		{"unknown field", `{` + good + `,"colour":"blue"}`, []string{`"s1"`, "colour"}},
		{"bad address", `{"listen":["127.0.0.1:http-x"],"discovery":{"kind":"static","static_list":["127.0.0.1:10"]}}`, []string{`"s1"`, "listen[0]"}},
		{"no port", `{"listen":["127.0.0.1"],"discovery":{"kind":"static","static_list":["127.0.0.1:10"]}}`, []string{`"s1"`, "listen[0]", "port"}},
		{"udp network on tcp server", `{"listen":["udp/127.0.0.1:9"],"discovery":{"kind":"static","static_list":["127.0.0.1:10"]}}`, []string{`"s1"`, "listen[0]", "network"}},
		{"bad duration", `{` + good + `,"client_idle_timeout":"1 parsec"}`, []string{`"s1"`, "client_idle_timeout"}},
		{"negative duration", `{` + good + `,"drain_timeout":"-1s"}`, []string{`"s1"`, "drain_timeout"}},
		{"wrong type", `{` + good + `,"retries":"two"}`, []string{`"s1"`, "retries"}},
		{"bad access rule", `{` + good + `,"access":{"rules":["permit 10.0.0.0/8"]}}`, []string{`"s1"`, "access.rules[0]", "permit"}},
		{"bad access network", `{` + good + `,"access":{"rules":["deny 10.0.0.0/33"]}}`, []string{`"s1"`, "access.rules[0]"}},
		{"bad access default", `{` + good + `,"access":{"default":"maybe"}}`, []string{`"s1"`, "access.default"}},
		{"bad backend line", `{"listen":["127.0.0.1:9"],"discovery":{"kind":"static","static_list":["127.0.0.1:10 weight=heavy"]}}`, []string{`"s1"`, "static_list[0]", "weight"}},
		{"backend without port", `{"listen":["127.0.0.1:9"],"discovery":{"kind":"static","static_list":["127.0.0.1"]}}`, []string{`"s1"`, "static_list[0]"}},
		{"unknown policy", `{` + good + `,"balance":{"policy":"fastest"}}`, []string{`"s1"`, "balance", "fastest"}},
		{"unknown discovery kind", `{"listen":["127.0.0.1:9"],"discovery":{"kind":"crystalball"}}`, []string{`"s1"`, "discovery", "crystalball"}},
		{"missing discovery", `{"listen":["127.0.0.1:9"]}`, []string{`"s1"`, "discovery"}},
		{"bad failpolicy", `{"listen":["127.0.0.1:9"],"discovery":{"kind":"static","static_list":["127.0.0.1:10"],"failpolicy":"explode"}}`, []string{`"s1"`, "failpolicy"}},
		{"unknown protocol", `{` + good + `,"protocol":"sctp"}`, []string{`"s1"`, "protocol"}},
		{"negative max_connections", `{` + good + `,"max_connections":-1}`, []string{`"s1"`, "max_connections"}},
		{"no listen", `{"discovery":{"kind":"static","static_list":["127.0.0.1:10"]}}`, []string{`"s1"`, "listen"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := `{"apps":{"between":{"servers":{"s1":` + tc.server + `}}}}`
			path := filepath.Join(t.TempDir(), "caddy.json")
			os.WriteFile(path, []byte(cfg), 0o600)
			out, err := exec.Command(caddyBin, "validate", "--config", path).CombinedOutput()
			if err == nil {
				t.Fatalf("caddy validate accepted %s", cfg)
			}
			msg := strings.ReplaceAll(string(out), `\"`, `"`)
			if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine ") {
				t.Fatalf("caddy panicked:\n%s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not mention %q:\n%s", w, tail(msg, 5))
				}
			}
		})
	}
}

// TestCaddyfileRejectsBadInput: `caddy adapt` fails on a broken Caddyfile with
// a message naming the problem.
func TestCaddyfileRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown subdirective", "server s1 {\n listen 127.0.0.1:9\n colour blue\n}", []string{"colour"}},
		{"bad duration", "server s1 {\n listen 127.0.0.1:9\n client_idle_timeout soon\n}", []string{"client_idle_timeout", "soon"}},
		{"unknown policy", "server s1 {\n listen 127.0.0.1:9\n balance fastest\n}", []string{"fastest"}},
		{"unknown discovery", "server s1 {\n listen 127.0.0.1:9\n discovery crystalball\n}", []string{"crystalball"}},
		{"max_connections not a number", "server s1 {\n listen 127.0.0.1:9\n max_connections many\n}", []string{"max_connections", "many"}},
		{"server without name", "server {\n listen 127.0.0.1:9\n}", []string{"name"}},
		{"bad backend line", "server s1 {\n listen 127.0.0.1:9\n discovery static \"127.0.0.1:10 weight=heavy\"\n}", []string{"weight"}},
		{"bad access rule", "server s1 {\n listen 127.0.0.1:9\n access {\n permit 10.0.0.0/8\n }\n}", []string{"permit"}},
		{"bad access network", "server s1 {\n listen 127.0.0.1:9\n access {\n deny 10.0.0.0/33\n }\n}", []string{"10.0.0.0/33"}},
		{"bad listen address", "server s1 {\n listen 127.0.0.1:http-x\n}", []string{"listen", "http-x"}},
		{"unknown protocol", "server s1 {\n listen 127.0.0.1:9\n protocol sctp\n}", []string{"protocol", "sctp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "Caddyfile")
			os.WriteFile(path, []byte("{\n between {\n"+tc.body+"\n }\n}\n"), 0o600)
			out, err := exec.Command(caddyBin, "adapt", "--config", path).CombinedOutput()
			if err == nil {
				t.Fatalf("caddy adapt accepted it:\n%s", out)
			}
			want := tc.want
			if strings.Contains(tc.body, "server s1") {
				want = append(want, `server "s1"`) // the error names the server
			}
			msg := strings.ReplaceAll(string(out), `\"`, `"`)
			for _, w := range want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not mention %q:\n%s", w, tail(string(out), 5))
				}
			}
		})
	}
}
