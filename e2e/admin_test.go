package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// adminDo sends a request to the admin endpoint and returns the status and body.
//
// Caddy restarts its admin server after every config load, failed ones
// included: a request that meets the closing listener gets EOF or a reset
// without having been handled, so such errors are retried for a while.
func adminDo(t *testing.T, inst *instance, method, path, body string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		req, err := http.NewRequest(method, "http://"+inst.admin+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := adminClient.Do(req)
		if err != nil {
			if time.Now().Before(deadline) && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)) {
				time.Sleep(20 * time.Millisecond) // the admin server is restarting
				continue
			}
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

// TestAdminReadEndpoints checks every read endpoint and its status codes
// through the real binary; errors are JSON objects with an "error" field.
func TestAdminReadEndpoints(t *testing.T) {
	a, b := nameBackend(t, "a"), nameBackend(t, "b")
	inst := startCaddy(t, between(map[string]any{"web": staticServer(shared(freeAddr(t)), a.addr, b.addr)}))
	waitFor(t, 10*time.Second, "two backends", func() bool { return len(statsBackends(t, inst, "web")) == 2 })

	for _, tc := range []struct {
		method, path, body string
		code               int
		want               []string
	}{
		{"GET", "/between/info", "", 200, []string{`"version":`, `"caddy_l4_version":"v0.1.2"`, `"caddy_version":`, `"pid":`, `"start_time":`, `"uptime":`, `"handlers":1`}},
		{"POST", "/between/info", "", 405, []string{`"error":`}},
		{"GET", "/between/servers", "", 200, []string{`"name":"web"`}},
		{"GET", "/between/servers/web", "", 200, []string{`"name":"web"`, `"locations":[{"layer4_server":"web"`, `"total_connections":`}},
		{"GET", "/between/servers/nope", "", 404, []string{`{"error":"unknown between handler nope"}`}},
		{"GET", "/between/servers/web/stats", "", 200, []string{`"state":"ready"`}},
		{"GET", "/between/servers/nope/stats", "", 404, []string{`"error":`}},
		{"PATCH", "/between/servers/web/stats", "", 405, []string{`"error":"method not allowed"`}},
		{"GET", "/between/nothing", "", 404, []string{`"error":"not found"`}},
		{"GET", "/between/servers/web/backends/" + a.addr + "/state", "", 200, []string{`"backend":"` + a.addr + `"`, `"state":"ready"`, `"discovered":true`}},
		{"GET", "/between/servers/web/backends/10.255.0.1:9/state", "", 200, []string{`"state":"ready"`, `"discovered":false`}},
		{"PUT", "/between/servers/web/backends/" + a.addr + "/state", `{"state":"paused"}`, 400, []string{`"error":"state: `}},
		{"PUT", "/between/servers/web/backends/" + a.addr + "/state", `{`, 400, []string{`"error":"body: `}},
		{"PUT", "/between/servers/web/backends/" + a.addr + "/state", `{}`, 400, []string{`"error":"state: required`}},
		{"PUT", "/between/servers/web/backends/not-an-address/state", `{"state":"drain"}`, 400, []string{`"error":"backend: `}},
		{"PUT", "/between/servers/nope/backends/" + a.addr + "/state", `{"state":"drain"}`, 404, []string{`"error":"unknown between handler nope"`}},
		{"DELETE", "/between/servers/web/backends/" + a.addr + "/state", "", 405, []string{`"error":`}},
		{"GET", "/between/status", "", 200, []string{"<!DOCTYPE html>", `data-backend="` + a.addr + `"`, `data-backend="` + b.addr + `"`}},
		{"GET", "/between/status?format=json", "", 200, []string{`[{"info":{"name":"web"`, `"stats":{"active_connections":`}},
		{"POST", "/between/status", "", 405, []string{`"error":`}},
	} {
		code, body := adminDo(t, inst, tc.method, tc.path, tc.body)
		if code != tc.code {
			t.Errorf("%s %s %s: status %d, want %d (%s)", tc.method, tc.path, tc.body, code, tc.code, body)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s %s %s: body lacks %s:\n%s", tc.method, tc.path, tc.body, w, body)
			}
		}
		if code >= 400 {
			var e map[string]any
			if json.Unmarshal([]byte(body), &e) != nil || e["error"] == nil {
				t.Errorf("%s %s: error body is not {\"error\":...}: %s", tc.method, tc.path, body)
			}
		}
	}
}

// echoConn is an open client connection through Between to an echo backend.
type echoConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialEcho(t *testing.T, addr string) *echoConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &echoConn{c: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and expects it back.
func (e *echoConn) roundTrip(t *testing.T, line string) {
	t.Helper()
	e.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(e.c, "%s\n", line); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got, err := e.r.ReadString('\n')
	if err != nil || strings.TrimSpace(got) != line {
		t.Fatalf("echo of %q = %q, %v", line, got, err)
	}
}

// setState puts a backend's state and checks the answer.
func setState(t *testing.T, inst *instance, server, addr, state string) {
	t.Helper()
	code, body := adminDo(t, inst, "PUT", "/between/servers/"+server+"/backends/"+addr+"/state", `{"state":"`+state+`"}`)
	if code != 200 || !strings.Contains(body, `"state":"`+state+`"`) {
		t.Fatalf("PUT state %s: %d %s", state, code, body)
	}
}

// wantState checks GET state and the stats' state of the backend.
func wantState(t *testing.T, inst *instance, server, addr, state string) {
	t.Helper()
	code, body := adminDo(t, inst, "GET", "/between/servers/"+server+"/backends/"+addr+"/state", "")
	if code != 200 || !strings.Contains(body, `"state":"`+state+`"`) {
		t.Errorf("GET state: %d %s, want %s", code, body, state)
	}
	_, stats := adminDo(t, inst, "GET", "/between/servers/"+server+"/stats", "")
	var s struct {
		Backends []struct {
			Host, Port, State string
		} `json:"backends"`
	}
	if err := json.Unmarshal([]byte(stats), &s); err != nil {
		t.Fatal(err)
	}
	for _, b := range s.Backends {
		if net.JoinHostPort(b.Host, b.Port) == addr && b.State != state {
			t.Errorf("stats state of %s = %q, want %s", addr, b.State, state)
		}
	}
}

// TestAdminDrain: a drained (or maint) backend keeps its open connections
// and gets no new ones, the state survives reloads with the same and a
// changed config, and ready brings the backend back.
func TestAdminDrain(t *testing.T) {
	a, b := echoBackend(t), echoBackend(t)
	listen := shared(freeAddr(t))
	hostport := strings.TrimPrefix(listen, "between+tcp/")
	cfg := func(extra map[string]any) string {
		s := staticServer(listen, a.addr, b.addr)
		for k, v := range extra {
			s[k] = v
		}
		return between(map[string]any{"web": s})
	}
	inst := startCaddy(t, cfg(nil))
	waitFor(t, 10*time.Second, "two backends", func() bool { return len(statsBackends(t, inst, "web")) == 2 })

	// The long connection: find out which backend it reached and call that A.
	long := dialEcho(t, hostport)
	long.roundTrip(t, "hello")
	if b.count() == 1 {
		a, b = b, a
	}
	if a.count() != 1 || b.count() != 0 {
		t.Fatalf("backend connection counts %d/%d after one connection", a.count(), b.count())
	}

	// newGoToB makes n new connections and checks none reached A.
	newGoToB := func(stage string, n int) {
		t.Helper()
		beforeA, beforeB := a.count(), b.count()
		for i := range n {
			dialEcho(t, hostport).roundTrip(t, fmt.Sprintf("%s-%d", stage, i))
		}
		if a.count() != beforeA || b.count() != beforeB+n {
			t.Errorf("%s: A got %d and B %d of %d new connections, want 0 and %d", stage, a.count()-beforeA, b.count()-beforeB, n, n)
		}
	}

	setState(t, inst, "web", a.addr, "drain")
	wantState(t, inst, "web", a.addr, "drain")
	long.roundTrip(t, "still-open-after-drain")
	newGoToB("drain", 8)
	long.roundTrip(t, "still-open-after-new-connections")

	if code, body := inst.load(cfg(nil)); code != 200 {
		t.Fatalf("reload (same config): %d %s", code, body)
	}
	wantState(t, inst, "web", a.addr, "drain")
	newGoToB("drain-after-reload", 6)

	if code, body := inst.load(cfg(map[string]any{"retries": 2})); code != 200 {
		t.Fatalf("reload (changed config): %d %s", code, body)
	}
	wantState(t, inst, "web", a.addr, "drain")
	newGoToB("drain-after-change", 6)

	setState(t, inst, "web", a.addr, "maint")
	wantState(t, inst, "web", a.addr, "maint")
	newGoToB("maint", 6)
	if code, body := inst.load(cfg(map[string]any{"retries": 3})); code != 200 {
		t.Fatalf("reload (changed config, maint): %d %s", code, body)
	}
	wantState(t, inst, "web", a.addr, "maint")
	newGoToB("maint-after-change", 6)

	setState(t, inst, "web", a.addr, "ready")
	wantState(t, inst, "web", a.addr, "ready")
	beforeA := a.count()
	waitFor(t, 10*time.Second, "new connections reaching A again", func() bool {
		dialEcho(t, hostport).roundTrip(t, "back")
		return a.count() > beforeA
	})
}
