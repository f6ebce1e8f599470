package discovery

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// endpoint is a real HTTP server whose answer the test sets.
type endpoint struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	body   string
	hang   bool // answer only when the client gives up
	hits   int
}

func newEndpoint(t *testing.T, body string) *endpoint {
	t.Helper()
	e := &endpoint{status: http.StatusOK, body: body}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.hits++
		status, body, hang := e.status, e.body, e.hang
		e.mu.Unlock()
		if hang {
			<-r.Context().Done()
			return
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(e.Close)
	return e
}

// set changes the answer.
func (e *endpoint) set(status int, body string) {
	e.mu.Lock()
	e.status, e.body, e.hang = status, body, false
	e.mu.Unlock()
}

func (e *endpoint) setHang() {
	e.mu.Lock()
	e.hang = true
	e.mu.Unlock()
}

// observeLogs replaces a source's logger with one the test reads.
func observeLogs(logger **zap.Logger) *observer.ObservedLogs {
	core, logs := observer.New(zapcore.DebugLevel)
	*logger = zap.New(core)
	return logs
}

// closedURL is an http URL on a loopback port where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr + "/backends"
}

// jsonSource loads a json source for url with extra JSON fields.
func jsonSource(t *testing.T, url, extra string) *JSON {
	t.Helper()
	return mustLoadKind(t, "json", `{"json_endpoint":`+quote(url)+extra+`}`).(*JSON)
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestJSONFetch(t *testing.T) {
	ep := newEndpoint(t, "")
	runEndpointCases(t, ep, "/backends", "json", "element", []endpointCase{
		{name: "default patterns", body: `[
			{"host":"127.0.0.1","port":6379,"weight":2,"priority":3,"sni":"a.example","max_connections":10},
			{"host":"::1","port":"6380"},
			{"host":"db.internal","port":6381,"weight":null,"sni":null,"extra":{"x":1}}]`,
			want: "127.0.0.1:6379 weight=2 priority=3 max_connections=10 sni=a.example | [::1]:6380 | db.internal:6381"},
		{name: "empty array", body: `[]`, want: ""},
		{name: "numbers as strings and whole floats", body: `[{"host":"10.0.0.1","port":"0080","weight":"4","priority":2.0}]`,
			want: "10.0.0.1:80 weight=4 priority=2"},
		{name: "gobetween paths", extra: `,"json_host_pattern":"addr.ip","json_port_pattern":"addr.ports[0]","json_weight_pattern":"meta.w","json_priority_pattern":"meta.p","json_sni_pattern":"names[1]","json_max_connections_pattern":"limits.max-conns"`,
			body: `[{"addr":{"ip":"10.0.0.2","ports":[7000,7001]},"meta":{"w":5,"p":2},"names":["x","b.example"],"limits":{"max-conns":3}}]`,
			want: "10.0.0.2:7000 weight=5 priority=2 max_connections=3 sni=b.example"},
		{name: "jq expressions", extra: `,"json_host_pattern":".ip // .hostname","json_port_pattern":"(.addr | split(\":\") | .[1] | tonumber)","json_weight_pattern":"if .primary then 10 else 1 end | . * 1"`,
			body: `[{"ip":"10.0.0.3","addr":"x:9000","primary":true},{"hostname":"b.local","addr":"y:9001","primary":false}]`,
			want: "10.0.0.3:9000 weight=10 | b.local:9001"},
		{name: "empty host and port 0 are skipped", body: `[{"host":"","port":1},{"host":"10.0.0.1","port":0},{"host":"10.0.0.1","port":2}]`,
			want: "10.0.0.1:2", skipped: []int{0, 1}},
		{name: "malformed", body: `[{"host":"10.0.0.1","port":`, wantErr: []string{"malformed"}},
		{name: "data after the array", body: `[] []`, wantErr: []string{"malformed", "after"}},
		{name: "not an array", body: `{"host":"10.0.0.1","port":1}`, wantErr: []string{"an object", "want an array"}},
		{name: "missing host", body: `[{"host":"10.0.0.1","port":1},{"port":2}]`, wantErr: []string{"element [1]", "json_host_pattern", "no host"}},
		{name: "missing port", body: `[{"host":"10.0.0.1"}]`, wantErr: []string{"element [0]", "json_port_pattern", "no port"}},
		{name: "element not an object", body: `[{"host":"10.0.0.1","port":1},"10.0.0.2:2"]`, wantErr: []string{"element [1]", "json_host_pattern", "object"}},
		{name: "host not a string", body: `[{"host":10,"port":1}]`, wantErr: []string{"element [0]", "json_host_pattern", "a number, want a string"}},
		{name: "bad port", body: `[{"host":"10.0.0.1","port":70000}]`, wantErr: []string{"element [0]", "port"}},
		{name: "fractional weight", body: `[{"host":"10.0.0.1","port":1,"weight":1.5}]`, wantErr: []string{"element [0]", "json_weight_pattern", "whole number"}},
		{name: "negative priority", body: `[{"host":"10.0.0.1","port":1,"priority":-2}]`, wantErr: []string{"element [0]", "priority"}},
		{name: "boolean max_connections", body: `[{"host":"10.0.0.1","port":1,"max_connections":true}]`, wantErr: []string{"element [0]", "json_max_connections_pattern", "boolean"}},
		{name: "sni not a string", body: `[{"host":"10.0.0.1","port":1,"sni":["a"]}]`, wantErr: []string{"element [0]", "json_sni_pattern", "array"}},
		{name: "host with white space", body: `[{"host":"10.0.0.1 weight=9","port":1}]`, wantErr: []string{"element [0]", "host"}},
		{name: "server error", status: 503, body: "maintenance\n", wantErr: []string{"status 503", "maintenance"}},
	})
	t.Run("unreachable endpoint", func(t *testing.T) {
		url := closedURL(t)
		_, err := jsonSource(t, url, "").Fetch(context.Background())
		wantErrParts(t, err, "json", url, "refused")
	})
}

// TestJSONTimeout: an endpoint that never answers fails the fetch at the
// source's timeout (and at the 5s default).
func TestJSONTimeout(t *testing.T) {
	ep := newEndpoint(t, "")
	ep.setHang()
	src := jsonSource(t, ep.URL, `,"timeout":"300ms","interval":"1h"`)
	if got := src.Settings().FetchTimeout(); got != 300*time.Millisecond {
		t.Fatalf("FetchTimeout() = %s", got)
	}
	if got := jsonSource(t, ep.URL, "").Settings().FetchTimeout(); got != DefaultTimeout {
		t.Fatalf("default FetchTimeout() = %s, want %s", got, DefaultTimeout)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := newRecord()
	start := time.Now()
	done := rec.run(t, ctx, src)
	err := recv(t, rec.fetches, 5*time.Second, "the fetch result")
	took := time.Since(start)
	wantErrParts(t, err, "json", ep.URL, "deadline exceeded")
	if took < 300*time.Millisecond || took > 1300*time.Millisecond {
		t.Errorf("the fetch failed after %v, want about 300ms", took.Round(time.Millisecond))
	}
	cancel()
	recv(t, done, time.Second, "Run return")
}

// TestJSONKeepsLastGoodList: through the Runner, bad answers keep the last
// good list (keeplast) and are reported; a good one replaces it.
func TestJSONKeepsLastGoodList(t *testing.T) {
	ep := newEndpoint(t, `[{"host":"127.0.0.1","port":1},{"host":"127.0.0.1","port":2}]`)
	src := jsonSource(t, ep.URL, `,"interval":"50ms"`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := newRecord()
	r := rec.runner(src)
	done := rec.start(ctx, r)
	defer func() { cancel(); <-done }()
	if got := recv(t, rec.updates, 5*time.Second, "first list"); asLines(got) != "127.0.0.1:1 | 127.0.0.1:2" {
		t.Fatalf("first list %q", asLines(got))
	}
	for _, bad := range []struct {
		status        int
		body, mention string
	}{
		{200, `[{"host":"127.0.0.1","port":3},{"host":`, "malformed"},
		{200, `{"backends":[]}`, "want an array"},
		{200, `[{"host":"127.0.0.1"}]`, "element [0]"},
		{500, `oops`, "status 500"},
	} {
		ep.set(bad.status, bad.body)
		rec.waitError(t, bad.mention, 5*time.Second, func(l []backend.Backend) {
			// a fetch that started before the change may still deliver the old list
			if asLines(l) != "127.0.0.1:1 | 127.0.0.1:2" {
				t.Fatalf("update %q while the endpoint is bad", asLines(l))
			}
		})
	}
	ep.set(200, `[{"host":"127.0.0.1","port":2,"weight":3}]`)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case l := <-rec.updates:
			if asLines(l) == "127.0.0.1:2 weight=3" {
				if c := r.Counts(); c.FetchesFailed < 4 || c.FetchesOK < 2 {
					t.Errorf("Counts() = %+v, want at least 4 failed and 2 ok", c)
				}
				return
			}
		case <-rec.errs:
		case <-deadline:
			t.Fatal("the good list did not come back within 5s")
		}
	}
}

func TestJSONProvision(t *testing.T) {
	for _, tt := range []struct{ js, mention string }{
		{`{}`, "json_endpoint: required"},
		{`{"json_endpoint":"ftp://x/list"}`, "json_endpoint"},
		{`{"json_endpoint":"127.0.0.1:8080/list"}`, "json_endpoint"},
		{`{"json_endpoint":"http://"}`, "json_endpoint"},
		{`{"json_endpoint":"http://127.0.0.1/","json_host_pattern":".host["}`, "json_host_pattern"},
		{`{"json_endpoint":"http://127.0.0.1/","json_port_pattern":"no_such_function(1)"}`, "json_port_pattern"},
		{`{"json_endpoint":"http://127.0.0.1/","json_weight_pattern":"$undefined"}`, "json_weight_pattern"},
		{`{"json_endpoint":"http://127.0.0.1/","json_priority_pattern":".a |"}`, "json_priority_pattern"},
		{`{"json_endpoint":"http://127.0.0.1/","json_sni_pattern":"{"}`, "json_sni_pattern"},
		{`{"json_endpoint":"http://127.0.0.1/","json_max_connections_pattern":")"}`, "json_max_connections_pattern"},
		{`{"json_endpoint":"http://127.0.0.1/","failpolicy":"never"}`, "failpolicy"},
		{`{"json_endpoint":"http://127.0.0.1/","json_pattern":"x"}`, "json_pattern"},
	} {
		_, err := loadKind(t, "json", tt.js)
		wantErrParts(t, err, tt.mention)
	}
	mustLoadKind(t, "json", `{"json_endpoint":"https://registry.example/v1/backends?env=prod"}`)
}

func TestJSONPatternText(t *testing.T) {
	for _, tt := range []struct{ pattern, def, want string }{
		{"", "host", ".host"},
		{"  ", "port", ".port"},
		{"", "max_connections", ".max_connections"},
		{"host", "host", ".host"},
		{"addr.ip", "host", ".addr.ip"},
		{"_id", "host", "._id"},
		{"[0]", "host", ".[0]"},
		{"[1].host", "host", ".[1].host"},
		{"ports[0]", "port", ".ports[0]"},
		{"a.list[2][3].b", "port", ".a.list[2][3].b"},
		{"my-host.0x", "host", `."my-host"."0x"`},
		{"if", "host", ".if"},
		{".ip // .host", "host", ".ip // .host"},
		{"(.port | tonumber)", "port", "(.port | tonumber)"},
		{"if .tls then .sni else null end", "sni", "if .tls then .sni else null end"},
		{`."dashed-key"`, "sni", `."dashed-key"`},
	} {
		if got := jqText(tt.pattern, tt.def); got != tt.want {
			t.Errorf("jqText(%q, %q) = %q, want %q", tt.pattern, tt.def, got, tt.want)
		}
	}
}

func TestJSONCaddyfile(t *testing.T) {
	newJSON := func() caddyfile.Unmarshaler { return new(JSON) }
	goldenCaddyfile(t, "testdata/json", newJSON)
	caddyfileErrors(t, newJSON, []struct{ name, input, mention string }{
		{"two URLs", "json http://a/ http://b/", "argument"},
		{"pattern without value", "json http://a/ {\n host_pattern\n}", "argument"},
		{"pattern with two values", "json http://a/ {\n host_pattern .a .b\n}", "argument"},
		{"unknown", "json http://a/ {\n method POST\n}", "method"},
	})
}

// FuzzJSONParse: any answer gives an error or backends with a host and a
// valid port, never a panic.
func FuzzJSONParse(f *testing.F) {
	for _, seed := range []string{
		`[{"host":"127.0.0.1","port":6379,"weight":2,"priority":3,"sni":"a.example","max_connections":10}]`,
		`[{"host":"::1","port":"6380"},{"host":"","port":1},{"host":"a","port":0}]`,
		`[{"host":"a","port":1.5}]`, `[1,"x",null,[]]`, `{}`, `[`, `[] x`, `[{"host":"a b","port":1}]`,
		`[{"host":"a","port":"1","weight":"-1"}]`, `[{"host":"a","port":99999999999999999999999}]`,
	} {
		f.Add([]byte(seed))
	}
	j := &JSON{Endpoint: "http://127.0.0.1/"}
	if err := j.Provision(caddyContext()); err != nil {
		f.Fatal(err)
	}
	j.logger = zap.NewNop()
	f.Fuzz(func(t *testing.T, body []byte) {
		list, err := j.parse(context.Background(), body)
		if err != nil {
			return
		}
		for _, b := range list {
			if b.Host == "" || b.Port == "" || b.Port == "0" || strings.ContainsAny(b.Host, " \t") {
				t.Fatalf("unusable backend %+v from %q", b, body)
			}
		}
	})
}
