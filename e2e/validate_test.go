package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// validate runs `caddy validate` on a JSON config and returns its output
// (with JSON string escapes undone) and whether it accepted the config.
func validate(t *testing.T, cfg string) (string, bool) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "caddy.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(caddyBin, "validate", "--config", path).CombinedOutput()
	msg := strings.ReplaceAll(string(out), `\"`, `"`)
	if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine ") {
		t.Fatalf("caddy panicked:\n%s", msg)
	}
	return msg, err == nil
}

// wantMentions fails the test for every want that msg does not contain.
func wantMentions(t *testing.T, msg string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not mention %s:\n%s", w, tail(msg, 5))
		}
	}
}

// TestValidateRejectsBadInput runs `caddy validate` on broken configs: each
// must fail with a message naming the layer4 server, the route and the field,
// and never panic.
func TestValidateRejectsBadInput(t *testing.T) {
	const good = `"discovery":{"kind":"static","static_list":["127.0.0.1:10"]}`
	// The broken handler is in route 1 of layer4 server "s1", after a route
	// with a good handler, so that the error must name the right route.
	config := func(fields string) string {
		return `{"apps":{"layer4":{"servers":{"s1":{"listen":["between+tcp/127.0.0.1:9"],"routes":[` +
			`{"match":[{"remote_ip":{"ranges":["10.0.0.1"]}}],"handle":[{"handler":"between","name":"ok",` + good + `}]},` +
			`{"handle":[{"handler":"between","name":"x",` + fields + `}]}]}}}}}`
	}
	for _, tc := range []struct {
		name   string
		fields string
		want   []string
	}{
		{"unknown field", good + `,"colour":"blue"`, []string{"colour"}},
		{"old server field protocol", good + `,"protocol":"sctp"`, []string{`unknown field "protocol"`}},
		{"old server field listen", good + `,"listen":["127.0.0.1:9"]`, []string{`unknown field "listen"`}},
		{"udp block on a TCP listener", good + `,"udp":{"max_responses":1}`, []string{`between handler "x"`, "udp", "only for UDP listeners"}},
		{"unknown udp field", good + `,"udp":{"max_response":1}`, []string{`unknown field "max_response"`}},
		{"bad duration", good + `,"client_idle_timeout":"1 parsec"`, []string{"client_idle_timeout"}},
		{"negative duration", good + `,"drain_timeout":"-1s"`, []string{`between handler "x"`, "drain_timeout"}},
		{"wrong type", good + `,"retries":"two"`, []string{"retries"}},
		{"negative retries", good + `,"retries":-1`, []string{`between handler "x"`, "retries"}},
		{"bad access rule", good + `,"access":{"rules":["permit 10.0.0.0/8"]}`, []string{"access.rules[0]", "permit"}},
		{"bad access network", good + `,"access":{"rules":["deny 10.0.0.0/33"]}`, []string{"access.rules[0]"}},
		{"bad access default", good + `,"access":{"default":"maybe"}`, []string{"access.default"}},
		{"bad backend line", `"discovery":{"kind":"static","static_list":["127.0.0.1:10 weight=heavy"]}`, []string{`between handler "x"`, "static_list[0]", "weight"}},
		{"backend without port", `"discovery":{"kind":"static","static_list":["127.0.0.1"]}`, []string{"static_list[0]"}},
		{"unknown policy", good + `,"balance":{"policy":"fastest"}`, []string{"balance", "fastest"}},
		{"unknown discovery kind", `"discovery":{"kind":"crystalball"}`, []string{"discovery", "crystalball"}},
		{"missing discovery", `"max_connections":5`, []string{`between handler "x"`, "discovery", "required"}},
		{"bad failpolicy", `"discovery":{"kind":"static","static_list":["127.0.0.1:10"],"failpolicy":"explode"}`, []string{"failpolicy"}},
		{"negative max_connections", good + `,"max_connections":-1`, []string{`between handler "x"`, "max_connections -1", "must not be negative"}},
		{"bad sni strategy", good + `,"sni":{"unexpected_hostname_strategy":"maybe"}`, []string{"sni", "unexpected_hostname_strategy"}},
		{"unknown healthcheck kind", good + `,"healthcheck":{"kind":"telepathy"}`, []string{"healthcheck", "telepathy"}},
		{"bad passive health", good + `,"passive_health":{"max_fails":-1}`, []string{"passive_health.max_fails"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(tc.fields)
			msg, ok := validate(t, cfg)
			if ok {
				t.Fatalf("caddy validate accepted %s", cfg)
			}
			wantMentions(t, msg, append([]string{"server 's1'", "route 1"}, tc.want...)...)
		})
	}

	route := func(h string) string { return `{"handle":[` + h + `]}` }
	x := func(backend string) string {
		return `{"handler":"between","name":"x","discovery":{"kind":"static","static_list":["` + backend + `"]}}`
	}
	server := func(listen string, routes ...string) string {
		return fmt.Sprintf(`{"listen":[%q],"routes":[%s]}`, listen, strings.Join(routes, ","))
	}
	apps := func(servers string) string { return `{"apps":{"layer4":{"servers":{` + servers + `}}}}` }
	for _, tc := range []struct {
		name string
		cfg  string
		want []string
	}{
		{"bad listen address", apps(`"s1":` + server("between+tcp/127.0.0.1:http-x", route(x("127.0.0.1:10")))),
			[]string{"server 's1'", "between+tcp/127.0.0.1:http-x", "position 0"}},
		{"one name, two configs in two servers", apps(`"a":` + server("between+tcp/127.0.0.1:9", route(x("127.0.0.1:10"))) +
			`,"b":` + server("between+tcp/127.0.0.1:19", route(x("127.0.0.1:11")))),
			[]string{`between handler "x"`, `layer4 server "a" route 0 and in layer4 server "b" route 0`}},
		{"one name, two configs in one server", apps(`"s1":` + server("between+tcp/127.0.0.1:9",
			`{"match":[{"remote_ip":{"ranges":["10.0.0.1"]}}],"handle":[`+x("127.0.0.1:10")+`]}`, route(x("127.0.0.1:11")))),
			[]string{`between handler "x"`, `layer4 server "s1" route 0 and in layer4 server "s1" route 1`}},
		{"one name, two configs, one in a subroute", apps(`"s1":` + server("between+tcp/127.0.0.1:9",
			`{"match":[{"remote_ip":{"ranges":["10.0.0.1"]}}],"handle":[`+x("127.0.0.1:10")+`]}`,
			route(`{"handler":"subroute","routes":[`+route(x("127.0.0.1:11"))+`]}`))),
			[]string{`between handler "x"`, `layer4 server "s1" route 0 and in layer4 server "s1" route 1 subroute route 0`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, ok := validate(t, tc.cfg)
			if ok {
				t.Fatalf("caddy validate accepted %s", tc.cfg)
			}
			wantMentions(t, msg, tc.want...)
		})
	}

	t.Run("one name, one config in two routes is fine", func(t *testing.T) {
		cfg := apps(`"a":` + server("between+tcp/127.0.0.1:9", route(x("127.0.0.1:10"))) +
			`,"b":` + server("127.0.0.1:19", `{"match":[{"remote_ip":{"ranges":["10.0.0.1"]}}],"handle":[`+x("127.0.0.1:10")+`]}`,
			route(`{"handler":"subroute","routes":[`+route(x("127.0.0.1:10"))+`]}`)))
		if msg, ok := validate(t, cfg); !ok {
			t.Fatalf("caddy validate rejected a handler shared by three routes:\n%s", tail(msg, 5))
		}
	})
}

// TestCaddyfileRejectsBadInput: `caddy adapt --validate` fails on a broken
// Caddyfile with a message naming the problem and where it is: the line for
// what the Caddyfile parser rejects, the layer4 server and route for what
// provisioning rejects.
func TestCaddyfileRejectsBadInput(t *testing.T) {
	// handler wraps the lines of a between handler's block into a layer4 route
	// (the handler's block starts on line 5).
	handler := func(lines ...string) string {
		return "{\n\tlayer4 {\n\t\tbetween+tcp/127.0.0.1:9 {\n\t\t\troute {\n\t\t\t\tbetween s1 {\n" +
			"\t\t\t\t\t" + strings.Join(lines, "\n\t\t\t\t\t") + "\n\t\t\t\t}\n\t\t\t}\n\t\t}\n\t}\n}\n"
	}
	const disc = "discovery static 127.0.0.1:10"
	parsed := func(line int) string { return fmt.Sprintf("Caddyfile:%d", line) }
	provisioned := []string{"server 'srv0'", "route 0", `between handler "s1"`}
	for _, tc := range []struct {
		name, caddyfile string
		want            []string
	}{
		{"unknown subdirective", handler(disc, "colour blue"), []string{"colour", parsed(7)}},
		{"bad duration", handler(disc, "client_idle_timeout soon"), []string{"client_idle_timeout", "soon", parsed(7)}},
		{"unknown policy", handler(disc, "balance fastest"), []string{"fastest", parsed(7)}},
		{"unknown discovery", handler("discovery crystalball"), []string{"crystalball", parsed(6)}},
		{"max_connections not a number", handler(disc, "max_connections many"), []string{"max_connections", "many", parsed(7)}},
		{"two names", strings.Replace(handler(disc), "between s1 {", "between s1 s2 {", 1), []string{"s2", parsed(5)}},
		{"bad backend line", handler(`discovery static "127.0.0.1:10 weight=heavy"`), []string{"weight", parsed(6)}},
		{"bad access rule", handler(disc, "access {", "\tpermit 10.0.0.0/8", "}"), []string{"permit", parsed(8)}},
		{"bad access network", handler(disc, "access {", "\tdeny 10.0.0.0/33", "}"), []string{"10.0.0.0/33", "Caddyfile:"}}, // (reported at the end of the access block)
		{"old server subdirective protocol", handler(disc, "protocol sctp"), []string{"protocol", parsed(7)}},
		{"old server subdirective listen", handler(disc, "listen 127.0.0.1:9"), []string{"listen", parsed(7)}},
		{"unknown udp subdirective", handler(disc, "udp {", "\tmax_response 1", "}"), []string{"max_response", parsed(8)}},
		{"udp block on a TCP listener", handler(disc, "udp {", "\tmax_responses 1", "}"), append([]string{"udp", "only for UDP listeners"}, provisioned...)},
		{"bad health check interval", handler(disc, "healthcheck ping {", "\tinterval soon", "}"), []string{"interval", "soon", parsed(8)}},
		{"no discovery", handler("balance roundrobin"), append([]string{"discovery", "required"}, provisioned...)},
		{"negative max_connections", handler(disc, "max_connections -1"), append([]string{"max_connections -1"}, provisioned...)},
		{"bad listen address", strings.Replace(handler(disc), "127.0.0.1:9", "127.0.0.1:http-x", 1), []string{"server 'srv0'", "http-x"}},
		{"one name, two configs", "{\n\tlayer4 {\n\t\tbetween+tcp/127.0.0.1:9 {\n\t\t\troute {\n\t\t\t\tbetween s1 {\n\t\t\t\t\t" + disc + "\n\t\t\t\t}\n\t\t\t}\n\t\t}\n" +
			"\t\tbetween+tcp/127.0.0.1:19 {\n\t\t\troute {\n\t\t\t\tbetween s1 {\n\t\t\t\t\tdiscovery static 127.0.0.1:11\n\t\t\t\t}\n\t\t\t}\n\t\t}\n\t}\n}\n",
			[]string{`between handler "s1"`, `layer4 server "srv0" route 0 and in layer4 server "srv1" route 0`}},
		{"old global option", "{\n\tbetween {\n\t\tserver s1 {\n\t\t\tlisten 127.0.0.1:9\n\t\t\t" + disc + "\n\t\t}\n\t}\n}\n", []string{"between", "Caddyfile:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "Caddyfile")
			if err := os.WriteFile(path, []byte(tc.caddyfile), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(caddyBin, "adapt", "--config", path, "--validate").CombinedOutput()
			if err == nil {
				t.Fatalf("caddy adapt --validate accepted\n%s\nadapted to:\n%s", tc.caddyfile, out)
			}
			msg := strings.ReplaceAll(string(out), `\"`, `"`)
			if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine ") {
				t.Fatalf("caddy panicked:\n%s", msg)
			}
			wantMentions(t, msg, tc.want...)
		})
	}
}
