package l4handler

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

var (
	baseCtxOnce sync.Once
	baseCtx     caddy.Context
	baseCtxErr  error
)

// newTestContext returns a caddy.Context of an empty config, as `caddy
// validate` provisions with; the app finds Caddy's other apps (events)
// through it. Modules loaded through it are cleaned up with the test.
func newTestContext(t *testing.T) caddy.Context {
	t.Helper()
	baseCtxOnce.Do(func() {
		baseCtx, baseCtxErr = caddy.ProvisionContext(&caddy.Config{Admin: &caddy.AdminConfig{Disabled: true}})
	})
	if baseCtxErr != nil {
		t.Fatalf("caddy context: %v", baseCtxErr)
	}
	ctx, cancel := caddy.NewContext(baseCtx)
	t.Cleanup(cancel)
	return ctx
}

// provisionApp decodes js into an App and provisions it; the app is cleaned
// up at the end of the test whatever the outcome (Caddy cleans up a module
// whose Provision failed, too).
func provisionApp(t *testing.T, js string) error {
	t.Helper()
	var a App
	if err := json.Unmarshal([]byte(js), &a); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	err := a.Provision(newTestContext(t))
	t.Cleanup(func() {
		if cerr := a.Cleanup(); cerr != nil {
			t.Errorf("cleanup: %v", cerr)
		}
	})
	return err
}

// server builds the JSON of an app with one server "x" that has a valid
// listen and discovery, with the given fields added or replaced.
func server(fields string) string {
	base := map[string]json.RawMessage{
		"listen":    json.RawMessage(`["127.0.0.1:40001"]`),
		"discovery": json.RawMessage(`{"kind":"static","static_list":["127.0.0.1:40002"]}`),
	}
	if fields != "" {
		var extra map[string]json.RawMessage
		if err := json.Unmarshal([]byte("{"+fields+"}"), &extra); err != nil {
			panic(err)
		}
		for k, v := range extra {
			if string(v) == "null" {
				delete(base, k)
				continue
			}
			base[k] = v
		}
	}
	s, _ := json.Marshal(base)
	return `{"servers":{"x":` + string(s) + `}}`
}

func TestProvisionValid(t *testing.T) {
	for _, tc := range []struct{ name, json string }{
		{"minimal", server("")},
		{"every implemented field", server(`
			"listen": ["127.0.0.1:40010", "[::1]:40011", "127.0.0.1:40020-40025", "tcp4/127.0.0.2:40030"],
			"protocol": "tcp",
			"balance": {"policy": "roundrobin"},
			"max_connections": 10,
			"client_idle_timeout": "1m", "backend_idle_timeout": "2m", "backend_connection_timeout": "1s",
			"retries": 0,
			"drain_timeout": "5s",
			"access": {"default": "deny", "rules": ["allow 127.0.0.1", "allow ::1/128"]},
			"passive_health": {"max_fails": 2, "fail_duration": "10s"},
			"sni": {"read_timeout": "1s", "hostname_matching_strategy": "regexp", "unexpected_hostname_strategy": "reject"},
			"tls": {}, "udp": null, "listener_wrappers": []`)},
		{"two servers", `{"servers":{
			"a": {"listen":["127.0.0.1:40040"],"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}},
			"b": {"listen":["127.0.0.1:40041"],"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}}}`},
		{"no servers", `{}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := provisionApp(t, tc.json); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestProvisionErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want []string // besides `server "x"`
	}{
		{"bad listen address", server(`"listen":["127.0.0.1:notaport"]`), []string{"listen[0]", "notaport"}},
		{"bad listen address second", server(`"listen":["127.0.0.1:40001","127.0.0.1:2-1"]`), []string{"listen[1]"}},
		{"listen without port", server(`"listen":["127.0.0.1"]`), []string{"listen[0]", "port"}},
		{"listen missing", server(`"listen":null`), []string{"listen"}},
		{"listen network disagrees with protocol", server(`"listen":["udp/127.0.0.1:40001"]`), []string{"listen[0]", "udp"}},
		{"protocol udp", server(`"protocol":"udp"`), []string{"protocol", "udp"}},
		{"protocol tls", server(`"protocol":"tls"`), []string{"protocol", "tls"}},
		{"protocol unknown", server(`"protocol":"sctp"`), []string{"protocol", "sctp"}},
		{"unknown policy", server(`"balance":{"policy":"nosuch"}`), []string{"balance", "nosuch"}},
		{"missing discovery", server(`"discovery":null`), []string{"discovery"}},
		{"unknown discovery kind", server(`"discovery":{"kind":"nosuchkind"}`), []string{"discovery", "nosuchkind"}},
		{"empty static list", server(`"discovery":{"kind":"static"}`), []string{"discovery", "static_list"}},
		{"bad static line", server(`"discovery":{"kind":"static","static_list":["127.0.0.1:1","nope"]}`), []string{"discovery", "static_list[1]"}},
		{"bad failpolicy", server(`"discovery":{"kind":"static","static_list":["127.0.0.1:1"],"failpolicy":"panic"}`), []string{"discovery", "failpolicy"}},
		{"negative max_connections", server(`"max_connections":-1`), []string{"max_connections"}},
		{"negative retries", server(`"retries":-1`), []string{"retries"}},
		{"negative client_idle_timeout", server(`"client_idle_timeout":-1`), []string{"client_idle_timeout"}},
		{"negative drain_timeout", server(`"drain_timeout":"-5s"`), []string{"drain_timeout"}},
		{"bad access rule", server(`"access":{"rules":["allow 1.2.3.4","deny nothing"]}`), []string{"access.rules[1]"}},
		{"bad access default", server(`"access":{"default":"maybe"}`), []string{"access.default"}},
		{"negative passive max_fails", server(`"passive_health":{"max_fails":-1}`), []string{"passive_health.max_fails"}},
		{"reserved tls", server(`"tls":{"cert_path":"/x"}`), []string{"tls"}},
		{"reserved udp", server(`"udp":{"max_requests":1}`), []string{"udp"}},
		{"reserved proxy_protocol", server(`"proxy_protocol":{"version":"1"}`), []string{"proxy_protocol"}},
		{"reserved backends_tls", server(`"backends_tls":{"ignore_verify":true}`), []string{"backends_tls"}},
		{"reserved listener_wrappers", server(`"listener_wrappers":[{"wrapper":"proxy_protocol"}]`), []string{"listener_wrappers"}},
		{"bad sni matching strategy", server(`"sni":{"hostname_matching_strategy":"fuzzy"}`), []string{"sni", "fuzzy"}},
		{"bad sni unexpected strategy", server(`"sni":{"unexpected_hostname_strategy":"shrug"}`), []string{"sni", "shrug"}},
		{"negative sni read_timeout", server(`"sni":{"read_timeout":"-1s"}`), []string{"sni.read_timeout"}},
		{
			"listen address used by two servers",
			`{"servers":{
				"w": {"listen":["127.0.0.1:40050"],"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}},
				"x": {"listen":["127.0.0.1:40049-40051"],"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}}}`,
			[]string{"listen", "127.0.0.1:40050", `server "w"`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := provisionApp(t, tc.json)
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			for _, w := range append([]string{`server "x"`}, tc.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestProvisionSharesState checks that two loads of an unchanged server share
// one state (what lets a reload keep stats and connections), and that a
// changed server gets a new one.
func TestProvisionSharesState(t *testing.T) {
	load := func(js string) *App {
		t.Helper()
		var a App
		if err := json.Unmarshal([]byte(js), &a); err != nil {
			t.Fatal(err)
		}
		if err := a.Provision(newTestContext(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Cleanup() })
		return &a
	}
	old := load(server(""))
	same := load(server(""))
	changed := load(server(`"retries":5`))
	if old.Servers["x"].state != same.Servers["x"].state {
		t.Error("an unchanged server got a new state")
	}
	if old.Servers["x"].state == changed.Servers["x"].state {
		t.Error("a changed server kept the old state")
	}
}

// TestLoadThroughCaddy loads the app the way Caddy does (caddy validate,
// caddy run): the error names the server and the field.
func TestLoadThroughCaddy(t *testing.T) {
	cfg := &caddy.Config{
		Admin:   &caddy.AdminConfig{Disabled: true},
		AppsRaw: caddy.ModuleMap{"between": json.RawMessage(server(`"max_connections":-3`))},
	}
	_, err := caddy.ProvisionContext(cfg)
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"between", `server "x"`, "max_connections"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}

	cfg = &caddy.Config{
		Admin:   &caddy.AdminConfig{Disabled: true},
		AppsRaw: caddy.ModuleMap{"between": json.RawMessage(server(""))},
	}
	ctx, err := caddy.ProvisionContext(cfg)
	if err != nil {
		t.Fatal(err)
	}
	app, err := ctx.App("between")
	if err != nil {
		t.Fatal(err)
	}
	if err := app.(*App).Cleanup(); err != nil {
		t.Error(err)
	}
}
