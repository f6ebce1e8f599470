package l4handler

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-l4"

	_ "github.com/caddy-between/between/balancers"
	_ "github.com/caddy-between/between/discovery"
	_ "github.com/caddy-between/between/healthchecks"
	_ "github.com/caddy-between/between/listeners"
)

// handlerJSON is a valid between handler named name with the given fields
// added or replaced ("null" removes one).
func handlerJSON(name, fields string) string {
	base := map[string]json.RawMessage{
		"handler":   json.RawMessage(`"between"`),
		"discovery": json.RawMessage(`{"kind":"static","static_list":["127.0.0.1:40002"]}`),
	}
	if name != "" {
		base["name"], _ = json.Marshal(name)
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
	return string(s)
}

// server is a layer4 server listening on listen with one route per handler list.
func server(listen string, routes ...string) string {
	rs := make([]string, len(routes))
	for i, r := range routes {
		rs[i] = `{"handle":[` + r + `]}`
	}
	return fmt.Sprintf(`{"listen":[%q],"routes":[%s]}`, listen, strings.Join(rs, ","))
}

// config is a whole Caddy config with the given layer4 servers (name -> JSON).
func config(servers map[string]string) []byte {
	parts := make([]string, 0, len(servers))
	for n, s := range servers {
		parts = append(parts, fmt.Sprintf("%q:%s", n, s))
	}
	return []byte(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"ERROR"}}},` +
		`"apps":{"layer4":{"servers":{` + strings.Join(parts, ",") + `}}}}`)
}

// validate runs caddy validate's path (provision everything, clean up).
func validate(t *testing.T, cfgJSON []byte) error {
	t.Helper()
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	return caddy.Validate(&cfg)
}

// freeAddr is a loopback TCP address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// run loads cfgJSON into the in-process Caddy (a reload when one runs);
// Caddy stops at the end of the test.
func run(t *testing.T, cfgJSON []byte) {
	t.Helper()
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() { caddy.Stop() })
}

// runningHandler is the started handler of that name.
func runningHandler(t *testing.T, name string) *Handler {
	t.Helper()
	h, ok := running.get(name)
	if !ok {
		t.Fatalf("no running handler %q", name)
	}
	return h
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestValidateValid(t *testing.T) {
	full := handlerJSON("x", `
		"balance": {"policy": "roundrobin"},
		"max_connections": 10,
		"client_idle_timeout": "1m", "backend_idle_timeout": "2m", "backend_connection_timeout": "1s",
		"retries": 0,
		"drain_timeout": "5s",
		"access": {"default": "deny", "rules": ["allow 127.0.0.1", "allow ::1/128"]},
		"passive_health": {"max_fails": 2, "fail_duration": "10s"},
		"healthcheck": {"kind": "ping", "interval": "1s", "timeout": "500ms"},
		"sni": {"read_timeout": "1s", "hostname_matching_strategy": "regexp", "unexpected_hostname_strategy": "reject"}`)
	for _, tc := range []struct {
		name    string
		servers map[string]string
	}{
		{"minimal", map[string]string{"a": server("127.0.0.1:40001", handlerJSON("x", ""))}},
		{"every field", map[string]string{"a": server("between+tcp/127.0.0.1:40001", full)}},
		{"unnamed", map[string]string{"a": server("127.0.0.1:40001", handlerJSON("", ""))}},
		{"same name, same config, two routes", map[string]string{
			"a": server("127.0.0.1:40001", handlerJSON("x", "")),
			"b": server("127.0.0.1:40003", handlerJSON("x", "")),
		}},
		{"two handlers", map[string]string{
			"a": server("127.0.0.1:40001", handlerJSON("x", ""), handlerJSON("y", `"retries":1`)),
		}},
		{"after caddy-l4 handlers", map[string]string{
			"a": server("127.0.0.1:40001", `{"handler":"proxy_protocol"},`+handlerJSON("x", "")),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := validate(t, config(tc.servers)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestValidateErrors: every bad input fails caddy validate with an error that
// names the layer4 server, the route and the field.
func TestValidateErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields string
		want   []string
	}{
		{"unknown policy", `"balance":{"policy":"nosuch"}`, []string{"balance", "nosuch"}},
		{"missing discovery", `"discovery":null`, []string{"discovery"}},
		{"unknown discovery kind", `"discovery":{"kind":"nosuchkind"}`, []string{"discovery", "nosuchkind"}},
		{"empty static list", `"discovery":{"kind":"static"}`, []string{"discovery", "static_list"}},
		{"bad static line", `"discovery":{"kind":"static","static_list":["127.0.0.1:1","nope"]}`, []string{"discovery", "static_list[1]"}},
		{"bad failpolicy", `"discovery":{"kind":"static","static_list":["127.0.0.1:1"],"failpolicy":"panic"}`, []string{"discovery", "failpolicy"}},
		{"negative max_connections", `"max_connections":-1`, []string{"max_connections"}},
		{"negative retries", `"retries":-1`, []string{"retries"}},
		{"negative client_idle_timeout", `"client_idle_timeout":-1`, []string{"client_idle_timeout"}},
		{"bad duration", `"backend_idle_timeout":"later"`, []string{"backend_idle_timeout"}},
		{"negative drain_timeout", `"drain_timeout":"-5s"`, []string{"drain_timeout"}},
		{"bad access rule", `"access":{"rules":["allow 1.2.3.4","deny nothing"]}`, []string{"access.rules[1]"}},
		{"bad access default", `"access":{"default":"maybe"}`, []string{"access.default"}},
		{"negative passive max_fails", `"passive_health":{"max_fails":-1}`, []string{"passive_health.max_fails"}},
		{"bad sni matching strategy", `"sni":{"hostname_matching_strategy":"fuzzy"}`, []string{"sni", "fuzzy"}},
		{"bad sni unexpected strategy", `"sni":{"unexpected_hostname_strategy":"shrug"}`, []string{"sni", "shrug"}},
		{"negative sni read_timeout", `"sni":{"read_timeout":"-1s"}`, []string{"sni.read_timeout"}},
		{"unknown field", `"retires":3`, []string{"retires"}},
		{"udp block", `"udp":{"max_responses":1}`, []string{"udp"}},
		{"listen is the server's", `"listen":["127.0.0.1:1"]`, []string{"listen"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(map[string]string{
				"edge": server("127.0.0.1:40001", `{"handler":"echo"}`, handlerJSON("x", tc.fields)),
			})
			err := validate(t, cfg)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range append([]string{"server 'edge'", "route 1"}, tc.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestNameConflict: one name with two different configs is an error naming
// both places, wherever they are (other server, nested subroute).
func TestNameConflict(t *testing.T) {
	sub := `{"handler":"subroute","routes":[{"handle":[` + handlerJSON("db", `"retries":5`) + `]}]}`
	for _, tc := range []struct {
		name    string
		servers map[string]string
		want    []string
	}{
		{"two servers", map[string]string{
			"a": server("127.0.0.1:40001", handlerJSON("db", "")),
			"b": server("127.0.0.1:40003", handlerJSON("db", `"retries":5`)),
		}, []string{`"db"`, `layer4 server "a" route 0`, `layer4 server "b" route 0`}},
		{"subroute", map[string]string{
			"a": server("127.0.0.1:40001", handlerJSON("db", ""), sub),
		}, []string{`"db"`, `layer4 server "a" route 0`, `layer4 server "a" route 1 subroute route 0`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, config(tc.servers))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestReloadKeepsState runs Caddy in process: an unchanged handler keeps its
// state across a reload, a changed one gets a new state that inherits the
// totals, and the handler knows where it is configured.
func TestReloadKeepsState(t *testing.T) {
	listen := "between+tcp/" + freeAddr(t)
	sub := `{"handler":"subroute","routes":[{"handle":[` + handlerJSON("inner", "") + `]}]}`
	first := config(map[string]string{"a": server(listen, handlerJSON("x", ""), sub)})
	run(t, first)
	h1 := runningHandler(t, "x")
	if got := h1.app.locations("x"); len(got) != 1 || got[0].Server != "a" || got[0].Route != 0 || got[0].Listen[0] != listen {
		t.Errorf("locations of x = %+v", got)
	}
	if got := runningHandler(t, "inner").app.locations("inner"); len(got) != 1 || got[0].Route != 1 || len(got[0].Nested) != 1 || got[0].Nested[0] != 0 {
		t.Errorf("locations of inner = %+v", got)
	}
	h1.state.stats.AddTotal()

	run(t, first)
	h2 := runningHandler(t, "x")
	if h2 == h1 {
		t.Fatal("the reload did not replace the handler")
	}
	if h2.state != h1.state {
		t.Error("an unchanged handler got a new state")
	}

	run(t, config(map[string]string{"a": server(listen, handlerJSON("x", `"retries":4`))}))
	h3 := runningHandler(t, "x")
	if h3.state == h1.state {
		t.Error("a changed handler kept the old state")
	}
	if h3.state.stats != h1.state.stats || h3.state.stats.Snapshot().Total != 1 {
		t.Error("a changed handler did not inherit the totals")
	}
	if _, ok := running.get("inner"); ok {
		t.Error("a removed handler is still listed as running")
	}
	waitFor(t, 2*time.Second, "the old states to be released", func() bool {
		refs, ok := states.References(h1.key)
		return !ok || refs == 0
	})
}

// TestProxyThroughCaddy serves real connections through the in-process
// layer4 app: bytes a matcher read are replayed to the backend.
func TestProxyThroughCaddy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				c.Write(append([]byte("got "), buf[:n]...))
			}()
		}
	}()
	listen := freeAddr(t)
	h := handlerJSON("m", fmt.Sprintf(`"discovery":{"kind":"static","static_list":[%q]}`, ln.Addr().String()))
	srv := fmt.Sprintf(`{"listen":[%q],"routes":[{"match":[{"http":[]}],"handle":[%s]}]}`, "between+tcp/"+listen, h)
	run(t, config(map[string]string{"a": srv}))
	c, err := net.DialTimeout("tcp", listen, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "got "+req {
		t.Errorf("backend saw %q, want the whole request the http matcher read", got)
	}
}
