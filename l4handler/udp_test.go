package l4handler

import (
	"strings"
	"testing"
)

// TestUDPValidation: a handler on a UDP listener is checked for what only
// makes sense there (and the TCP-only fields are refused), with errors
// naming the handler, its place and the field.
func TestUDPValidation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		servers map[string]string
		want    []string // empty: valid
	}{
		{"max_responses on udp/", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d", `"udp":{"max_responses":1}`))}, nil},
		{"idle timeout only on between+udp/", map[string]string{"dns": server("between+udp/127.0.0.1:40053", handlerJSON("d", `"client_idle_timeout":"30s"`))}, nil},
		{"fire and forget", map[string]string{"syslog": server("between+udp/127.0.0.1:40054", handlerJSON("s", `"udp":{"max_requests":1,"max_sessions":10}`))}, nil},
		{"udp probe health check", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d",
			`"udp":{"max_responses":1},"healthcheck":{"kind":"probe","probe_protocol":"udp","probe_send":"x","probe_recv":"x","interval":"5s"}`))}, nil},
		{"no limit", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d", ""))},
			[]string{`"d"`, `layer4 server "dns" route 0`, "udp.max_requests", "client_idle_timeout"}},
		{"no limit, empty udp block", map[string]string{"dns": server("between+udp/127.0.0.1:40053", handlerJSON("d", `"udp":{"transparent":false}`))},
			[]string{`"d"`, "udp.max_responses"}},
		{"negative max_requests", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d", `"udp":{"max_requests":-1}`))},
			[]string{`"d"`, "udp.max_requests -1"}},
		{"negative max_sessions", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d", `"udp":{"max_responses":1,"max_sessions":-5}`))},
			[]string{"udp.max_sessions -5"}},
		{"sni on udp", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d", `"udp":{"max_responses":1},"sni":{}`))},
			[]string{`"d"`, "sni", "udp/127.0.0.1:40053"}},
		{"backends_tls on udp", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d", `"udp":{"max_responses":1},"backends_tls":{}`))},
			[]string{"backends_tls"}},
		{"ping health check on udp", map[string]string{"dns": server("udp/127.0.0.1:40053", handlerJSON("d", `"udp":{"max_responses":1},"healthcheck":{"kind":"ping"}`))},
			[]string{`"d"`, "healthcheck", "ping"}},
		{"udp block on tcp", map[string]string{"edge": server("127.0.0.1:40001", handlerJSON("d", `"udp":{"max_responses":1}`))},
			[]string{`"d"`, `layer4 server "edge" route 0`, "udp", "127.0.0.1:40001"}},
		{"same handler on tcp and udp", map[string]string{
			"a": server("127.0.0.1:40001", handlerJSON("d", `"client_idle_timeout":"1m"`)),
			"b": server("udp/127.0.0.1:40053", handlerJSON("d", `"client_idle_timeout":"1m"`)),
		}, []string{`"d"`, "TCP", "UDP", "127.0.0.1:40001", "udp/127.0.0.1:40053"}},
		{"unixgram", map[string]string{"u": server("unixgram//tmp/between-test.sock", handlerJSON("d", `"udp":{"max_responses":1}`))},
			[]string{"unixgram", "between+udp/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, config(tc.servers))
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
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

// TestUDPMaxConnectionsCapsSessions: on a UDP handler max_connections caps
// client sessions like udp.max_sessions; the smaller of the two applies.
func TestUDPMaxConnectionsCapsSessions(t *testing.T) {
	for _, tc := range []struct {
		maxConns, maxSessions int
		want                  int64
	}{
		{0, 0, defaultMaxSessions},
		{5, 0, 5},
		{0, 7, 7},
		{5, 7, 5},
		{9, 7, 7},
	} {
		h := &Handler{Name: "x", MaxConnections: tc.maxConns, UDP: &UDPConfig{MaxResponses: 1, MaxSessions: tc.maxSessions}}
		if err := h.setTransport([]Location{{Server: "dns", Listen: []string{"between+udp/127.0.0.1:5353"}}}); err != nil {
			t.Fatal(err)
		}
		if got := h.udp.maxSessions; got != tc.want {
			t.Errorf("max_connections %d, udp.max_sessions %d: session cap %d, want %d", tc.maxConns, tc.maxSessions, got, tc.want)
		}
	}
}
